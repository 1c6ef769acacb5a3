"""Dead-lettering as pika sees it: DLX delay-retry loops, x-death headers,
per-message expiration and max-length overflow.

Written against RabbitMQ 3.10; Leveret must behave the same way. Run with
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F \
        python3 -m pytest -q tests/python/test_dead_lettering.py

Every wait is bounded (consume with a deadline, basic_get polling with a
deadline); every queue and exchange a test declares is deleted afterwards.
"""

import time
from datetime import datetime

import pika
import pika.compat
import pika.exceptions as exc
import pytest

from conftest import connect, unique

# Keys of one x-death entry (RabbitMQ 3.10); 'original-expiration' is added
# only when the dead-lettered message had a per-message TTL (expiration).
X_DEATH_KEYS = {"count", "reason", "queue", "time", "exchange", "routing-keys"}


# ---------------------------------------------------------------- helpers


class Topology:
    """Declares uniquely named queues/exchanges and deletes them all at teardown."""

    def __init__(self, ch):
        self.ch = ch
        self.queues = []
        self.exchanges = []

    def exchange(self, prefix, exchange_type="direct"):
        name = unique(prefix)
        self.exchanges.append(name)
        self.ch.exchange_declare(name, exchange_type=exchange_type)
        return name

    def queue(self, prefix, **arguments):
        name = unique(prefix)
        self.queues.append(name)
        self.ch.queue_declare(name, arguments=arguments or None)
        return name

    def delete_all(self, conn):
        if not (self.queues or self.exchanges):
            return
        own = None
        try:
            # The test may have left its channel (or its connection) closed.
            if conn.is_open:
                cleanup = conn.channel()
            else:
                own = connect()
                cleanup = own.channel()
            for q in self.queues:
                cleanup.queue_delete(q)
            for x in self.exchanges:
                cleanup.exchange_delete(x)
        except (exc.AMQPError, RuntimeError):
            pass  # best effort; the test's own outcome is what matters
        finally:
            if own is not None and own.is_open:
                own.close()


@pytest.fixture
def topo(conn, ch):
    t = Topology(ch)
    yield t
    t.delete_all(conn)


def pump(conn, until, timeout):
    """Process I/O until `until()` is true or `timeout` passes; returns until()."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    return until()


def get_one(ch, queue, timeout=3.0, auto_ack=True):
    """basic_get polling until a message arrives; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        assert time.monotonic() < deadline, f"no message in {queue} after {timeout}s"
        ch.connection.sleep(0.02)


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def check_death(entry, *, queue, reason, count, exchange, routing_keys,
                original_expiration=None):
    """One x-death entry, as pika decodes it (a dict)."""
    assert isinstance(entry, dict), entry
    expected_keys = set(X_DEATH_KEYS)
    if original_expiration is not None:
        expected_keys.add("original-expiration")
    assert set(entry) == expected_keys, entry
    assert entry["queue"] == queue, entry
    assert entry["reason"] == reason, entry
    assert entry["count"] == count, entry
    # Sent as a signed 64-bit 'l' field, which pika decodes as its int
    # subclass `long` (clients such as Spring AMQP cast x-death count to Long).
    assert type(entry["count"]) is pika.compat.long, entry
    assert entry["exchange"] == exchange, entry
    assert entry["routing-keys"] == routing_keys, entry
    assert all(type(k) is str for k in entry["routing-keys"]), entry
    assert isinstance(entry["time"], datetime), entry  # AMQP timestamp ('T')
    if original_expiration is not None:
        assert entry["original-expiration"] == original_expiration, entry


# ---------------------------------------------------------------- delay-retry loop


TTL_MS = 200
RETRIES = 3


def test_delay_retry_loop_via_dlx_and_ttl(conn, ch, topo):
    """Celery/kombu-style retry with a delay: the work queue dead-letters
    rejected messages to a retry exchange; the wait queue there holds them for
    its x-message-ttl and dead-letters them back to the work exchange."""
    work_x = topo.exchange("work-x")
    retry_x = topo.exchange("retry-x")
    work_q = topo.queue("work-q", **{"x-dead-letter-exchange": retry_x})
    wait_q = topo.queue("wait-q", **{"x-message-ttl": TTL_MS,
                                     "x-dead-letter-exchange": work_x})
    ch.queue_bind(work_q, work_x, routing_key="task")
    ch.queue_bind(wait_q, retry_x, routing_key="task")

    ch.confirm_delivery()
    props = pika.BasicProperties(message_id="job-1", headers={"app": "celery-ish"})
    ch.basic_publish(work_x, "task", b"do the thing", props)

    got = []  # (method, properties, body, arrival time)
    tag = ch.basic_consume(
        work_q,
        lambda _c, m, p, b: got.append((m, p, b, time.monotonic())),
        auto_ack=False,
    )
    assert pump(conn, lambda: len(got) == 1, timeout=3), "first delivery missing"
    method, p, body, _ = got[0]
    assert body == b"do the thing"
    assert p.headers == {"app": "celery-ish"}  # no x-death yet

    for k in range(1, RETRIES + 1):
        ch.basic_reject(got[-1][0].delivery_tag, requeue=False)
        rejected_at = time.monotonic()
        assert pump(conn, lambda: len(got) == k + 1, timeout=3), (
            f"redelivery {k} did not come back through {wait_q} within 3 s"
        )
        method, p, body, arrived_at = got[k]
        waited = arrived_at - rejected_at
        assert waited >= 0.15, (
            f"redelivery {k} came back after {waited * 1000:.0f} ms, "
            f"before the wait queue's {TTL_MS} ms TTL"
        )
        assert waited < 2.0, f"redelivery {k} took {waited:.2f}s (TTL {TTL_MS} ms)"

        assert body == b"do the thing"
        assert method.exchange == work_x
        assert method.routing_key == "task"
        assert method.redelivered is False  # dead-lettered copies are new messages
        assert p.message_id == "job-1"
        assert p.expiration is None

        h = p.headers
        assert h["app"] == "celery-ish"
        deaths = h["x-death"]
        assert isinstance(deaths, list) and len(deaths) == 2, deaths
        # Most recent death first: it just expired out of the wait queue ...
        check_death(deaths[0], queue=wait_q, reason="expired", count=k,
                    exchange=retry_x, routing_keys=["task"])
        # ... after being rejected from the work queue.
        check_death(deaths[1], queue=work_q, reason="rejected", count=k,
                    exchange=work_x, routing_keys=["task"])
        assert h["x-first-death-reason"] == "rejected"
        assert h["x-first-death-queue"] == work_q
        assert h["x-first-death-exchange"] == work_x

    ch.basic_ack(got[-1][0].delivery_tag)
    conn.process_data_events(time_limit=TTL_MS / 1000 + 0.2)
    assert len(got) == RETRIES + 1, "acked message came back"
    ch.basic_cancel(tag)
    assert message_count(ch, work_q) == 0
    assert message_count(ch, wait_q) == 0


# ---------------------------------------------------------------- per-message expiration


def test_x_death_after_per_message_expiration_then_nack(conn, ch, topo):
    dlx = topo.exchange("dlx", exchange_type="fanout")
    dlx2 = topo.exchange("dlx2", exchange_type="fanout")
    src = topo.queue("src", **{"x-dead-letter-exchange": dlx})
    dlq = topo.queue("dlq", **{"x-dead-letter-exchange": dlx2})
    dlq2 = topo.queue("dlq2")
    ch.queue_bind(dlq, dlx)
    ch.queue_bind(dlq2, dlx2)

    ch.confirm_delivery()
    ch.basic_publish("", src, b"short-lived",
                     pika.BasicProperties(expiration="100", headers={"n": 1}))

    # Consume the expired copy from the dead-letter queue.
    got = []
    tag = ch.basic_consume(dlq, lambda _c, m, p, b: got.append((m, p, b)),
                           auto_ack=False)
    assert pump(conn, lambda: bool(got), timeout=3), f"nothing dead-lettered to {dlq}"
    method, p, body = got[0]
    assert body == b"short-lived"
    assert method.exchange == dlx
    assert method.routing_key == src
    assert method.redelivered is False
    assert p.expiration is None  # the TTL is not carried to the dead-letter copy
    h = p.headers
    assert h["n"] == 1
    deaths = h["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1, deaths
    check_death(deaths[0], queue=src, reason="expired", count=1, exchange="",
                routing_keys=[src], original_expiration="100")
    assert h["x-first-death-reason"] == "expired"
    assert h["x-first-death-queue"] == src
    assert h["x-first-death-exchange"] == ""
    assert message_count(ch, src) == 0

    # nack without requeue on a queue with a DLX dead-letters it as 'rejected'.
    ch.basic_nack(method.delivery_tag, requeue=False)
    ch.basic_cancel(tag)
    method, p, body = get_one(ch, dlq2)
    assert body == b"short-lived"
    assert method.exchange == dlx2
    assert method.routing_key == src
    assert p.expiration is None
    h = p.headers
    deaths = h["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 2, deaths
    check_death(deaths[0], queue=dlq, reason="rejected", count=1, exchange=dlx,
                routing_keys=[src])
    check_death(deaths[1], queue=src, reason="expired", count=1, exchange="",
                routing_keys=[src], original_expiration="100")
    assert h["x-first-death-reason"] == "expired"
    assert h["x-first-death-queue"] == src
    assert h["x-first-death-exchange"] == ""
    assert message_count(ch, dlq) == 0


# ---------------------------------------------------------------- max-length


def test_max_length_dead_letters_the_head_as_maxlen(ch, topo):
    dlx = topo.exchange("dlx")
    q = topo.queue("bounded", **{"x-max-length": 2,
                                 "x-dead-letter-exchange": dlx,
                                 "x-dead-letter-routing-key": "overflow"})
    dlq = topo.queue("dlq")
    ch.queue_bind(dlq, dlx, routing_key="overflow")

    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())

    method, p, body = get_one(ch, dlq)
    assert body == b"m0"  # default overflow (drop-head) drops the oldest
    assert method.exchange == dlx
    assert method.routing_key == "overflow"
    deaths = p.headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1, deaths
    # routing-keys are the message's original keys, not the DLX routing key.
    check_death(deaths[0], queue=q, reason="maxlen", count=1, exchange="",
                routing_keys=[q])
    assert p.headers["x-first-death-reason"] == "maxlen"
    assert p.headers["x-first-death-queue"] == q
    assert p.headers["x-first-death-exchange"] == ""

    assert message_count(ch, q) == 2
    assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)] == [b"m1", b"m2"]
    assert ch.basic_get(dlq, auto_ack=True) == (None, None, None)
