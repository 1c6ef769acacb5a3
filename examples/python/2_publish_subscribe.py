#!/usr/bin/env python3
"""Publish/subscribe: a fanout exchange copies every message to every subscriber.

The publisher knows only the exchange. Each subscriber declares its own queue
with an empty name, exclusive: the broker names it (amq.gen-...), only this
connection may use it, and it is deleted when the subscriber disconnects, so
a subscriber that goes away leaves nothing behind to fill up. Binding it to
the fanout exchange is what subscribes; messages published while nobody is
bound are dropped, which is what a live event feed wants.

  python3 2_publish_subscribe.py                  # demo: 3 subscribers, 5 events
  python3 2_publish_subscribe.py subscribe
  python3 2_publish_subscribe.py publish --count 5

Demo output: `subscriber=N queue=amq.gen-... received=5`, then `subscribers=3 all_received=5`.
"""
import argparse
import os
import sys
import threading
import time

import pika

EXCHANGE = "events"


def publish(url, count):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "fanout")
        for i in range(count):
            ch.basic_publish(EXCHANGE, "", f"event {i}".encode())  # fanout ignores the routing key


def subscribe(url, on_event, ready, stop):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "fanout")
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, EXCHANGE)
        # auto_ack: a live feed that may lose events if this subscriber crashes.
        ch.basic_consume(queue, lambda _ch, _m, _p, body: on_event(queue, body), auto_ack=True)
        ready(queue)
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)


def demo(url, subscribers, count, timeout):
    received = {}  # queue name -> bodies
    lock = threading.Lock()

    def on_event(queue, body):
        with lock:
            received[queue].append(body.decode())

    def ready(queue):
        with lock:
            received[queue] = []

    stop = threading.Event()
    threads = [threading.Thread(target=subscribe, args=(url, on_event, ready, stop))
               for _ in range(subscribers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        # Publish only once every subscriber is bound: fanout has no memory.
        while len(received) < subscribers:
            if time.monotonic() > deadline:
                sys.exit("subscribers did not start")
            time.sleep(0.02)
        publish(url, count)
        while (any(len(b) < count for b in received.values())
               and time.monotonic() < deadline):
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()

    expected = [f"event {i}" for i in range(count)]
    for n, (queue, bodies) in enumerate(sorted(received.items()), 1):
        print(f"subscriber={n} queue={queue} received={len(bodies)}")
        if bodies != expected:
            sys.exit(f"subscriber {n} got {bodies}, expected {expected}")
    print(f"subscribers={len(received)} all_received={count}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "subscribe", "publish"])
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--count", type=int, default=5, help="events to publish")
    p.add_argument("--subscribers", type=int, default=3, help="demo subscribers")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "publish":
        publish(args.url, args.count)
    elif args.role == "subscribe":
        try:
            subscribe(args.url, lambda q, body: print(q, body.decode(), flush=True),
                      lambda q: print("subscribed with", q, flush=True), threading.Event())
        except KeyboardInterrupt:
            pass
    else:
        demo(args.url, args.subscribers, args.count, args.timeout)


if __name__ == "__main__":
    main()
