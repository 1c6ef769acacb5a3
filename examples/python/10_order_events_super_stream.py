#!/usr/bin/env python3
"""Order events in a super stream, read by a consumer group.

One stream is read in order by one consumer at a time; to share the work
and keep each order's events in order, a super stream splits the events
over partitions (3 streams here) by order id: every event of one order
lands in one partition, in the order published. A consumer group (single
active consumer, `name=<group>`) spreads the partitions over its members:
partition i is read by member i % n. Each member stores the offset it
processed under the group's name; when a member dies, its partitions move
to the others, which resume after that stored offset, so no event is
lost and each order's events stay in order (an event may be read twice
around the handover: processing must be idempotent).

Uses RabbitMQ's stream protocol (port 5552) with rstream.

  python3 10_order_events_super_stream.py --stream 127.0.0.1:5552           # demo
  python3 10_order_events_super_stream.py --stream H:P member billing 60    # one member
  python3 10_order_events_super_stream.py --stream H:P publish 0 10         # orders 0..9

Demo output: `member=a partitions=N`, `member=b partitions=N`,
`after_kill member=b partitions=3`, `events=N orders=N in_order=True`.
"""
import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time

from rstream import (
    AMQPMessage,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetSpecification,
    OffsetType,
    Producer,
    SuperStreamConsumer,
    SuperStreamProducer,
    amqp_decoder,
)

SUPER_STREAM = "order-events-super"
PARTITIONS = 3
EVENTS = ["placed", "paid", "shipped"]
USER, PASSWORD = "guest", "guest"


async def create(host, port):
    async with Producer(host, port, username=USER, password=PASSWORD) as p:
        c = await p.default_client
        if await c.partitions(SUPER_STREAM):
            await c.delete_super_stream(SUPER_STREAM)
        names = [f"{SUPER_STREAM}-{i}" for i in range(PARTITIONS)]
        await c.create_super_stream(SUPER_STREAM, names, [str(i) for i in range(PARTITIONS)], {})


async def order_id(message):
    return message.application_properties["order"]


async def publish(host, port, first, count):
    """Each order's three events, keyed (routed) by the order id."""
    done, confirmed, total = asyncio.Event(), 0, count * len(EVENTS)

    async def on_confirm(status):
        nonlocal confirmed
        confirmed += 1
        if confirmed >= total:
            done.set()

    async with SuperStreamProducer(
        host, port, username=USER, password=PASSWORD,
        super_stream=SUPER_STREAM, routing_extractor=order_id,
    ) as producer:
        for event in EVENTS:
            for n in range(first, first + count):
                body = json.dumps({"order": f"order-{n}", "event": event}).encode()
                await producer.send(
                    AMQPMessage(body=body, application_properties={"order": f"order-{n}"}),
                    on_publish_confirm=on_confirm,
                )
        await asyncio.wait_for(done.wait(), 30)


async def member(host, port, group, seconds):
    """A group member: prints each activation and event as a JSON line."""
    def out(obj):
        print(json.dumps(obj), flush=True)

    async def on_event(msg: AMQPMessage, ctx: MessageContext):
        body = b"".join(msg.body) if isinstance(msg.body, list) else bytes(msg.body)
        out({"stream": ctx.stream, "offset": ctx.offset, **json.loads(body)})
        await ctx.consumer.store_offset(ctx.stream, group, ctx.offset)

    async def on_update(active, ctx):
        out({"active": active, "stream": ctx.stream})
        if not active:
            return OffsetSpecification(OffsetType.NEXT, 0)
        try:
            stored = await ctx.consumer.query_offset(ctx.stream, group)
            return OffsetSpecification(OffsetType.OFFSET, stored + 1)
        except Exception:  # nothing stored yet
            return OffsetSpecification(OffsetType.FIRST, 0)

    consumer = SuperStreamConsumer(host, port, username=USER, password=PASSWORD,
                                   super_stream=SUPER_STREAM)
    async with consumer:
        await consumer.start()
        await consumer.subscribe(
            on_event, decoder=amqp_decoder,
            properties={"single-active-consumer": "true", "name": group,
                        "super-stream": SUPER_STREAM},
            consumer_update_listener=on_update,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        )
        await asyncio.sleep(seconds)


class Member:
    """A member in its own process, its lines collected as they come."""

    def __init__(self, stream):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--stream", stream, "member", "billing", "120"],
            stdout=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def active(self):
        active = set()
        for l in list(self.lines):
            if "active" in l:
                (active.add if l["active"] else active.discard)(l["stream"])
        return active

    def events(self):
        return [l for l in list(self.lines) if "event" in l]


def wait(what, cond, limit=30):
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def demo(host, port, stream):
    asyncio.run(create(host, port))
    a = Member(stream)
    wait("member a active", lambda: len(a.active()) == PARTITIONS)
    b = Member(stream)
    wait("member b active", lambda: len(b.active()) == 1)
    print(f"member=a partitions={len(a.active())}")
    print(f"member=b partitions={len(b.active())}")
    asyncio.run(publish(host, port, 0, 10))
    wait("the first orders read", lambda: len(a.events()) + len(b.events()) >= 30)
    read_by_a = a.events()
    a.proc.kill()  # its connection dies with it
    a.proc.wait()
    wait("member b taking over", lambda: len(b.active()) == PARTITIONS)
    print(f"after_kill member=b partitions={len(b.active())}")
    asyncio.run(publish(host, port, 10, 10))
    seen = lambda: {(e["stream"], e["offset"]) for e in read_by_a + b.events()}
    wait("every order read", lambda: len(seen()) >= 60)
    b.proc.kill()
    b.proc.wait()
    # Each order's events, as the group processed them (once each).
    done, orders, in_order = set(), {}, True
    for e in read_by_a + b.events():
        if (e["stream"], e["offset"]) in done:
            continue  # read again after the handover
        done.add((e["stream"], e["offset"]))
        got = orders.setdefault(e["order"], [])
        in_order &= EVENTS.index(e["event"]) == len(got)
        got.append(e["event"])
    in_order &= all(len(v) == len(EVENTS) for v in orders.values())
    print(f"events={len(done)} orders={len(orders)} in_order={in_order}")
    return 0 if in_order and len(orders) == 20 else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="ignored: this example speaks the stream protocol")
    ap.add_argument("--stream", default="127.0.0.1:5552", help="stream protocol host:port")
    ap.add_argument("mode", nargs="?", default="demo")
    ap.add_argument("args", nargs="*")
    args = ap.parse_args()
    host, port = args.stream.rsplit(":", 1)
    port = int(port)
    if args.mode == "member":
        asyncio.run(member(host, port, args.args[0], float(args.args[1])))
    elif args.mode == "publish":
        asyncio.run(publish(host, port, int(args.args[0]), int(args.args[1])))
    else:
        sys.exit(demo(host, port, args.stream))


if __name__ == "__main__":
    main()
