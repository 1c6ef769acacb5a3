"""Cross-client tests: pika (BlockingConnection) against an AMQP 0-9-1 broker.

Written against RabbitMQ 3.10; Leveret must behave the same way. Run with
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python3 -m pytest -q tests/python
"""

import os
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pika
import pika.exceptions as exc
import pytest

from conftest import connect, unique


# ---------------------------------------------------------------- helpers


def declare(ch, name=None, **kwargs):
    """Declare a queue with a unique name (exclusive unless told otherwise)."""
    kwargs.setdefault("exclusive", True)
    ok = ch.queue_declare(name or unique(), **kwargs)
    return ok.method.queue


def pump(conn, until, timeout=5.0):
    """Process I/O until `until()` is true or `timeout` passes; returns until()."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    return until()


def consume(conn, ch, queue, n, timeout=5.0, auto_ack=False):
    """Start a consumer; wait for `n` deliveries; return (consumer_tag, deliveries)."""
    got = []
    tag = ch.basic_consume(
        queue, lambda _ch, m, p, b: got.append((m, p, b)), auto_ack=auto_ack
    )
    assert pump(conn, lambda: len(got) >= n, timeout), (
        f"expected {n} deliveries from {queue}, got {len(got)}"
    )
    return tag, got


def drain(ch, queue, limit=100):
    """basic_get with auto-ack until the queue is empty; returns the bodies."""
    bodies = []
    for _ in range(limit):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)
    raise AssertionError(f"{queue} did not drain within {limit} messages")


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


# ---------------------------------------------------------------- connect / declare


def test_connect_and_declare(conn, ch):
    caps = conn._impl.server_properties["capabilities"]
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "per_consumer_qos", "direct_reply_to"):
        assert caps.get(cap) is True, f"server capability {cap} missing: {caps}"

    name = unique()
    ex = unique("ex")
    try:
        _declare_round(conn, ch, name, ex)
    finally:
        if conn.is_open:
            try:
                cleanup = conn.channel()
                cleanup.queue_delete(name)
                cleanup.exchange_delete(ex)
            except exc.AMQPError:
                pass  # best effort; the test's own outcome is what matters


def _declare_round(conn, ch, name, ex):
    ok = ch.queue_declare(name, durable=False, auto_delete=False)
    assert ok.method.queue == name
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0

    # Redeclaring with the same arguments is fine; passive declare too.
    assert ch.queue_declare(name).method.queue == name
    assert ch.queue_declare(name, passive=True).method.queue == name

    # Server-named queue.
    gen = ch.queue_declare("", exclusive=True).method.queue
    assert gen.startswith("amq.gen-"), gen

    ch.exchange_declare(ex, exchange_type="direct", auto_delete=False)
    ch.exchange_declare(ex, exchange_type="direct", passive=True)
    ch.queue_bind(name, ex, routing_key="rk")
    ch.basic_publish(ex, "rk", b"one")
    ch.basic_publish(ex, "other", b"dropped")
    ch.basic_publish("", name, b"two")
    assert ch.queue_purge(name).method.message_count == 2
    ch.basic_publish("", name, b"three")
    ch.queue_unbind(name, ex, routing_key="rk")
    ch.exchange_delete(ex)
    assert ch.queue_delete(name).method.message_count == 1
    assert ch.is_open


# ---------------------------------------------------------------- properties / headers


MIXED_HEADERS = {
    "string": "héllo wörld ✓",
    "empty": "",
    "int": 42,
    "negative": -7,
    "big": 2**40,  # pika encodes ints outside i32 as 'l' (signed 64-bit)
    "int_min": -(2**31),
    "true": True,
    "false": False,
    "bytes": b"\x00\x01\xfe\xff",  # 'x' byte array
    "decimal": Decimal("3.14"),
    "neg_decimal": Decimal("-12.5"),
    "timestamp": datetime(2024, 2, 29, 12, 34, 56, tzinfo=timezone.utc),
    "void": None,
    "list": [1, "two", True, [3, 4], {"k": "v"}, None],
    "empty_list": [],
    "nested": {
        "a": {"b": {"c": 1, "d": "deep"}},
        "l": [b"raw", Decimal("0.5")],
        "empty": {},
    },
}


def test_round_trip_properties_and_headers(conn, ch, username):
    q = declare(ch)
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=MIXED_HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-" + uuid.uuid4().hex,
        reply_to="reply-queue",
        expiration="60000",
        message_id="msg-" + uuid.uuid4().hex,
        timestamp=1_700_000_000,
        type="test.type",
        user_id=username,  # the broker checks this equals the login user
        app_id="leveret-tests",
    )
    body = b'{"hello": "world"}'
    ch.basic_publish("", q, body, props)

    tag, got = consume(conn, ch, q, 1, auto_ack=True)
    method, rprops, rbody = got[0]
    assert rbody == body
    assert method.exchange == ""
    assert method.routing_key == q
    assert method.redelivered is False
    assert method.delivery_tag == 1
    assert method.consumer_tag == tag
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id",
                  "timestamp", "type", "user_id", "app_id"):
        assert getattr(rprops, field) == getattr(props, field), field
    assert rprops.headers == MIXED_HEADERS
    # Type fidelity, not just equality (True == 1 in Python).
    assert type(rprops.headers["true"]) is bool
    assert type(rprops.headers["int"]) is int
    assert type(rprops.headers["bytes"]) is bytes
    assert type(rprops.headers["decimal"]) is Decimal
    assert type(rprops.headers["timestamp"]) is datetime
    assert type(rprops.headers["nested"]["l"][0]) is bytes
    ch.basic_cancel(tag)


def test_empty_body_and_no_properties(conn, ch):
    q = declare(ch)
    ch.basic_publish("", q, b"")
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None
    assert body == b""
    assert props.headers is None
    assert props.content_type is None
    assert props.delivery_mode is None


def test_pika_cannot_encode_float_headers(ch):
    """pika has no float encoder (and decodes 'f'/'d' values as int): floats in
    headers fail client-side without touching the broker or the channel."""
    q = declare(ch)
    with pytest.raises(exc.UnsupportedAMQPFieldException):
        ch.basic_publish("", q, b"x", pika.BasicProperties(headers={"f": 1.5}))
    assert ch.is_open
    ch.basic_publish("", q, b"after")
    assert ch.basic_get(q, auto_ack=True)[2] == b"after"


def test_user_id_mismatch_is_rejected(ch, username):
    q = declare(ch)
    ch2 = ch.connection.channel()
    ch2.confirm_delivery()
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch2.basic_publish("", q, b"x", pika.BasicProperties(user_id="not-" + username))
    assert e.value.reply_code == 406
    assert e.value.reply_text == (
        f"PRECONDITION_FAILED - user_id property set to 'not-{username}' "
        f"but authenticated user was '{username}'"
    )


# ---------------------------------------------------------------- basic.get


def test_basic_get(ch):
    q = declare(ch)
    assert ch.basic_get(q) == (None, None, None)

    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())

    method, props, body = ch.basic_get(q, auto_ack=False)
    assert body == b"m0"
    assert method.message_count == 2  # messages left in the queue
    assert method.redelivered is False
    assert method.exchange == ""
    assert method.routing_key == q
    first_tag = method.delivery_tag

    # Reject with requeue: it goes back to the head of the queue, redelivered.
    ch.basic_reject(first_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"m0"
    assert method.redelivered is True
    assert method.message_count == 2
    assert method.delivery_tag > first_tag
    ch.basic_ack(method.delivery_tag)

    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m1"
    assert method.message_count == 1
    assert message_count(ch, q) == 1
    assert drain(ch, q) == [b"m2"]
    assert ch.basic_get(q) == (None, None, None)


# ---------------------------------------------------------------- ack / nack / requeue


def test_manual_ack_nack_requeue_redelivered(conn, ch):
    q = declare(ch)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())

    got = []
    tag = ch.basic_consume(q, lambda _c, m, p, b: got.append((m, b)), auto_ack=False)
    assert pump(conn, lambda: len(got) == 3)
    assert [b for _, b in got] == [b"m0", b"m1", b"m2"]
    assert [m.delivery_tag for m, _ in got] == [1, 2, 3]
    assert not any(m.redelivered for m, _ in got)

    ch.basic_nack(1, multiple=False, requeue=True)  # m0 comes back
    ch.basic_reject(2, requeue=False)  # m1 is dropped (no DLX)
    ch.basic_ack(3)  # m2 done
    assert pump(conn, lambda: len(got) == 4)
    method, body = got[3]
    assert body == b"m0"
    assert method.redelivered is True
    assert method.delivery_tag == 4
    ch.basic_ack(4)

    # nack(multiple) requeues every outstanding delivery up to the tag, in order.
    for i in range(3, 6):
        ch.basic_publish("", q, f"m{i}".encode())
    assert pump(conn, lambda: len(got) == 7)
    assert [b for _, b in got[4:7]] == [b"m3", b"m4", b"m5"]
    ch.basic_nack(got[6][0].delivery_tag, multiple=True, requeue=True)
    assert pump(conn, lambda: len(got) == 10)
    assert [b for _, b in got[7:10]] == [b"m3", b"m4", b"m5"]
    assert all(m.redelivered for m, _ in got[7:10])
    ch.basic_ack(got[9][0].delivery_tag, multiple=True)

    ch.basic_cancel(tag)
    assert message_count(ch, q) == 0
    conn.process_data_events(time_limit=0.2)
    assert len(got) == 10  # nothing more arrived


def test_unacked_messages_requeued_on_channel_close(conn):
    ch1 = conn.channel()
    q = declare(ch1)
    ch1.basic_publish("", q, b"pending")
    method, _, body = ch1.basic_get(q, auto_ack=False)
    assert body == b"pending" and method.redelivered is False
    ch1.close()

    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"pending"
    assert method.redelivered is True


def test_unknown_delivery_tag_closes_channel(ch):
    ch.basic_ack(99)
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_qos(prefetch_count=1)  # any synchronous call surfaces the close
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"


# ---------------------------------------------------------------- publisher confirms


def test_publisher_confirms(conn, ch, vhost):
    q = declare(ch)
    ch.confirm_delivery()
    # Routed publish: confirmed, returns without raising.
    ch.basic_publish("", q, b"confirmed")
    ch.basic_publish("", q, b"mandatory", mandatory=True)
    assert message_count(ch, q) == 2

    # Unroutable + non-mandatory: silently dropped but still confirmed.
    ch.basic_publish("", unique("nowhere"), b"dropped")

    # Unroutable + mandatory: basic.return (312 NO_ROUTE) before the ack.
    nowhere = unique("nowhere")
    props = pika.BasicProperties(message_id="returned-1", headers={"k": "v"})
    with pytest.raises(exc.UnroutableError) as e:
        ch.basic_publish("", nowhere, b"come back", props, mandatory=True)
    [returned] = e.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == ""
    assert returned.method.routing_key == nowhere
    assert returned.properties.message_id == "returned-1"
    assert returned.properties.headers == {"k": "v"}
    assert returned.body == b"come back"
    assert ch.is_open

    # Mandatory to an exchange with no bindings behaves the same.
    ex = unique("ex")
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=False)
    with pytest.raises(exc.UnroutableError):
        ch.basic_publish(ex, "", b"x", mandatory=True)
    ch.exchange_delete(ex)

    # Publishing to a missing exchange closes the channel with 404.
    missing = unique("missing-ex")
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_publish(missing, "rk", b"x")
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{missing}' in vhost '{vhost}'"
    assert conn.is_open


def test_many_confirms(ch):
    q = declare(ch)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", q, str(i).encode())
    assert message_count(ch, q) == 200


# ---------------------------------------------------------------- errors


def test_passive_declare_missing_queue_404(conn, ch, vhost):
    name = unique("missing")
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.queue_declare(name, passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '{vhost}'"
    assert ch.is_closed
    # Channel-level error: the connection survives and new channels work.
    assert conn.is_open
    ch2 = conn.channel()
    assert ch2.queue_declare("", exclusive=True).method.queue


def test_passive_declare_missing_exchange_404(conn, ch, vhost):
    name = unique("missing-ex")
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.exchange_declare(name, passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{name}' in vhost '{vhost}'"
    assert conn.is_open


def test_inequivalent_queue_redeclare_406(conn, ch, vhost):
    name = declare(ch, exclusive=False, durable=False)
    try:
        with pytest.raises(exc.ChannelClosedByBroker) as e:
            ch.queue_declare(name, durable=True)
        assert e.value.reply_code == 406
        assert e.value.reply_text == (
            f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in "
            f"vhost '{vhost}': received 'true' but current is 'false'"
        )
        ch2 = conn.channel()
        with pytest.raises(exc.ChannelClosedByBroker) as e:
            ch2.queue_declare(name, auto_delete=True)
        assert e.value.reply_code == 406
        assert e.value.reply_text == (
            f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{name}' "
            f"in vhost '{vhost}': received 'true' but current is 'false'"
        )
        assert conn.is_open
    finally:
        conn.channel().queue_delete(name)


def test_exclusive_queue_ignores_durable_on_redeclare(ch):
    """RabbitMQ forces exclusive queues non-durable, so the durable flag of a
    redeclaration is not compared."""
    name = declare(ch, exclusive=True, durable=False)
    assert ch.queue_declare(name, exclusive=True, durable=True).method.queue == name


def shortstr_reply(text):
    """RabbitMQ cuts reply texts longer than a shortstr to 252 chars + '...'."""
    return text if len(text) <= 255 else text[:252] + "..."


def test_exclusive_queue_locked_405(conn, ch, vhost):
    name = declare(ch, exclusive=True)
    expected = shortstr_reply(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
        f"'{name}' in vhost '{vhost}'. It could be originally declared on "
        f"another connection or the exclusive property value does not match "
        f"that of the original declaration."
    )
    assert len(expected) == 255 and expected.endswith("dec...")
    other = connect()
    try:
        with pytest.raises(exc.ChannelClosedByBroker) as e:
            other.channel().queue_declare(name, passive=True)
        assert e.value.reply_code == 405
        assert e.value.reply_text == expected
        # Same answer for a consume from the other connection.
        with pytest.raises(exc.ChannelClosedByBroker) as e:
            other.channel().basic_consume(name, lambda *a: None)
        assert e.value.reply_code == 405
    finally:
        other.close()
    # The exclusive queue goes away with its owner connection.
    conn.close()
    probe = connect()
    try:
        with pytest.raises(exc.ChannelClosedByBroker) as e:
            probe.channel().queue_declare(name, passive=True)
        assert e.value.reply_code == 404
    finally:
        probe.close()


# ---------------------------------------------------------------- routing


def test_topic_exchange_routing(ch):
    ex = unique("topic")
    ch.exchange_declare(ex, exchange_type="topic", auto_delete=True)
    patterns = {
        "star": "a.*",
        "hash": "a.#",
        "all": "#",
        "middle": "*.b.*",
        "exact": "a.b.c",
        "hash_mid": "a.#.c",
    }
    queues = {}
    for key, pattern in patterns.items():
        queues[key] = declare(ch)
        ch.queue_bind(queues[key], ex, routing_key=pattern)

    ch.confirm_delivery()
    keys = ["a", "a.b", "a.b.c", "x.b.y", "a.x", "b", "a.c", "a.x.y.c", ""]
    for rk in keys:
        ch.basic_publish(ex, rk, rk.encode())

    expected = {
        "star": ["a.b", "a.x", "a.c"],
        "hash": ["a", "a.b", "a.b.c", "a.x", "a.c", "a.x.y.c"],
        "all": keys,
        "middle": ["a.b.c", "x.b.y"],
        "exact": ["a.b.c"],
        "hash_mid": ["a.b.c", "a.c", "a.x.y.c"],
    }
    for key, q in queues.items():
        got = [b.decode() for b in drain(ch, q)]
        assert got == expected[key], f"pattern {patterns[key]!r}"


def test_fanout_and_direct_routing(ch):
    fan = unique("fanout")
    ch.exchange_declare(fan, exchange_type="fanout", auto_delete=True)
    qs = [declare(ch) for _ in range(3)]
    for q in qs:
        ch.queue_bind(q, fan, routing_key="ignored-" + q)
    direct = unique("direct")
    ch.exchange_declare(direct, exchange_type="direct", auto_delete=True)
    ch.queue_bind(qs[0], direct, routing_key="red")
    ch.queue_bind(qs[1], direct, routing_key="red")
    ch.queue_bind(qs[2], direct, routing_key="blue")

    ch.confirm_delivery()
    ch.basic_publish(fan, "whatever", b"to-all")
    ch.basic_publish(direct, "red", b"red")
    ch.basic_publish(direct, "blue", b"blue")
    ch.basic_publish(direct, "green", b"green")
    assert drain(ch, qs[0]) == [b"to-all", b"red"]
    assert drain(ch, qs[1]) == [b"to-all", b"red"]
    assert drain(ch, qs[2]) == [b"to-all", b"blue"]


# ---------------------------------------------------------------- prefetch


def test_prefetch(conn, ch):
    q = declare(ch)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=2)

    got = []
    tag = ch.basic_consume(q, lambda _c, m, p, b: got.append((m, b)), auto_ack=False)
    assert pump(conn, lambda: len(got) == 2)
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 2, "broker exceeded prefetch_count=2"

    ch.basic_ack(got[0][0].delivery_tag)
    assert pump(conn, lambda: len(got) == 3)
    conn.process_data_events(time_limit=0.3)
    assert len(got) == 3, "one ack must free exactly one slot"

    ch.basic_ack(got[2][0].delivery_tag, multiple=True)  # acks m1 and m2
    assert pump(conn, lambda: len(got) == 5)
    assert [b for _, b in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    ch.basic_ack(got[4][0].delivery_tag, multiple=True)
    ch.basic_cancel(tag)
    assert message_count(ch, q) == 0


# ---------------------------------------------------------------- large body


def test_2mib_body(conn, ch):
    q = declare(ch)
    body = os.urandom(2 * 1024 * 1024)
    ch.confirm_delivery()
    ch.basic_publish("", q, body, pika.BasicProperties(message_id="big"))
    # Via basic.get ...
    method, props, got = ch.basic_get(q, auto_ack=True)
    assert props.message_id == "big"
    assert len(got) == len(body) and got == body
    # ... and via basic.consume.
    ch.basic_publish("", q, body)
    tag, deliveries = consume(conn, ch, q, 1, auto_ack=True, timeout=10)
    assert deliveries[0][2] == body
    ch.basic_cancel(tag)


# ---------------------------------------------------------------- heartbeats


def test_heartbeats_negotiated_and_exchanged():
    conn = connect(heartbeat=2)
    try:
        impl = conn._impl
        assert impl.params.heartbeat == 2  # what pika sent in tune-ok
        ch = conn.channel()
        q = declare(ch)
        conn.sleep(5)  # idle, but processing I/O (and sending heartbeats)
        assert conn.is_open
        checker = impl._heartbeat_checker
        assert checker is not None
        assert checker._heartbeat_frames_received >= 1, (
            "broker sent no heartbeat frames in 5 s with a 2 s timeout"
        )
        ch.basic_publish("", q, b"still alive")
        assert ch.basic_get(q, auto_ack=True)[2] == b"still alive"
    finally:
        if conn.is_open:
            conn.close()


# ---------------------------------------------------------------- direct reply-to


def test_direct_reply_to_rpc(conn):
    server_conn = connect()
    try:
        server = server_conn.channel()
        # Exclusive to the server's connection; others may still publish to it.
        rpc_queue = declare(server, exclusive=True)

        client = conn.channel()
        replies = []
        client.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda _c, m, p, b: replies.append((m, p, b)),
            auto_ack=True,
        )
        cid = uuid.uuid4().hex
        client.basic_publish(
            "",
            rpc_queue,
            b"ping",
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=cid),
        )

        request = []
        def got_request():
            if not request:
                m, p, b = server.basic_get(rpc_queue, auto_ack=True)
                if m is not None:
                    request.append((p, b))
            return bool(request)
        assert pump(server_conn, got_request)
        props, body = request[0]
        assert body == b"ping"
        assert props.correlation_id == cid
        reply_to = props.reply_to
        assert reply_to.startswith("amq.rabbitmq.reply-to."), reply_to

        server.basic_publish(
            "", reply_to, b"pong", pika.BasicProperties(correlation_id=cid)
        )
        assert pump(conn, lambda: bool(replies))
        method, rprops, rbody = replies[0]
        assert rbody == b"pong"
        assert rprops.correlation_id == cid
        assert method.routing_key == reply_to
        assert method.exchange == ""
    finally:
        server_conn.close()


def test_direct_reply_to_requires_consumer(ch):
    ch.basic_publish(
        "", unique("rpc"), b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")
    )
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_qos(prefetch_count=1)  # surfaces the asynchronous close
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_direct_reply_to_consumer_must_be_no_ack(ch):
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"
