#!/usr/bin/env python3
"""Work queue with fair dispatch: prefetch 1 and manual acks.

Several workers consume one durable queue. Each takes one task at a time
(basic.qos prefetch_count=1) and acknowledges it only when it is done, so
  - a busy worker is not handed more tasks: the broker gives the next task to
    whichever worker is free, and a fast worker ends up doing more;
  - a worker that dies mid-task loses nothing: its unacked task is redelivered.
Without prefetch the broker deals tasks round-robin as they arrive, and the
slow worker would get half of them however long they take.

  python3 1_work_queue.py            # demo: two workers, 30 tasks, then a summary
  python3 1_work_queue.py worker --delay 0.5
  python3 1_work_queue.py publish --count 10

Demo output (machine-checkable): `worker=NAME processed=N`, then `total=N`.
"""
import argparse
import os
import sys
import threading
import time

import pika

QUEUE = "tasks"


def publish(url, count):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        for i in range(count):
            # Persistent, so queued tasks survive a broker restart.
            ch.basic_publish("", QUEUE, f"task {i}".encode(),
                             pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))


def work(url, name, delay, stop, done):
    """Consumes until `stop` is set; calls done(name) after each task."""
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        # The heart of fair dispatch: at most one unacked task per worker.
        ch.basic_qos(prefetch_count=1)

        def on_task(ch, method, props, body):
            time.sleep(delay)  # the work
            # Ack after the work, never before: a crash before this line
            # means the broker redelivers the task to another worker.
            ch.basic_ack(method.delivery_tag)
            done(name)

        ch.basic_consume(QUEUE, on_task)
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)


def demo(url, count, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(QUEUE)  # start from an empty queue

    processed = {"fast": 0, "slow": 0}
    lock = threading.Lock()

    def done(name):
        with lock:
            processed[name] += 1

    stop = threading.Event()
    workers = [threading.Thread(target=work, args=(url, name, delay, stop, done))
               for name, delay in (("fast", 0.01), ("slow", 0.2))]
    for w in workers:
        w.start()
    try:
        # Both workers must be consuming before the tasks arrive, or the first
        # one up would legitimately take them all.
        deadline = time.monotonic() + timeout
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            ch = conn.channel()
            while ch.queue_declare(QUEUE, durable=True).method.consumer_count < 2:
                if time.monotonic() > deadline:
                    sys.exit("workers did not start")
                time.sleep(0.05)
        publish(url, count)
        while sum(processed.values()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()

    for name, n in processed.items():
        print(f"worker={name} processed={n}")
    total = sum(processed.values())
    print(f"total={total}")
    if total != count:
        sys.exit(f"expected {count} tasks processed, got {total}")
    if processed["fast"] <= processed["slow"]:
        sys.exit("the fast worker should have done more than the slow one")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "worker", "publish"])
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--count", type=int, default=30, help="tasks to publish")
    p.add_argument("--delay", type=float, default=0.1, help="seconds per task (worker)")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "publish":
        publish(args.url, args.count)
    elif args.role == "worker":
        try:
            work(args.url, "worker", args.delay, threading.Event(), lambda _: print("done", flush=True))
        except KeyboardInterrupt:
            pass
    else:
        demo(args.url, args.count, args.timeout)


if __name__ == "__main__":
    main()
