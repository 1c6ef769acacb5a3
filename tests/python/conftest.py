"""Fixtures for the pika cross-client suite.

The broker is taken from AMQP_URL (default: a local RabbitMQ with guest/guest).

A broken broker must fail this suite fast, not hang it:
- every connection uses short socket / handshake timeouts;
- every test runs under a hard wall-clock limit (SIGALRM);
- once a connect fails or a test hits its limit, the remaining tests fail at
  once instead of each waiting out their own timeouts.
"""

import os
import signal
import uuid

import pika
import pika.exceptions
import pytest

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

# Hard limit per test, in seconds (the slowest test, heartbeats, idles for 5 s).
TEST_TIMEOUT = float(os.environ.get("LEVERET_PY_TEST_TIMEOUT", "15"))
# Extra time a timed-out test gets to tear down (close connections) before it
# is interrupted again.
TEARDOWN_GRACE = 3.0

# Why the broker is considered broken, once it is (shared by all tests).
_broken = {"reason": None}


class TestTimedOut(Exception):
    __test__ = False  # not a test class, despite the name


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    if _broken["reason"]:
        pytest.fail(f"not run: {_broken['reason']}", pytrace=False)

    def on_alarm(signum, frame):
        reason = f"{request.node.name} exceeded {TEST_TIMEOUT:g}s"
        _broken["reason"] = f"an earlier test timed out ({reason})"
        signal.setitimer(signal.ITIMER_REAL, TEARDOWN_GRACE)
        raise TestTimedOut(reason)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_params(**overrides):
    """Connection parameters from AMQP_URL, with short timeouts."""
    params = pika.URLParameters(AMQP_URL)
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 10
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def connect(**overrides):
    if _broken["reason"]:
        raise RuntimeError(f"not connecting: {_broken['reason']}")
    try:
        return pika.BlockingConnection(make_params(**overrides))
    except Exception as e:
        _broken["reason"] = f"cannot connect to {AMQP_URL}: {e!r}"
        raise


@pytest.fixture
def params():
    return make_params()


@pytest.fixture
def conn():
    connection = connect()
    yield connection
    if connection.is_open:
        try:
            connection.close()
        except Exception:
            pass


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def vhost(params):
    return params.virtual_host


@pytest.fixture
def username(params):
    return params.credentials.username


def unique(prefix="q"):
    return f"leveret-py-{prefix}-{uuid.uuid4().hex}"
