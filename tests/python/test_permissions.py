"""Cross-client tests: users, vhosts and permissions as pika sees them.

Each test gets a fresh vhost and user, made through the management HTTP API at
LEVERET_TEST_MGMT_URL (e.g. http://127.0.0.1:15672) as the AMQP_URL user, which must
be an administrator (guest/guest). The user may configure, write and read only
names starting with "app.". Without LEVERET_TEST_MGMT_URL these tests are skipped.

Written against RabbitMQ 3.10; Leveret must behave the same way. Run with
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F \\
    LEVERET_TEST_MGMT_URL=http://127.0.0.1:15672 python3 -m pytest -q tests/python
"""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass

import pika
import pika.exceptions as exc
import pytest

from conftest import make_params

MGMT_URL = os.environ.get("LEVERET_TEST_MGMT_URL", "").rstrip("/")

pytestmark = pytest.mark.skipif(
    not MGMT_URL, reason="LEVERET_TEST_MGMT_URL not set (no management API to make users with)"
)

PATTERN = r"^app\."
PASSWORD = "s3cret-pw"


# ---------------------------------------------------------------- management API


def api(method, path, body=None, expect=(200, 201, 204)):
    """One request to the management API as the AMQP_URL user; returns
    (status, parsed JSON or None). Fails the test on an unexpected status."""
    creds = make_params().credentials
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(MGMT_URL + path, data=data, method=method)
    req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if expect is not None:
        assert status in expect, f"{method} {path} -> {status}: {raw[:500]!r}"
    return status, (json.loads(raw) if raw.strip() else None)


def q(name):
    """A path segment (vhost, user or queue name), URL-encoded."""
    return urllib.parse.quote(name, safe="")


@dataclass
class Setup:
    vhost: str  # the user may use "app.*" here
    bare_vhost: str  # the user has no permissions here
    user: str
    password: str


@pytest.fixture
def setup():
    tag = uuid.uuid4().hex[:12]
    s = Setup(
        vhost=f"leveret-py-perm-{tag}",
        bare_vhost=f"leveret-py-bare-{tag}",
        user=f"leveret-py-user-{tag}",
        password=PASSWORD,
    )
    try:
        api("PUT", f"/api/vhosts/{q(s.vhost)}", {})
        api("PUT", f"/api/vhosts/{q(s.bare_vhost)}", {})
        api("PUT", f"/api/users/{q(s.user)}", {"password": s.password, "tags": ""})
        api(
            "PUT",
            f"/api/permissions/{q(s.vhost)}/{q(s.user)}",
            {"configure": PATTERN, "write": PATTERN, "read": PATTERN},
        )
        yield s
    finally:
        # Deleting the vhosts and the user closes any connection left over.
        for path in (
            f"/api/vhosts/{q(s.vhost)}",
            f"/api/vhosts/{q(s.bare_vhost)}",
            f"/api/users/{q(s.user)}",
        ):
            try:
                api("DELETE", path, expect=None)
            except Exception:
                pass


def user_params(s, vhost=None, password=None, user=None):
    return make_params(
        virtual_host=s.vhost if vhost is None else vhost,
        credentials=pika.PlainCredentials(
            s.user if user is None else user, s.password if password is None else password
        ),
    )


@pytest.fixture
def user_conn(setup):
    # Not conftest.connect(): a refused login here is a test failure, not a
    # broken broker.
    connection = pika.BlockingConnection(user_params(setup))
    yield connection
    if connection.is_open:
        try:
            connection.close()
        except Exception:
            pass


def refused(kind, name, s):
    return (
        f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{s.vhost}' "
        f"refused for user '{s.user}'"
    )


def assert_refused(e, kind, name, s):
    assert e.value.reply_code == 403, e.value
    assert e.value.reply_text == refused(kind, name, s)


# ---------------------------------------------------------------- tests


def test_declare_allowed_and_refused(setup, user_conn):
    ch = user_conn.channel()
    ok = ch.queue_declare("app.q")
    assert ok.method.queue == "app.q"
    assert ok.method.message_count == 0

    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.queue_declare("other.q")
    assert_refused(e, "queue", "other.q", setup)
    assert not ch.is_open

    # A channel error only: the connection and new channels still work.
    assert user_conn.is_open
    ch2 = user_conn.channel()
    ch2.exchange_declare("app.x", "fanout")
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch2.exchange_declare("other.x", "fanout")
    assert_refused(e, "exchange", "other.x", setup)

    # The refused queue was not created; the allowed one was.
    api("GET", f"/api/queues/{q(setup.vhost)}/app.q", expect=(200,))
    api("GET", f"/api/queues/{q(setup.vhost)}/other.q", expect=(404,))


def test_publish_needs_write_on_the_exchange(setup, user_conn):
    ch = user_conn.channel()
    ch.queue_declare("app.q")
    ch.exchange_declare("app.x", "fanout")
    ch.queue_bind("app.q", "app.x")

    # Allowed: write on app.x, then read on app.q.
    ch.confirm_delivery()
    ch.basic_publish("app.x", "", b"hello")
    method, _props, body = ch.basic_get("app.q", auto_ack=True)
    assert method is not None and body == b"hello"

    # The default exchange is "amq.default", which ^app\. does not match.
    # With confirms, pika raises from basic_publish itself.
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_publish("", "app.q", b"refused")
    assert_refused(e, "exchange", "amq.default", setup)

    # Without confirms the refusal arrives asynchronously: the next
    # synchronous call on the channel sees it.
    ch2 = user_conn.channel()
    ch2.basic_publish("", "app.q", b"refused too")
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch2.queue_declare("app.q", passive=True)
    assert_refused(e, "exchange", "amq.default", setup)

    # Nothing got through.
    ch3 = user_conn.channel()
    assert ch3.queue_declare("app.q", passive=True).method.message_count == 0


def test_get_and_consume_need_read_on_the_queue(setup, user_conn):
    # other.q exists and holds a message, made by the administrator (who
    # needs permissions on the vhost for that).
    api(
        "PUT",
        f"/api/permissions/{q(setup.vhost)}/{q(make_params().credentials.username)}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    api("PUT", f"/api/queues/{q(setup.vhost)}/other.q", {"durable": False, "auto_delete": False})
    _, routed = api(
        "POST",
        f"/api/exchanges/{q(setup.vhost)}/amq.default/publish",
        {"properties": {}, "routing_key": "other.q", "payload": "secret", "payload_encoding": "string"},
    )
    assert routed == {"routed": True}

    ch = user_conn.channel()
    ch.queue_declare("app.q")
    method, _props, _body = ch.basic_get("app.q", auto_ack=True)
    assert method is None  # allowed, and empty

    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_get("other.q", auto_ack=True)
    assert_refused(e, "queue", "other.q", setup)

    ch = user_conn.channel()
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_consume("other.q", lambda *_: None, auto_ack=True)
    assert_refused(e, "queue", "other.q", setup)

    # The permission check comes before the existence check: 403, not 404.
    ch = user_conn.channel()
    with pytest.raises(exc.ChannelClosedByBroker) as e:
        ch.basic_get("other.missing", auto_ack=True)
    assert_refused(e, "queue", "other.missing", setup)

    # The message is still there for someone who may read it.
    admin = pika.BlockingConnection(make_params(virtual_host=setup.vhost))
    try:
        method, _props, body = admin.channel().basic_get("other.q", auto_ack=True)
        assert method is not None and body == b"secret"
    finally:
        admin.close()


def connect_error(params):
    """Connects, expecting pika to fail; returns the exception."""
    with pytest.raises(exc.AMQPConnectionError) as e:
        conn = pika.BlockingConnection(params)
        conn.close()  # not reached unless the broker let us in
    return e.value


def test_vhost_without_permissions_is_530(setup):
    err = connect_error(user_params(setup, vhost=setup.bare_vhost))
    # pika reports a connection.close during connection.open as "probable
    # access denied", with the broker's close in its message.
    assert isinstance(err, exc.ProbableAccessDeniedError), repr(err)
    text = (
        f"NOT_ALLOWED - access to vhost '{setup.bare_vhost}' "
        f"refused for user '{setup.user}'"
    )
    assert "(530)" in str(err) and text in str(err), str(err)

    # A vhost that does not exist at all.
    missing = f"{setup.vhost}-missing"
    err = connect_error(user_params(setup, vhost=missing))
    assert isinstance(err, exc.ProbableAccessDeniedError), repr(err)
    assert "(530)" in str(err) and f"NOT_ALLOWED - vhost {missing} not found" in str(err), str(err)

    # Taking permissions away closes the door to new connections too.
    api("DELETE", f"/api/permissions/{q(setup.vhost)}/{q(setup.user)}")
    err = connect_error(user_params(setup))
    assert isinstance(err, exc.ProbableAccessDeniedError), repr(err)
    text = f"NOT_ALLOWED - access to vhost '{setup.vhost}' refused for user '{setup.user}'"
    assert "(530)" in str(err) and text in str(err), str(err)


LOGIN_REFUSED = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
    "For details see the broker logfile."
)


def test_bad_credentials_are_403(setup):
    # pika advertises authentication_failure_close, so the broker answers a
    # failed login with connection.close 403, which pika reports as
    # "probable authentication error".
    for params in (
        user_params(setup, password="wrong-" + PASSWORD),
        user_params(setup, user=setup.user + "-nobody"),
    ):
        err = connect_error(params)
        assert isinstance(err, exc.ProbableAuthenticationError), repr(err)
        assert "(403)" in str(err) and LOGIN_REFUSED in str(err), str(err)

    # The right password still works.
    conn = pika.BlockingConnection(user_params(setup))
    conn.close()
