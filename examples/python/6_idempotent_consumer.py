#!/usr/bin/env python3
"""Idempotent consumer: every message_id takes effect once, however often it arrives.

AMQP delivers at least once: a publisher that retries after a lost confirm
sends a message twice, and a consumer that crashes after doing the work but
before its ack gets the message again (redelivered). The consumer therefore
records each message_id it has processed in the same database transaction as
the work itself:
  - if the id is new, the effect and the id commit together;
  - if the id is already there, the message is a duplicate: ack it, do nothing;
  - the ack comes after the commit, so a crash in between means a redelivery
    that the table recognises, never a lost or doubled effect.
This needs a message_id that names the message, not the attempt: the
publisher sets it once (an order number, a UUID stored with the order) and
keeps it when it retries. The primary key also settles races: two consumers
given the same id at once cannot both commit it. The processed table grows
with every message: prune ids older than the longest time a duplicate can
still arrive.

  python3 6_idempotent_consumer.py                 # demo: duplicates + a crash
  python3 6_idempotent_consumer.py consume --db payments.sqlite3
  python3 6_idempotent_consumer.py publish p1 p2 p1

Demo output: `delivery message_id=ID redelivered=BOOL outcome=processed|duplicate`,
`crash message_id=ID`, `effect message_id=ID times=N` per id, then a summary.
"""
import argparse
import os
import sqlite3
import sys
import tempfile
import time

import pika

QUEUE = "payments"


class Payments:
    """The business state plus the processed message ids, in one SQLite file."""

    def __init__(self, path):
        self.db = sqlite3.connect(path)
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS processed (message_id TEXT PRIMARY KEY)")
            self.db.execute("CREATE TABLE IF NOT EXISTS payments (message_id TEXT, body TEXT)")

    def apply_once(self, message_id, body):
        """Records the payment unless message_id was seen; False for a duplicate."""
        with self.db:  # one transaction: commits both inserts, or neither
            try:
                self.db.execute("INSERT INTO processed VALUES (?)", (message_id,))
            except sqlite3.IntegrityError:  # the primary key: seen before
                return False
            self.db.execute("INSERT INTO payments VALUES (?, ?)", (message_id, body.decode()))
        return True

    def effects(self):
        return self.db.execute(
            "SELECT message_id, COUNT(*) FROM payments GROUP BY message_id ORDER BY message_id").fetchall()


def on_message(payments, ch, method, props, body, log=print):
    if props.message_id is None:
        # Cannot be deduplicated: refuse it (dead-lettered if the queue has a DLX).
        ch.basic_reject(method.delivery_tag, requeue=False)
        log("rejected a message without message_id")
        return None
    outcome = "processed" if payments.apply_once(props.message_id, body) else "duplicate"
    ch.basic_ack(method.delivery_tag)  # only after the commit
    log(f"delivery message_id={props.message_id} redelivered={method.redelivered} outcome={outcome}")
    return outcome


def publish(url, message_ids):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        for message_id in message_ids:
            ch.basic_publish("", QUEUE, f"pay for {message_id}".encode(), pika.BasicProperties(
                message_id=message_id, delivery_mode=pika.DeliveryMode.Persistent))


def consume(url, payments, deliveries, timeout):
    """Handles `deliveries` messages (prefetch 1), then disconnects."""
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        handled = []
        ch.basic_consume(QUEUE, lambda *a: handled.append(on_message(payments, *a)))
        deadline = time.monotonic() + timeout
        while len(handled) < deliveries:
            if time.monotonic() > deadline:
                sys.exit("timed out")
            conn.process_data_events(time_limit=0.05)


class Crash(Exception):
    pass


class CrashAfterCommit(Payments):
    """Payments whose process dies right after committing one id, before the ack."""

    def __init__(self, path, crash_on):
        super().__init__(path)
        self.crash_on = crash_on

    def apply_once(self, message_id, body):
        applied = super().apply_once(message_id, body)
        if message_id == self.crash_on:
            print(f"crash message_id={message_id} (committed, not acked)")
            raise Crash
        return applied


def demo(url, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(QUEUE)
    # The publisher "retried" p2 and p1: they are in the queue twice.
    publish(url, ["p1", "p2", "p3", "p2", "p4", "p1", "p5"])

    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "payments.sqlite3")
        # Consumer 1 crashes right after committing p3, before acking it.
        try:
            consume(url, CrashAfterCommit(db, crash_on="p3"), 7, timeout)
        except Crash:
            pass  # its connection closed: the broker requeues the unacked p3
        # Consumer 2, on the same database, gets p3 again (redelivered) and the rest.
        payments = Payments(db)
        consume(url, payments, 5, timeout)
        effects = payments.effects()

    for message_id, times in effects:
        print(f"effect message_id={message_id} times={times}")
    print(f"ids={len(effects)} all_once={all(t == 1 for _, t in effects)}")
    if effects != [(f"p{i}", 1) for i in range(1, 6)]:
        sys.exit("some payment was lost or applied twice")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "consume", "publish"])
    p.add_argument("message_ids", nargs="*", help="publish: message ids")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--db", default="payments.sqlite3", help="consume: SQLite file")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "publish":
        publish(args.url, args.message_ids)
    elif args.role == "consume":
        payments = Payments(args.db)
        with pika.BlockingConnection(pika.URLParameters(args.url)) as conn:
            ch = conn.channel()
            ch.queue_declare(QUEUE, durable=True)
            ch.basic_qos(prefetch_count=1)
            ch.basic_consume(QUEUE, lambda *a: on_message(payments, *a, log=lambda s: print(s, flush=True)))
            try:
                ch.start_consuming()
            except KeyboardInterrupt:
                pass
    else:
        demo(args.url, args.timeout)


if __name__ == "__main__":
    main()
