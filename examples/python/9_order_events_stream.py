#!/usr/bin/env python3
"""Order events in a stream: each service reads every event, at its own pace.

A queue hands each message to one consumer and forgets it; a stream keeps
its events (for `x-max-age`), and every reader chooses where to start:
  - the inventory service rebuilds its stock levels from the first event
    on each start (`x-stream-offset: first`);
  - the analytics service only cares about events from now on, but must not
    miss any while it is down: it names itself (its consumer tag) and asks
    the broker to store the offset it acknowledged
    (`x-stream-automatic-offset-tracking`), so after a restart it resumes
    right after the last event it processed. (Leveret and LavinMQ store
    that offset; on RabbitMQ a reader stores its offset itself, with the
    stream protocol, or starts again from an interval such as `30m`.)
Streams need a prefetch and manual acks; an ack only gives credit back, it
removes nothing. Every delivery carries its offset in `x-stream-offset`.

  python3 9_order_events_stream.py                  # demo: both services, analytics restarts
  python3 9_order_events_stream.py inventory        # read everything, print stock levels
  python3 9_order_events_stream.py analytics        # resume after the stored offset
  python3 9_order_events_stream.py publish 5        # 5 OrderPlaced events

Demo output: `inventory events=N sku=... stock=...`, `analytics run=1|2
first_offset=N last_offset=N events=N`, then a summary.
"""
import argparse
import json
import os
import sys
import time

import pika

STREAM = "order-events"
SKUS = ["apple", "bread", "milk"]


def declare(ch):
    ch.queue_declare(STREAM, durable=True, arguments={
        "x-queue-type": "stream",
        "x-max-age": "7D",  # keep a week of events; whole segments go after that
    })


def publish(url, count, first_id=1):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        declare(ch)
        ch.confirm_delivery()  # a confirm means the event is on disk
        for order_id in range(first_id, first_id + count):
            event = {"type": "OrderPlaced", "order_id": order_id,
                     "sku": SKUS[order_id % len(SKUS)], "quantity": 1 + order_id % 3}
            ch.basic_publish("", STREAM, json.dumps(event).encode(),
                             pika.BasicProperties(content_type="application/json",
                                                  message_id=f"order-{order_id}"))


def read(url, want, arguments, tag="", timeout=10.0):
    """Reads `want` events (or until `timeout` idle seconds) and acks each;
    returns [(offset, event)]."""
    events = []
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        declare(ch)
        ch.basic_qos(prefetch_count=50)  # streams require a prefetch

        def on_event(ch, method, props, body):
            events.append((props.headers["x-stream-offset"], json.loads(body)))
            ch.basic_ack(method.delivery_tag)  # gives credit back; the event stays

        ch.basic_consume(STREAM, on_event, consumer_tag=tag, arguments=arguments)
        deadline = time.monotonic() + timeout
        while len(events) < want and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
    return events


def inventory(url, want, timeout):
    """Stock levels rebuilt from the first event."""
    events = read(url, want, {"x-stream-offset": "first"}, timeout=timeout)
    stock = {sku: 100 for sku in SKUS}
    for _, e in events:
        stock[e["sku"]] -= e["quantity"]
    return events, stock


ANALYTICS = {"x-stream-offset": "next", "x-stream-automatic-offset-tracking": True}


def analytics(url, want, timeout):
    """New events only; after a restart, resumes after its stored offset."""
    return read(url, want, ANALYTICS, tag="analytics", timeout=timeout)


def demo(url, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(STREAM)
    publish(url, 10)  # history from before either service started

    # Analytics starts: it sees only what is published from now on.
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        seen = []
        ch.basic_consume(STREAM, lambda c, m, p, b: (seen.append(p.headers["x-stream-offset"]),
                                                     c.basic_ack(m.delivery_tag)),
                         consumer_tag="analytics", arguments=ANALYTICS)
        conn.process_data_events(time_limit=0.2)  # subscribed before the next events
        publish(url, 5, first_id=11)
        deadline = time.monotonic() + timeout
        while len(seen) < 5 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
    print(f"analytics run=1 first_offset={min(seen)} last_offset={max(seen)} events={len(seen)}")

    # Analytics is down while 5 more orders arrive, then restarts.
    publish(url, 5, first_id=16)
    resumed = analytics(url, 5, timeout)
    offsets = [o for o, _ in resumed]
    print(f"analytics run=2 first_offset={min(offsets)} last_offset={max(offsets)} events={len(resumed)}")

    # Inventory reads all 20 from the start, whenever it starts.
    events, stock = inventory(url, 20, timeout)
    print(f"inventory events={len(events)} " + " ".join(f"{k}={v}" for k, v in sorted(stock.items())))

    ok = (seen == list(range(10, 15)) and offsets == list(range(15, 20))
          and [o for o, _ in events] == list(range(20)))
    print(f"analytics_missed_nothing={seen + offsets == list(range(10, 20))} inventory_read_all={len(events) == 20}")
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(STREAM)
    if not ok:
        sys.exit("a service missed or repeated events")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "inventory", "analytics", "publish"])
    p.add_argument("count", nargs="?", type=int, default=10, help="publish: events; readers: how many to read")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--timeout", type=float, default=30, help="time limit, seconds")
    args = p.parse_args()
    if args.role == "publish":
        publish(args.url, args.count)
    elif args.role == "inventory":
        events, stock = inventory(args.url, args.count, args.timeout)
        print(f"events={len(events)} stock={stock}")
    elif args.role == "analytics":
        for offset, event in analytics(args.url, args.count, args.timeout):
            print(f"offset={offset} order_id={event['order_id']} sku={event['sku']}")
    else:
        demo(args.url, args.timeout)


if __name__ == "__main__":
    main()
