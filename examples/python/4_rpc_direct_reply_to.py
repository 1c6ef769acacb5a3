#!/usr/bin/env python3
"""RPC over direct reply-to: request/response without a reply queue per client.

The client consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack, as
the broker requires) and publishes requests with reply_to set to that name.
The broker rewrites reply_to into a per-channel address
(`amq.rabbitmq.reply-to.<token>`); the server publishes its answer to that
address through the default exchange and the broker hands it straight to the
waiting client: no queue to declare, clean up or leak. Each request carries a
fresh correlation_id so the client can match answers to questions, even with
many requests in flight.

  python3 4_rpc_direct_reply_to.py              # demo: server + pipelined client
  python3 4_rpc_direct_reply_to.py server
  python3 4_rpc_direct_reply_to.py call 30

Demo output: `call n=N result=R` per call, `server reply_to=amq.rabbitmq.reply-to.…`,
then `calls=N correct=N`.
"""
import argparse
import os
import sys
import threading
import time
import uuid

import pika

QUEUE = "rpc.fib"
REPLY_TO = "amq.rabbitmq.reply-to"


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def serve(url, stop, ready=lambda: None, seen_reply_to=lambda _: None):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        ch = conn.channel()
        ch.queue_declare(QUEUE)
        ch.basic_qos(prefetch_count=10)

        def on_request(ch, method, props, body):
            seen_reply_to(props.reply_to)
            answer = str(fib(int(body))).encode()
            ch.basic_publish("", props.reply_to, answer,
                             pika.BasicProperties(correlation_id=props.correlation_id))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(QUEUE, on_request)
        ready()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)


class FibClient:
    def __init__(self, url):
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.answers = {}  # correlation_id -> answer
        # Consume before publishing: a request whose reply_to is the
        # pseudo-queue is refused on a channel that is not consuming from it.
        self.ch.basic_consume(REPLY_TO, self._on_answer, auto_ack=True)

    def _on_answer(self, _ch, _method, props, body):
        self.answers[props.correlation_id] = int(body)

    def call_many(self, numbers, timeout=10):
        """Sends all requests at once, then waits for every answer."""
        pending = {}
        for n in numbers:
            cid = str(uuid.uuid4())
            pending[cid] = n
            self.ch.basic_publish("", QUEUE, str(n).encode(),
                                  pika.BasicProperties(reply_to=REPLY_TO, correlation_id=cid))
        deadline = time.monotonic() + timeout
        while not pending.keys() <= self.answers.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending.keys() - self.answers.keys())} calls unanswered")
            self.conn.process_data_events(time_limit=0.05)
        return [(n, self.answers.pop(cid)) for cid, n in pending.items()]

    def close(self):
        self.conn.close()


def demo(url, count, timeout):
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(QUEUE)
    stop, ready = threading.Event(), threading.Event()
    reply_tos = set()
    server = threading.Thread(target=serve, args=(url, stop, ready.set, reply_tos.add))
    server.start()
    try:
        if not ready.wait(timeout):
            sys.exit("server did not start")
        client = FibClient(url)
        results = client.call_many(range(count), timeout)
        client.close()
    finally:
        stop.set()
        server.join()
    correct = 0
    for n, result in results:
        print(f"call n={n} result={result}")
        correct += result == fib(n)
    for reply_to in sorted(reply_tos):
        print(f"server reply_to={reply_to}")
    print(f"calls={len(results)} correct={correct}")
    if correct != count:
        sys.exit("wrong answers")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", nargs="?", default="demo", choices=["demo", "server", "call"])
    p.add_argument("n", nargs="*", type=int, help="call: numbers to compute fib of")
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or local guest/guest)")
    p.add_argument("--count", type=int, default=20, help="demo calls")
    p.add_argument("--timeout", type=float, default=30, help="time limit, seconds")
    args = p.parse_args()
    if args.role == "server":
        try:
            serve(args.url, threading.Event(), lambda: print("serving", QUEUE, flush=True))
        except KeyboardInterrupt:
            pass
    elif args.role == "call":
        client = FibClient(args.url)
        for n, result in client.call_many(args.n, args.timeout):
            print(f"fib({n}) = {result}")
        client.close()
    else:
        demo(args.url, args.count, args.timeout)


if __name__ == "__main__":
    main()
