#!/usr/bin/env python3
"""Transactional outbox: a database change and its event, never one without the other.

Writing to the database and then publishing is two steps; a crash between
them loses the event (or, the other way round, announces a change that was
rolled back). Instead the event is written as an `outbox` row in the SAME
SQLite transaction as the business change, and a relay publishes unsent rows
later:
  1. place_order(): INSERT the order and its outbox row, one transaction;
  2. relay: publish each unsent row with publisher confirms; mark it sent only
     after the broker has confirmed it (for a persistent message to a durable
     queue, confirmed = safely stored);
  3. a relay that crashes after publishing but before marking publishes those
     rows again on restart: a duplicate, never a loss. The consumer is
     idempotent (see 6_idempotent_consumer.py), so duplicates do no harm.

  python3 7_transactional_outbox.py                       # demo, with a relay crash
  python3 7_transactional_outbox.py place book 2 --db shop.sqlite3
  python3 7_transactional_outbox.py relay --db shop.sqlite3    # polls every second

Demo output: `relay published=N ...` per run, `delivery message_id=ID outcome=...`,
then `consumer deliveries=8 processed=5 duplicates=3` and `orders=5 ... lost=0`.
"""
import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time

import pika

EXCHANGE = "shop.events"
QUEUE = "billing.orders"  # a consumer's queue, bound to order.*
OUT_OF_STOCK = {"unicorn"}


class OutOfStock(Exception):
    pass


class RelayCrash(Exception):
    pass


def open_shop(path):
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT, quantity INTEGER)")
        db.execute("""CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT UNIQUE,
            routing_key TEXT, body TEXT, sent_at REAL)""")
    return db


def place_order(db, item, quantity):
    with db:  # one transaction: the order and its event commit together, or neither
        order_id = db.execute("INSERT INTO orders (item, quantity) VALUES (?, ?)",
                              (item, quantity)).lastrowid
        if item in OUT_OF_STOCK:
            raise OutOfStock(item)  # rolls back the order: no event either
        db.execute("INSERT INTO outbox (message_id, routing_key, body) VALUES (?, ?, ?)",
                   (f"order-{order_id}", "order.placed",
                    json.dumps({"order_id": order_id, "item": item, "quantity": quantity})))
    return order_id


def relay_once(db, ch, batch=100, simulate_crash_after=None):
    """Publishes unsent outbox rows in order; returns how many it marked sent."""
    rows = db.execute("SELECT id, message_id, routing_key, body FROM outbox "
                      "WHERE sent_at IS NULL ORDER BY id LIMIT ?", (batch,)).fetchall()
    for n, (_, message_id, routing_key, body) in enumerate(rows, 1):
        # The channel is in confirm mode: basic_publish returns once the broker
        # has confirmed, and raises if it nacks or (mandatory) cannot route it.
        ch.basic_publish(EXCHANGE, routing_key, body.encode(), pika.BasicProperties(
            message_id=message_id, content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent), mandatory=True)
        if n == simulate_crash_after:
            print(f"relay published={n} crashed_before_mark=True")
            raise RelayCrash
    with db:  # marked after every confirm: a crash before here re-sends the batch
        db.executemany("UPDATE outbox SET sent_at = ? WHERE id = ?",
                       [(time.time(), row_id) for row_id, *_ in rows])
    if rows:
        print(f"relay published={len(rows)} marked={len(rows)}", flush=True)
    return len(rows)


def relay_channel(conn):
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "topic", durable=True)
    ch.confirm_delivery()
    return ch


def declare_consumer_queue(ch):
    ch.exchange_declare(EXCHANGE, "topic", durable=True)
    ch.queue_declare(QUEUE, durable=True)
    ch.queue_bind(QUEUE, EXCHANGE, "order.*")


def consume_idempotently(url, billing, deliveries, timeout):
    """The idempotent consumer of 6_idempotent_consumer.py, in brief."""
    outcomes = []

    def on_message(ch, method, props, body):
        with billing:
            seen = billing.execute("INSERT OR IGNORE INTO processed VALUES (?)",
                                   (props.message_id,)).rowcount == 0
            if not seen:
                billing.execute("INSERT INTO invoices VALUES (?, ?)", (props.message_id, body.decode()))
        ch.basic_ack(method.delivery_tag)
        outcomes.append("duplicate" if seen else "processed")
        print(f"delivery message_id={props.message_id} outcome={outcomes[-1]}")

    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.basic_consume(QUEUE, on_message)
        deadline = time.monotonic() + timeout
        while len(outcomes) < deliveries and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
    return outcomes


def demo(url, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_delete(QUEUE)
        declare_consumer_queue(ch)

    with tempfile.TemporaryDirectory() as tmp:
        shop = open_shop(os.path.join(tmp, "shop.sqlite3"))
        for item, quantity in [("book", 1), ("pen", 3), ("lamp", 1), ("unicorn", 1), ("desk", 1), ("chair", 4)]:
            try:
                print(f"placed order_id={place_order(shop, item, quantity)} item={item}")
            except OutOfStock:
                print(f"rolled_back item={item}")

        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            try:  # the first relay dies after 3 confirmed publishes, before marking them
                relay_once(shop, relay_channel(conn), simulate_crash_after=3)
            except RelayCrash:
                pass
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            relay_once(shop, relay_channel(conn))  # the restarted relay

        unsent, sent = shop.execute("SELECT COUNT(*) - COUNT(sent_at), COUNT(sent_at) FROM outbox").fetchone()
        print(f"outbox unsent={unsent} sent={sent}")

        billing = sqlite3.connect(os.path.join(tmp, "billing.sqlite3"))
        billing.execute("CREATE TABLE processed (message_id TEXT PRIMARY KEY)")
        billing.execute("CREATE TABLE invoices (message_id TEXT, body TEXT)")
        outcomes = consume_idempotently(url, billing, 8, timeout)
        print(f"consumer deliveries={len(outcomes)} processed={outcomes.count('processed')} "
              f"duplicates={outcomes.count('duplicate')}")

        orders = {f"order-{i}" for (i,) in shop.execute("SELECT id FROM orders")}
        invoiced = [m for (m,) in billing.execute("SELECT message_id FROM invoices")]
        lost = orders - set(invoiced)
        doubled = len(invoiced) - len(set(invoiced))
        outbox_rows = shop.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        print(f"orders={len(orders)} outbox_rows={outbox_rows} invoiced={len(set(invoiced))} "
              f"lost={len(lost)} doubled={doubled}")
    if lost or doubled or unsent or len(orders) != 5:
        sys.exit("an order event was lost or applied twice")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "place", "relay"])
    p.add_argument("order", nargs="*", help="place: ITEM QUANTITY")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--db", default="shop.sqlite3", help="place/relay: the shop's SQLite file")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "demo":
        return demo(args.url, args.timeout)
    shop = open_shop(args.db)
    if args.role == "place":
        item, quantity = args.order
        print("placed order", place_order(shop, item, int(quantity)))
        return
    with pika.BlockingConnection(pika.URLParameters(args.url)) as conn:
        declare_consumer_queue(conn.channel())  # so the events are kept somewhere
        ch = relay_channel(conn)
        try:
            while True:
                if relay_once(shop, ch) == 0:
                    conn.sleep(1)  # sleep, but keep answering heartbeats
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
