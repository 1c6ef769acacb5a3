#!/usr/bin/env python3
"""Topic routing: subscribers choose messages by pattern over dotted routing keys.

A routing key is a list of words separated by dots, here `<facility>.<severity>`
(`kern.critical`, `auth.info`). A binding key matches it word by word:
`*` stands for exactly one word, `#` for zero or more. So
  *.critical   matches kern.critical, auth.critical   (not cron.critical.now)
  kern.#       matches kern, kern.info, kern.disk.full
  #            matches everything (a fanout)
A queue with several bindings that match the same message gets it once.

  python3 3_topic_routing.py                          # demo
  python3 3_topic_routing.py subscribe 'kern.#' '*.critical'
  python3 3_topic_routing.py publish kern.critical 'disk on fire'

Demo output: `subscriber=NAME bindings=K1,K2 count=N keys=R1,R2,...` per subscriber.
"""
import argparse
import os
import sys
import time

import pika

EXCHANGE = "logs.topic"
ROUTING_KEYS = ["kern.critical", "kern.info", "auth.critical", "auth.info",
                "kern", "kern.disk.full", "cron.critical.now"]
SUBSCRIBERS = {  # name -> (binding keys, what it should receive)
    "critical": (["*.critical"], ["kern.critical", "auth.critical"]),
    "kernel": (["kern.#"], ["kern.critical", "kern.info", "kern", "kern.disk.full"]),
    "everything": (["#"], ROUTING_KEYS),
    "kern-or-critical": (["kern.*", "*.critical"], ["kern.critical", "kern.info", "auth.critical"]),
}


def bind_queue(ch, binding_keys):
    """A server-named exclusive queue bound with each key; returns its name."""
    queue = ch.queue_declare("", exclusive=True).method.queue
    for key in binding_keys:
        ch.queue_bind(queue, EXCHANGE, routing_key=key)
    return queue


def demo(url, timeout):
    received = {name: [] for name in SUBSCRIBERS}
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "topic")
        # One connection is enough here; each subscriber is one queue + consumer.
        for name, (keys, _) in SUBSCRIBERS.items():
            queue = bind_queue(ch, keys)
            ch.basic_consume(queue, lambda _c, m, _p, _b, name=name: received[name].append(m.routing_key),
                             auto_ack=True)
        for key in ROUTING_KEYS:
            ch.basic_publish(EXCHANGE, key, f"{key} happened".encode())
        deadline = time.monotonic() + timeout
        want = sum(len(expected) for _, expected in SUBSCRIBERS.values())
        while sum(map(len, received.values())) < want and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        conn.process_data_events(time_limit=0.2)  # and nothing more arrives

    ok = True
    for name, (keys, expected) in SUBSCRIBERS.items():
        got = received[name]
        print(f"subscriber={name} bindings={','.join(keys)} count={len(got)} keys={','.join(got)}")
        if got != expected:
            print(f"  expected {','.join(expected)}", file=sys.stderr)
            ok = False
    if not ok:
        sys.exit("some subscriber got the wrong messages")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "subscribe", "publish"])
    p.add_argument("keys", nargs="*", help="subscribe: binding keys; publish: ROUTING_KEY MESSAGE")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "demo":
        demo(args.url, args.timeout)
        return
    with pika.BlockingConnection(pika.URLParameters(args.url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "topic")
        if args.role == "publish":
            routing_key, message = args.keys
            ch.basic_publish(EXCHANGE, routing_key, message.encode())
            return
        queue = bind_queue(ch, args.keys or ["#"])
        ch.basic_consume(queue, lambda _c, m, _p, body: print(m.routing_key, body.decode(), flush=True),
                         auto_ack=True)
        try:
            ch.start_consuming()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
