#!/usr/bin/env python3
"""Consumer-lag monitoring through the management HTTP API.

A queue whose consumers keep up stays near empty. Lag shows as
  - depth (messages ready + unacknowledged) above what the consumers should
    ever leave behind, or
  - depth growing: messages_details.rate > 0 for a while, i.e. publish rate
    above the ack rate, so the backlog (and the wait) keeps getting longer;
  - consumers = 0: nobody is draining the queue at all.
The broker computes all of these; the monitor polls GET /api/queues/<vhost>
(standard library only: urllib) and prints one line per queue and sample,
plus a WARN line for each threshold passed. Rates are sampled every
collect_statistics_interval (5 s by default on RabbitMQ and Leveret; RabbitMQ
refreshes the counts at the same pace): samples taken closer together
than that repeat the same numbers.

  python3 8_consumer_lag_monitor.py                 # demo: a slow consumer falls behind
  python3 8_consumer_lag_monitor.py monitor --max-depth 1000 --max-growth 50
  python3 8_consumer_lag_monitor.py monitor --once  # a check: exit 1 on a warning, 2 on no answer

Output: `sample queue=Q depth=N ready=N unacked=N consumers=N publish_rate=X
deliver_rate=X ack_rate=X growth=X`, and `WARN queue=Q depth=N > max_depth=M`,
`WARN queue=Q growth=X/s > max_growth=Y`, `WARN queue=Q consumers=0 depth=N`.
"""
import argparse
import base64
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

import pika

DEMO_QUEUE = "lag.demo"


class ManagementApi:
    def __init__(self, mgmt_url, amqp_url):
        amqp = urllib.parse.urlsplit(amqp_url)
        mgmt = urllib.parse.urlsplit(mgmt_url)
        # Credentials from the management URL, else the AMQP URL's user.
        user = urllib.parse.unquote(mgmt.username or amqp.username or "guest")
        password = urllib.parse.unquote(mgmt.password or amqp.password or "guest")
        self.base = f"{mgmt.scheme}://{mgmt.hostname}:{mgmt.port or 15672}"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = urllib.parse.unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"

    def get(self, path):
        request = urllib.request.Request(self.base + path, headers={"Authorization": self.auth})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def queues(self):
        return self.get("/api/queues/" + urllib.parse.quote(self.vhost, safe=""))


def rate(stats, name):
    # message_stats is absent until the queue has seen traffic.
    return stats.get("message_stats", {}).get(f"{name}_details", {}).get("rate", 0.0)


def check(queue, max_depth, max_growth, log=print):
    """Prints one sample line for `queue` (an /api/queues object), then its warnings."""
    depth = queue.get("messages", 0)
    growth = queue.get("messages_details", {}).get("rate", 0.0)
    log(f"sample queue={queue['name']} depth={depth} ready={queue.get('messages_ready', 0)} "
        f"unacked={queue.get('messages_unacknowledged', 0)} consumers={queue.get('consumers', 0)} "
        f"publish_rate={rate(queue, 'publish'):.1f} deliver_rate={rate(queue, 'deliver_get'):.1f} "
        f"ack_rate={rate(queue, 'ack'):.1f} growth={growth:.1f}")
    warnings = []
    if depth > max_depth:
        warnings.append(f"depth={depth} > max_depth={max_depth}")
    if growth > max_growth:
        warnings.append(f"growth={growth:.1f}/s > max_growth={max_growth}")
    if queue.get("consumers", 0) == 0 and depth > 0:
        warnings.append(f"consumers=0 depth={depth}")
    for warning in warnings:
        log(f"WARN queue={queue['name']} {warning}")
    return warnings


def monitor(api, max_depth, max_growth, interval, once):
    while True:
        warned = False
        try:
            queues = api.queues()
        except (OSError, ValueError) as error:  # unreachable, refused, not JSON...
            print(f"ERROR {api.base}: {error}", flush=True)
            if once:
                sys.exit(2)  # "unknown", as monitoring checks report it
            queues = []
        for queue in queues:
            warned |= bool(check(queue, max_depth, max_growth, log=lambda s: print(s, flush=True)))
        if once:
            sys.exit(1 if warned else 0)
        time.sleep(interval)


def slow_consumer(url, stop):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=5)

        def on_message(ch, method, _props, _body):
            if stop.is_set():
                return  # leave it unacked: closing the connection requeues it
            time.sleep(0.05)  # 20 messages/s at best
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(DEMO_QUEUE, on_message)
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)


def fast_publisher(url, stop):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        while not stop.is_set():
            for _ in range(20):  # ~200 messages/s
                ch.basic_publish("", DEMO_QUEUE, b"work")
            conn.sleep(0.1)


def demo(url, api, max_depth, max_growth, interval, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_delete(DEMO_QUEUE)
        ch.queue_declare(DEMO_QUEUE)
    stop = threading.Event()
    threads = [threading.Thread(target=f, args=(url, stop)) for f in (slow_consumer, fast_publisher)]
    for t in threads:
        t.start()
    seen = set()
    deadline = time.monotonic() + timeout
    try:
        # Watch until both lag warnings have fired for the demo queue with its
        # consumer attached: a consumer that cannot keep up, not a missing one.
        while not {"depth", "growth"} <= seen and time.monotonic() < deadline:
            time.sleep(interval)
            queue = api.get(f"/api/queues/{urllib.parse.quote(api.vhost, safe='')}/{DEMO_QUEUE}")
            for warning in check(queue, max_depth, max_growth):
                if queue.get("consumers") == 1:
                    seen.add(warning.split("=")[0])
    finally:
        stop.set()
        for t in threads:
            t.join()
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            conn.channel().queue_delete(DEMO_QUEUE)  # leave no backlog behind
    print(f"warned={','.join(sorted(seen)) or 'none'}")
    if not {"depth", "growth"} <= seen:
        sys.exit("the monitor did not notice the lag")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "monitor"])
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL: user and vhost (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--mgmt-url", default=os.environ.get("MGMT_URL", "http://localhost:15672"),
                   help="management API (default: $MGMT_URL or http://localhost:15672)")
    p.add_argument("--max-depth", type=int, default=100, help="warn above this many messages")
    p.add_argument("--max-growth", type=float, default=10, help="warn above this growth, messages/s")
    p.add_argument("--interval", type=float, default=1, help="seconds between samples")
    p.add_argument("--once", action="store_true", help="monitor: one sample, exit 1 on a warning")
    p.add_argument("--timeout", type=float, default=60, help="demo time limit, seconds")
    args = p.parse_args()
    api = ManagementApi(args.mgmt_url, args.url)
    if args.role == "monitor":
        try:
            monitor(api, args.max_depth, args.max_growth, args.interval, args.once)
        except KeyboardInterrupt:
            pass
    else:
        demo(args.url, api, args.max_depth, args.max_growth, args.interval, args.timeout)


if __name__ == "__main__":
    main()
