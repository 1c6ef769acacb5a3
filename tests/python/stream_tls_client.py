"""RabbitMQ's Python stream client (rstream) over TLS, for
tests/it/stream_tls.rs. One action per run; the result is one JSON line on
stdout.

  stream_tls_client.py HOST PORT CA [--cert CERT --key KEY] [--external] ACTION ...
      trusts CA (checking the host name), presents CERT if given, logs in as
      guest/guest or with SASL EXTERNAL
  ... publish STREAM COUNT PREFIX
      creates STREAM (if missing), publishes COUNT messages PREFIX0.. with
      confirms; prints {"confirmed": N}
  ... consume STREAM COUNT
      reads COUNT messages from the first; prints {"bodies": [...]}
  ... delete STREAM

rstream connects to each stream's leader where the metadata says it is, so
publishing and consuming also check that a TLS client is told a TLS port.
"""

import argparse
import asyncio
import json
import ssl

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
    amqp_decoder,
)
from rstream.constants import SlasMechanism

TIMEOUT = 20


def client_args(a):
    context = ssl.create_default_context(cafile=a.ca)
    if a.cert:
        context.load_cert_chain(a.cert, a.key)
    mechanism = SlasMechanism.MechanismExternal if a.external else SlasMechanism.MechanismPlain
    return dict(
        host=a.host,
        port=a.port,
        ssl_context=context,
        username="guest",
        password="guest",
        sasl_configuration_mechanism=mechanism,
    )


async def publish(a, stream, count, prefix):
    async with Producer(**client_args(a)) as producer:
        await producer.create_stream(stream, exists_ok=True)
        confirmed = 0
        done = asyncio.Event()

        async def on_confirm(status):
            nonlocal confirmed
            if status.is_confirmed:
                confirmed += 1
            if confirmed >= count:
                done.set()

        # In batches well under frame_max: rstream sends a batch as one frame.
        for start in range(0, count, 100):
            batch = [
                AMQPMessage(body=f"{prefix}{i}".encode()) for i in range(start, min(start + 100, count))
            ]
            await producer.send_batch(stream, batch, on_publish_confirm=on_confirm)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        return {"confirmed": confirmed}


async def consume(a, stream, count):
    bodies = []
    done = asyncio.Event()
    async with Consumer(**client_args(a)) as consumer:

        async def on_message(msg: AMQPMessage, ctx: MessageContext):
            if len(bodies) >= count:
                return
            bodies.append(b"".join(msg.body) if isinstance(msg.body, list) else bytes(msg.body))
            if len(bodies) >= count:
                done.set()

        await consumer.start()
        spec = ConsumerOffsetSpecification(OffsetType.FIRST, None)
        await consumer.subscribe(stream, on_message, decoder=amqp_decoder, offset_specification=spec)
        await asyncio.wait_for(done.wait(), TIMEOUT)
    return {"bodies": [b.decode(errors="replace") for b in bodies]}


async def delete(a, stream):
    async with Producer(**client_args(a)) as producer:
        await producer.delete_stream(stream)
    return {"deleted": stream}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--external", action="store_true")
    p.add_argument("action")
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    if a.action == "publish":
        result = await publish(a, a.args[0], int(a.args[1]), a.args[2])
    elif a.action == "consume":
        result = await consume(a, a.args[0], int(a.args[1]))
    elif a.action == "delete":
        result = await delete(a, a.args[0])
    else:
        raise SystemExit(f"unknown action {a.action}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 60))
