#!/usr/bin/env python3
"""Retry with a delay, then park in a dead-letter queue after 3 failed attempts.

Three queues, wired by dead-lettering (no plugin, no scheduler):
  emails        the work queue (say, mails to send); a rejected message is
                dead-lettered to ->
  emails.retry  no consumers; its message TTL is the retry delay, after which
                the message is dead-lettered back to -> emails
  emails.dlq    where a message that failed MAX_ATTEMPTS times is parked for
                a human (or a repair job) to look at
The consumer counts earlier failures from the `x-death` header the broker adds
each time it dead-letters a message: the entry for (queue=emails,
reason=rejected) counts the rejections so far. Nothing else needs to remember
attempts, and the delay keeps a failing message from spinning in a hot loop.

On the last failure the consumer publishes the message to emails.dlq (with
publisher confirms) and only then acks it: a crash in between parks it twice,
never loses it.

  python3 5_retry_dead_letter.py                 # demo: ok, flaky and poison messages
  python3 5_retry_dead_letter.py consume
  python3 5_retry_dead_letter.py publish poison

Demo output: `attempt message_id=ID n=N outcome=ok|retry|parked` per delivery,
`dlq message_id=ID attempts=3 x-death-count=2 ...`, then the queue depths.
"""
import argparse
import os
import sys
import time

import pika

QUEUE, RETRY, DLQ = "emails", "emails.retry", "emails.dlq"
MAX_ATTEMPTS = 3
PERSISTENT = pika.DeliveryMode.Persistent


def declare(ch, retry_delay_ms):
    # The default exchange ("") routes by queue name, so dead-lettering with
    # it and a routing key sends a message straight to the named queue.
    ch.queue_declare(QUEUE, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": RETRY})
    ch.queue_declare(RETRY, durable=True, arguments={
        "x-message-ttl": retry_delay_ms,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": QUEUE})
    ch.queue_declare(DLQ, durable=True)


def failed_attempts(props):
    """How often this message failed before, from the broker's x-death header."""
    for death in (props.headers or {}).get("x-death", []):
        if death["queue"] == QUEUE and death["reason"] == "rejected":
            return death["count"]
    return 0


def handle(body, attempt):
    """The business logic. For the demo: 'flaky' fails twice, 'poison' always."""
    if body == b"poison" or (body == b"flaky" and attempt < 3):
        raise ValueError(f"cannot process {body.decode()}")


def on_message(ch, method, props, body, log=print):
    attempt = failed_attempts(props) + 1
    try:
        handle(body, attempt)
    except Exception as error:
        if attempt < MAX_ATTEMPTS:
            # requeue=False dead-letters it to emails.retry; requeue=True
            # would put it straight back at the head and retry at once.
            ch.basic_reject(method.delivery_tag, requeue=False)
            outcome = "retry"
        else:
            headers = dict(props.headers or {}, attempts=attempt, error=str(error))
            ch.basic_publish("", DLQ, body, pika.BasicProperties(
                message_id=props.message_id, headers=headers, delivery_mode=PERSISTENT))
            # basic_publish returned: the broker confirmed the parked copy.
            ch.basic_ack(method.delivery_tag)
            outcome = "parked"
    else:
        ch.basic_ack(method.delivery_tag)
        outcome = "ok"
    log(f"attempt message_id={props.message_id} n={attempt} outcome={outcome}")
    return outcome


def publish(ch, message_id):
    ch.basic_publish("", QUEUE, message_id.encode(),
                     pika.BasicProperties(message_id=message_id, delivery_mode=PERSISTENT))


def demo(url, retry_delay_ms, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        for q in (QUEUE, RETRY, DLQ):
            ch.queue_delete(q)  # a fresh start, and arguments as declared here
        declare(ch, retry_delay_ms)
        ch.confirm_delivery()
        for message_id in ("ok", "flaky", "poison"):
            publish(ch, message_id)

        finished = []
        ch.basic_qos(prefetch_count=10)

        def consume(ch, method, props, body):
            if on_message(ch, method, props, body) != "retry":
                finished.append(props.message_id)

        ch.basic_consume(QUEUE, consume)
        deadline = time.monotonic() + timeout
        while len(finished) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        ch.cancel()

        method, props, body = ch.basic_get(DLQ, auto_ack=False)
        if method is None:
            sys.exit("nothing parked in " + DLQ)
        death = next(d for d in props.headers["x-death"] if d["queue"] == QUEUE)
        print(f"dlq message_id={props.message_id} body={body.decode()} attempts={props.headers['attempts']} "
              f"x-death-count={death['count']} x-death-queue={death['queue']} x-death-reason={death['reason']}")
        ch.basic_nack(method.delivery_tag, requeue=True)  # leave it parked
        depths = {q: ch.queue_declare(q, passive=True).method.message_count for q in (QUEUE, RETRY, DLQ)}
        print(" ".join(f"{q}={n}" for q, n in depths.items()))
    if sorted(finished) != ["flaky", "ok", "poison"] or depths != {QUEUE: 0, RETRY: 0, DLQ: 1}:
        sys.exit(f"unexpected outcome: finished {finished}, depths {depths}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "consume", "publish"])
    p.add_argument("message_ids", nargs="*", help="publish: message ids (ok, flaky, poison)")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--retry-delay-ms", type=int, default=1000,
                   help="delay before each retry (an argument of emails.retry: to change it, delete that queue)")
    p.add_argument("--timeout", type=float, default=30, help="demo time limit, seconds")
    args = p.parse_args()
    if args.role == "demo":
        return demo(args.url, args.retry_delay_ms, args.timeout)
    with pika.BlockingConnection(pika.URLParameters(args.url)) as conn:
        ch = conn.channel()
        declare(ch, args.retry_delay_ms)
        ch.confirm_delivery()
        if args.role == "publish":
            for message_id in args.message_ids:
                publish(ch, message_id)
            return
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(QUEUE, lambda *a: on_message(*a, log=lambda s: print(s, flush=True)))
        try:
            ch.start_consuming()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
