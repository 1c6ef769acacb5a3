"""RabbitMQ's Python stream client (rstream) on super streams, for
tests/it/super_streams.rs. One action per run; results are JSON lines on
stdout (the last one is the result).

  super_stream_client.py HOST PORT create SUPER N
      creates super stream SUPER with N partitions (CreateSuperStream)
  super_stream_client.py HOST PORT partitions SUPER
      prints {"partitions": [...]}
  super_stream_client.py HOST PORT route SUPER KEY
      prints {"streams": [...]}
  super_stream_client.py HOST PORT delete SUPER
  super_stream_client.py HOST PORT publish SUPER KEYS PER_KEY [FIRST]
      a super-stream producer publishes PER_KEY messages for each of KEYS
      keys ("k<key>:<seq>", seq from FIRST (0), routed by hashing k<key>);
      prints
      {"confirmed": N}
  super_stream_client.py HOST PORT read STREAM
      reads STREAM from first until it is quiet; prints {"bodies": [...]}
  super_stream_client.py HOST PORT member SUPER GROUP SECONDS
      a member of consumer group GROUP on SUPER (single active consumer)
      for SECONDS: each activation and message is a JSON line as it
      happens ({"active": bool, "stream": S} / {"stream": S, "offset": N,
      "body": B}); it stores each message's offset under GROUP and, when
      activated, starts after the stored offset (or from first)
"""

import asyncio
import json
import sys

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetSpecification,
    OffsetType,
    Producer,
    SuperStreamConsumer,
    SuperStreamProducer,
    amqp_decoder,
)

USER = "guest"
PASSWORD = "guest"
TIMEOUT = 30


def out(obj):
    print(json.dumps(obj), flush=True)


async def create(host, port, name, n):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        c = await producer.default_client
        partitions = [f"{name}-{i}" for i in range(n)]
        await c.create_super_stream(name, partitions, [str(i) for i in range(n)], {})
    return {"created": name}


async def partitions(host, port, name):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        c = await producer.default_client
        return {"partitions": await c.partitions(name)}


async def route(host, port, name, key):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        c = await producer.default_client
        return {"streams": await c.route(key, name)}


async def delete(host, port, name):
    async with Producer(host, port, username=USER, password=PASSWORD) as producer:
        c = await producer.default_client
        await c.delete_super_stream(name)
    return {"deleted": name}


async def routing_key(message):
    return message.application_properties["key"]


async def publish(host, port, name, keys, per_key, first):
    total = keys * per_key
    confirmed = 0
    done = asyncio.Event()

    async def on_confirm(status):
        nonlocal confirmed
        if status.is_confirmed:
            confirmed += 1
        if confirmed >= total:
            done.set()

    async with SuperStreamProducer(
        host,
        port,
        username=USER,
        password=PASSWORD,
        super_stream=name,
        routing_extractor=routing_key,
    ) as producer:
        for seq in range(first, first + per_key):
            for k in range(keys):
                m = AMQPMessage(
                    body=f"k{k}:{seq}".encode(),
                    application_properties={"key": f"k{k}"},
                )
                await producer.send(m, on_publish_confirm=on_confirm)
        await asyncio.wait_for(done.wait(), TIMEOUT)
    return {"confirmed": confirmed}


def body_of(msg):
    b = b"".join(msg.body) if isinstance(msg.body, list) else bytes(msg.body)
    return b.decode(errors="replace")


async def read(host, port, stream):
    bodies = []
    last = asyncio.get_running_loop().time()

    async def on_message(msg: AMQPMessage, ctx: MessageContext):
        nonlocal last
        bodies.append(body_of(msg))
        last = asyncio.get_running_loop().time()

    async with Consumer(host, port, username=USER, password=PASSWORD) as consumer:
        await consumer.start()
        spec = ConsumerOffsetSpecification(OffsetType.FIRST, None)
        await consumer.subscribe(stream, on_message, decoder=amqp_decoder, offset_specification=spec)
        while asyncio.get_running_loop().time() - last < 1.5:
            await asyncio.sleep(0.2)
    return {"bodies": bodies}


async def member(host, port, name, group, seconds):
    consumer = SuperStreamConsumer(
        host, port, username=USER, password=PASSWORD, super_stream=name
    )

    async def on_message(msg: AMQPMessage, ctx: MessageContext):
        out({"stream": ctx.stream, "offset": ctx.offset, "body": body_of(msg)})
        await ctx.consumer.store_offset(ctx.stream, group, ctx.offset)

    async def on_update(active, ctx):
        out({"active": active, "stream": ctx.stream})
        if not active:
            return OffsetSpecification(OffsetType.NEXT, 0)
        try:
            stored = await ctx.consumer.query_offset(ctx.stream, group)
            return OffsetSpecification(OffsetType.OFFSET, stored + 1)
        except Exception:
            return OffsetSpecification(OffsetType.FIRST, 0)

    async with consumer:
        await consumer.start()
        await consumer.subscribe(
            on_message,
            decoder=amqp_decoder,
            properties={
                "single-active-consumer": "true",
                "name": group,
                "super-stream": name,
            },
            consumer_update_listener=on_update,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        )
        out({"subscribed": True})
        await asyncio.sleep(seconds)
    return {"done": True}


async def main():
    host, port, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    a = sys.argv[4:]
    if action == "create":
        result = await create(host, port, a[0], int(a[1]))
    elif action == "partitions":
        result = await partitions(host, port, a[0])
    elif action == "route":
        result = await route(host, port, a[0], a[1])
    elif action == "delete":
        result = await delete(host, port, a[0])
    elif action == "publish":
        result = await publish(host, port, a[0], int(a[1]), int(a[2]), int(a[3]) if len(a) > 3 else 0)
    elif action == "read":
        result = await read(host, port, a[0])
    elif action == "member":
        result = await member(host, port, a[0], a[1], float(a[2]))
    else:
        raise SystemExit(f"unknown action {action}")
    out(result)


if __name__ == "__main__":
    asyncio.run(main())
