"""RabbitMQ's Python stream client (rstream) against a broker's stream port,
for tests/it/stream_protocol.rs. One action per run; the result is one JSON
line on stdout.

  stream_client.py HOST PORT publish STREAM COUNT PREFIX
      creates STREAM (if missing), publishes COUNT messages PREFIX0.. with
      confirms; prints {"confirmed": N}
  stream_client.py HOST PORT consume STREAM COUNT OFFSET [NAME]
      reads COUNT messages from OFFSET (first, next, last or a number, or
      "stored": after the offset stored for NAME); with NAME, stores the
      last one's offset; prints {"bodies": [...], "offsets": [...]}
  stream_client.py HOST PORT delete STREAM
"""

import asyncio
import json
import sys

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
    amqp_decoder,
)

USER = "guest"
PASSWORD = "guest"
TIMEOUT = 20


async def publish(host, port, stream, count, prefix):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        await producer.create_stream(stream, exists_ok=True)
        confirmed = 0
        done = asyncio.Event()

        async def on_confirm(status):
            nonlocal confirmed
            if status.is_confirmed:
                confirmed += 1
            if confirmed >= count:
                done.set()

        batch = [AMQPMessage(body=f"{prefix}{i}".encode()) for i in range(count)]
        await producer.send_batch(stream, batch, on_publish_confirm=on_confirm)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        return {"confirmed": confirmed}


async def consume(host, port, stream, count, offset, name):
    bodies, offsets = [], []
    done = asyncio.Event()
    async with Consumer(host, port, username=USER, password=PASSWORD) as consumer:
        if offset == "stored":
            stored = await consumer.query_offset(stream, name)
            spec = ConsumerOffsetSpecification(OffsetType.OFFSET, stored + 1)
        elif offset in ("first", "next", "last"):
            spec = ConsumerOffsetSpecification(OffsetType[offset.upper()], None)
        else:
            spec = ConsumerOffsetSpecification(OffsetType.OFFSET, int(offset))

        async def on_message(msg: AMQPMessage, ctx: MessageContext):
            if len(bodies) >= count:
                return
            bodies.append(b"".join(msg.body) if isinstance(msg.body, list) else bytes(msg.body))
            offsets.append(ctx.offset)
            if len(bodies) >= count:
                done.set()

        await consumer.start()
        await consumer.subscribe(stream, on_message, decoder=amqp_decoder, offset_specification=spec)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        if name:
            await consumer.store_offset(stream, name, offsets[-1])
    return {"bodies": [b.decode(errors="replace") for b in bodies], "offsets": offsets}


async def delete(host, port, stream):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        await producer.delete_stream(stream)
    return {"deleted": stream}


async def main():
    host, port, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[4:]
    if action == "publish":
        result = await publish(host, port, args[0], int(args[1]), args[2])
    elif action == "consume":
        name = args[3] if len(args) > 3 else None
        result = await consume(host, port, args[0], int(args[1]), args[2], name)
    elif action == "delete":
        result = await delete(host, port, args[0])
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
