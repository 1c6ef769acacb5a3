"""pika over AMQPS, run by tests/tls.rs (not a pytest suite: it needs a
broker with TLS and certificates the Rust test makes).

    python3 tls_client.py HOST PORT CA [--cert CERT --key KEY] [--external]

Connects with TLS trusting CA (with a client certificate if given), logs in
as guest/guest or with SASL EXTERNAL, publishes to an exclusive queue and
gets the message back. Prints "ok", or "refused: ..." / "error: ..." and
exits non-zero. Every wait is bounded.
"""

import argparse
import ssl
import sys

import pika
import pika.exceptions


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--external", action="store_true")
    a = p.parse_args()

    context = ssl.create_default_context(cafile=a.ca)
    if a.cert:
        context.load_cert_chain(a.cert, a.key)
    credentials = (
        pika.credentials.ExternalCredentials()
        if a.external
        else pika.PlainCredentials("guest", "guest")
    )
    params = pika.ConnectionParameters(
        host=a.host,
        port=a.port,
        ssl_options=pika.SSLOptions(context, "localhost"),
        credentials=credentials,
        socket_timeout=5,
        blocked_connection_timeout=5,
        stack_timeout=10,
    )
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as e:
        print(f"refused: {e}")
        return 2
    except pika.exceptions.AMQPConnectionError as e:
        print(f"error: {e!r}")
        return 3
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"pika over tls")
    for _ in range(50):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method:
            break
        conn.sleep(0.1)
    conn.close()
    if body != b"pika over tls":
        print(f"error: got {body!r}")
        return 4
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
