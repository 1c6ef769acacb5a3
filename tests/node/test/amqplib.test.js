// Cross-client tests: amqplib (promise API) against an AMQP 0-9-1 broker.
//
// Written against RabbitMQ 3.10; Leveret must behave the same way. Run with
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F node --test tests/node/test/
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const amqp = require('amqplib');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2F';
const VHOST = decodeURIComponent(new URL(AMQP_URL).pathname.slice(1) || '%2F');
const TEST_TIMEOUT = 15_000;
const WAIT = 5_000;

// If anything (a socket, a timer) keeps the process alive past this, die
// loudly instead of hanging the caller. unref(): it never keeps us alive.
setTimeout(() => {
  const handles = process._getActiveHandles().map((h) => `${h.constructor.name}${h.remotePort ? `:${h.remotePort}` : ''}`);
  console.error(`amqplib suite watchdog: still running after 60 s (handles: ${handles.join(', ')}), exiting`);
  process.exit(1);
}, 60_000).unref();

const unique = (prefix = 'q') => `leveret-js-${prefix}-${crypto.randomUUID()}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(cond, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(5);
  }
}

// Rejects if `promise` does not settle within `ms`.
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Once the broker looks broken (a connect failed, a test timed out), the
// remaining tests fail at once instead of each waiting out its timeouts.
let broken = null;

// Defines a test with a hard time limit that trips the breaker above.
function amqpTest(name, fn) {
  test(name, { timeout: TEST_TIMEOUT + 5_000 }, async (t) => {
    if (broken) throw new Error(`not run: ${broken}`);
    const limit = `test "${name}"`;
    try {
      await within(fn(t), TEST_TIMEOUT, limit);
    } catch (err) {
      if (err.message.endsWith(limit)) broken = `an earlier test timed out (${name})`;
      throw err;
    }
  });
}

// A connection closed (or, if the broker does not answer, torn down) when the
// test ends.
async function connect(t, url = AMQP_URL) {
  if (broken) throw new Error(`not connecting: ${broken}`);
  let conn;
  try {
    conn = await within(amqp.connect(url, { timeout: WAIT }), WAIT + 1_000, 'connect');
  } catch (err) {
    broken = `cannot connect to ${AMQP_URL}: ${err.message}`;
    throw err;
  }
  conn.on('error', () => {});
  t.after(async () => {
    try {
      await within(conn.close(), 2_000, 'connection.close');
    } catch {
      // The broker did not answer connection.close (or it is already
      // closed): stop amqplib's heartbeat timers, which would keep this
      // process alive, and drop the socket.
      conn.connection.heartbeater?.clear();
    }
    // amqplib only half-closes the socket; don't let a broker that keeps its
    // end open keep this process alive either.
    conn.connection.stream.destroy();
  });
  return conn;
}

// A channel whose server-side errors are recorded (an 'error' event with no
// listener would crash the process).
async function channel(conn, confirm = false) {
  const ch = await within(confirm ? conn.createConfirmChannel() : conn.createChannel(), WAIT, 'open channel');
  ch.errors = [];
  ch.on('error', (err) => ch.errors.push(err));
  return ch;
}

async function tempQueue(ch, options = {}) {
  const ok = await ch.assertQueue(unique(), { exclusive: true, ...options });
  return ok.queue;
}

// Consume until `n` messages arrived; returns { consumerTag, msgs }.
async function collect(ch, queue, n, options = { noAck: true }) {
  const msgs = [];
  const { consumerTag } = await ch.consume(queue, (msg) => msgs.push(msg), options);
  await waitFor(() => msgs.length >= n, `${n} deliveries from ${queue}`);
  return { consumerTag, msgs };
}

// basic.get with noAck until the queue is empty; returns the bodies as strings.
async function drain(ch, queue) {
  const bodies = [];
  for (let i = 0; i < 1000; i++) {
    const msg = await ch.get(queue, { noAck: true });
    if (msg === false) return bodies;
    bodies.push(msg.content.toString());
  }
  throw new Error(`${queue} did not drain`);
}

amqpTest('connect, server properties and declares', async (t) => {
  const conn = await connect(t);
  const caps = conn.connection.serverProperties.capabilities;
  for (const cap of ['publisher_confirms', 'basic.nack', 'consumer_cancel_notify', 'per_consumer_qos']) {
    assert.equal(caps[cap], true, `capability ${cap}`);
  }
  const ch = await channel(conn);
  const name = unique();
  const ok = await ch.assertQueue(name, { durable: false, autoDelete: false });
  assert.deepEqual(ok, { queue: name, messageCount: 0, consumerCount: 0 });
  assert.equal((await ch.checkQueue(name)).queue, name);

  const gen = await ch.assertQueue('', { exclusive: true });
  assert.match(gen.queue, /^amq\.gen-/);

  const ex = unique('ex');
  assert.deepEqual(await ch.assertExchange(ex, 'direct', { autoDelete: false }), { exchange: ex });
  await ch.checkExchange(ex);
  await ch.bindQueue(name, ex, 'rk');
  ch.publish(ex, 'rk', Buffer.from('one'));
  ch.sendToQueue(name, Buffer.from('two'));
  assert.equal((await ch.purgeQueue(name)).messageCount, 2);
  ch.sendToQueue(name, Buffer.from('three'));
  await ch.unbindQueue(name, ex, 'rk');
  await ch.deleteExchange(ex);
  assert.equal((await ch.deleteQueue(name)).messageCount, 1);
  assert.deepEqual(ch.errors, []);
});

amqpTest('confirm channel publish + waitForConfirms', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn, true);
  const q = await tempQueue(ch);

  const acked = [];
  for (let i = 0; i < 50; i++) {
    ch.sendToQueue(q, Buffer.from(`m${i}`), {}, (err) => acked.push(err));
  }
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');
  assert.equal(acked.length, 50);
  assert.ok(acked.every((err) => err === null || err === undefined));
  assert.equal((await ch.checkQueue(q)).messageCount, 50);

  // Unroutable + mandatory: basic.return (312 NO_ROUTE), then the confirm.
  const returned = [];
  ch.on('return', (msg) => returned.push(msg));
  const nowhere = unique('nowhere');
  let confirmErr = 'not called';
  ch.publish('', nowhere, Buffer.from('come back'), { mandatory: true, messageId: 'r1' }, (err) => {
    confirmErr = err;
  });
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms (unroutable)');
  assert.equal(confirmErr, null, 'an unroutable message is still acked, not nacked');
  assert.equal(returned.length, 1);
  assert.equal(returned[0].fields.replyCode, 312);
  assert.equal(returned[0].fields.replyText, 'NO_ROUTE');
  assert.equal(returned[0].fields.routingKey, nowhere);
  assert.equal(returned[0].properties.messageId, 'r1');
  assert.equal(returned[0].content.toString(), 'come back');
  assert.deepEqual(ch.errors, []);
});

amqpTest('consume with manual ack', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  for (let i = 0; i < 3; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));

  const { consumerTag, msgs } = await collect(ch, q, 3, { noAck: false });
  assert.deepEqual(
    msgs.map((m) => m.content.toString()),
    ['m0', 'm1', 'm2'],
  );
  assert.deepEqual(
    msgs.map((m) => m.fields.deliveryTag),
    [1, 2, 3],
  );
  for (const m of msgs) {
    assert.equal(m.fields.consumerTag, consumerTag);
    assert.equal(m.fields.redelivered, false);
    assert.equal(m.fields.exchange, '');
    assert.equal(m.fields.routingKey, q);
  }
  ch.ack(msgs[0]);
  ch.ack(msgs[2], true); // multiple: acks m1 too
  await ch.cancel(consumerTag);
  assert.equal((await ch.checkQueue(q)).messageCount, 0);
  assert.deepEqual(ch.errors, []);
});

amqpTest('nack with requeue redelivers; reject without requeue drops', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  ch.sendToQueue(q, Buffer.from('again'));
  ch.sendToQueue(q, Buffer.from('drop'));

  const msgs = [];
  const { consumerTag } = await ch.consume(q, (m) => msgs.push(m), { noAck: false });
  await waitFor(() => msgs.length === 2, 'two deliveries');
  ch.nack(msgs[0], false, true);
  ch.reject(msgs[1], false);
  await waitFor(() => msgs.length === 3, 'redelivery');
  assert.equal(msgs[2].content.toString(), 'again');
  assert.equal(msgs[2].fields.redelivered, true);
  assert.equal(msgs[2].fields.deliveryTag, 3);
  ch.ack(msgs[2]);
  await sleep(200);
  assert.equal(msgs.length, 3, 'rejected message must not come back');
  await ch.cancel(consumerTag);

  // nackAll(requeue) on a channel with several outstanding gets.
  for (let i = 0; i < 3; i++) ch.sendToQueue(q, Buffer.from(`n${i}`));
  const got = [];
  for (let i = 0; i < 3; i++) {
    const m = await ch.get(q, { noAck: false });
    assert.notEqual(m, false);
    got.push(m);
  }
  ch.nackAll(true);
  const again = [];
  for (let i = 0; i < 3; i++) {
    const m = await ch.get(q, { noAck: true });
    assert.notEqual(m, false);
    assert.equal(m.fields.redelivered, true);
    again.push(m.content.toString());
  }
  assert.deepEqual(again, ['n0', 'n1', 'n2']);
  assert.deepEqual(ch.errors, []);
});

amqpTest('prefetch limits unacked deliveries', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  for (let i = 0; i < 5; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
  await ch.prefetch(2);

  const msgs = [];
  await ch.consume(q, (m) => msgs.push(m), { noAck: false });
  await waitFor(() => msgs.length === 2, 'first two deliveries');
  await sleep(300);
  assert.equal(msgs.length, 2, 'broker exceeded prefetch 2');
  ch.ack(msgs[0]);
  await waitFor(() => msgs.length === 3, 'third delivery');
  await sleep(200);
  assert.equal(msgs.length, 3, 'one ack frees exactly one slot');
  ch.ack(msgs[2], true);
  await waitFor(() => msgs.length === 5, 'last deliveries');
  assert.deepEqual(
    msgs.map((m) => m.content.toString()),
    ['m0', 'm1', 'm2', 'm3', 'm4'],
  );
  ch.ackAll();
  assert.deepEqual(ch.errors, []);
});

amqpTest('properties and headers of mixed types round-trip', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  const user = decodeURIComponent(new URL(AMQP_URL).username || 'guest');

  const dec = (places, digits) => ({ '!': 'decimal', value: { places, digits } });
  const headers = {
    string: 'héllo wörld ✓',
    empty: '',
    byte: 7, // 'b'
    short: -1000, // 's'
    int: 100000, // 'I'
    long: 2 ** 40, // 'l'
    negLong: -(2 ** 40),
    double: Math.PI, // 'd'
    float: { '!': 'float', value: 1.5 }, // 'f'
    uint8: { '!': 'uint8', value: 200 }, // 'B'
    uint16: { '!': 'uint16', value: 60000 }, // 'u'
    uint32: { '!': 'uint32', value: 4000000000 }, // 'i'
    int64: { '!': 'int64', value: 5 }, // 'l' for a small value
    yes: true,
    no: false,
    bytes: Buffer.from([0, 1, 0xfe, 0xff]), // 'x'
    decimal: dec(2, 314),
    timestamp: { '!': 'timestamp', value: 1700000000 },
    void: null,
    list: [1, 'two', true, [3, 4], { k: 'v' }, null, 2.5, Buffer.from('b')],
    emptyList: [],
    nested: { a: { b: { c: 1, d: 'deep' } }, l: [Buffer.from('raw'), dec(1, 5)], empty: {} },
  };
  const expected = {
    ...headers,
    float: 1.5,
    uint8: 200,
    uint16: 60000,
    uint32: 4000000000,
    int64: 5,
  };
  const props = {
    contentType: 'application/json',
    contentEncoding: 'utf-8',
    headers,
    deliveryMode: 2,
    priority: 5,
    correlationId: crypto.randomUUID(),
    replyTo: 'reply-queue',
    expiration: '60000',
    messageId: crypto.randomUUID(),
    timestamp: 1700000000,
    type: 'test.type',
    userId: user,
    appId: 'leveret-tests',
  };
  const body = Buffer.from('{"hello":"world"}');
  ch.sendToQueue(q, body, props);

  const {
    consumerTag,
    msgs: [msg],
  } = await collect(ch, q, 1);
  await ch.cancel(consumerTag);
  assert.ok(msg.content.equals(body));
  const { headers: gotHeaders, ...gotProps } = msg.properties;
  assert.deepStrictEqual(gotHeaders, expected);
  for (const [key, value] of Object.entries(props)) {
    if (key !== 'headers') assert.deepStrictEqual(gotProps[key], value, key);
  }
  assert.equal(gotProps.clusterId, undefined);

  // And through basic.get.
  ch.sendToQueue(q, body, { headers });
  const got = await ch.get(q, { noAck: true });
  assert.deepStrictEqual(got.properties.headers, expected);
  assert.deepEqual(ch.errors, []);
});

amqpTest('topic and fanout routing', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn, true);

  const topic = unique('topic');
  await ch.assertExchange(topic, 'topic', { autoDelete: true });
  const patterns = { star: 'a.*', hash: 'a.#', all: '#', middle: '*.b.*', exact: 'a.b.c' };
  const queues = {};
  for (const [key, pattern] of Object.entries(patterns)) {
    queues[key] = await tempQueue(ch);
    await ch.bindQueue(queues[key], topic, pattern);
  }
  const keys = ['a', 'a.b', 'a.b.c', 'x.b.y', 'a.x', 'b', ''];
  for (const rk of keys) ch.publish(topic, rk, Buffer.from(rk));
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');
  const expected = {
    star: ['a.b', 'a.x'],
    hash: ['a', 'a.b', 'a.b.c', 'a.x'],
    all: keys,
    middle: ['a.b.c', 'x.b.y'],
    exact: ['a.b.c'],
  };
  for (const [key, q] of Object.entries(queues)) {
    assert.deepEqual(await drain(ch, q), expected[key], `pattern ${patterns[key]}`);
  }

  const fanout = unique('fanout');
  await ch.assertExchange(fanout, 'fanout', { autoDelete: true });
  const fq = [await tempQueue(ch), await tempQueue(ch), await tempQueue(ch)];
  for (const q of fq) await ch.bindQueue(q, fanout, `ignored-${q}`);
  ch.publish(fanout, 'any-key', Buffer.from('f1'));
  ch.publish(fanout, '', Buffer.from('f2'));
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');
  for (const q of fq) assert.deepEqual(await drain(ch, q), ['f1', 'f2']);
  assert.deepEqual(ch.errors, []);
});

amqpTest('checkQueue of a missing queue fails with 404', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const closed = new Promise((resolve) => ch.once('close', resolve));
  const name = unique('missing');
  const text = `NOT_FOUND - no queue '${name}' in vhost '${VHOST}'`;
  await assert.rejects(ch.checkQueue(name), (err) => {
    assert.equal(err.code, 404);
    assert.equal(err.classId, 50); // queue
    assert.equal(err.methodId, 10); // declare
    assert.ok(err.message.includes(`404 (NOT-FOUND) with message "${text}"`), err.message);
    return true;
  });
  await within(closed, WAIT, 'channel close');
  assert.equal(ch.errors.length, 1);
  assert.equal(ch.errors[0].code, 404);

  // Channel error only: the connection still works.
  const ch2 = await channel(conn);
  const missingEx = unique('missing-ex');
  await assert.rejects(ch2.checkExchange(missingEx), (err) => {
    assert.equal(err.code, 404);
    assert.ok(err.message.includes(`NOT_FOUND - no exchange '${missingEx}' in vhost '${VHOST}'`), err.message);
    return true;
  });
  const ch3 = await channel(conn);
  await tempQueue(ch3);
});

amqpTest('redeclaring an exchange with another type fails with 406', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const ex = unique('ex');
  await ch.assertExchange(ex, 'direct', { autoDelete: false });
  await assert.rejects(ch.assertExchange(ex, 'fanout', { autoDelete: false }), (err) => {
    assert.equal(err.code, 406);
    assert.ok(
      err.message.includes(
        `PRECONDITION_FAILED - inequivalent arg 'type' for exchange '${ex}' in vhost '${VHOST}': received 'fanout' but current is 'direct'`,
      ),
      err.message,
    );
    return true;
  });
  const ch2 = await channel(conn);
  await ch2.deleteExchange(ex);
});

amqpTest('basic.get', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  assert.equal(await ch.get(q), false);

  ch.sendToQueue(q, Buffer.from('g0'), { messageId: 'id0' });
  ch.sendToQueue(q, Buffer.from('g1'));
  const first = await ch.get(q, { noAck: false });
  assert.equal(first.content.toString(), 'g0');
  assert.equal(first.properties.messageId, 'id0');
  assert.equal(first.fields.messageCount, 1);
  assert.equal(first.fields.redelivered, false);
  assert.equal(first.fields.exchange, '');
  assert.equal(first.fields.routingKey, q);
  ch.reject(first, true);

  const again = await ch.get(q, { noAck: false });
  assert.equal(again.content.toString(), 'g0');
  assert.equal(again.fields.redelivered, true);
  ch.ack(again);

  const second = await ch.get(q, { noAck: true });
  assert.equal(second.content.toString(), 'g1');
  assert.equal(second.fields.messageCount, 0);
  assert.equal(await ch.get(q), false);
  assert.deepEqual(ch.errors, []);
});

amqpTest('1 MiB body', async (t) => {
  const conn = await connect(t);
  const ch = await channel(conn, true);
  const q = await tempQueue(ch);
  const body = crypto.randomBytes(1024 * 1024);
  ch.sendToQueue(q, body, { messageId: 'big' });
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');

  const {
    consumerTag,
    msgs: [msg],
  } = await collect(ch, q, 1);
  await ch.cancel(consumerTag);
  assert.equal(msg.properties.messageId, 'big');
  assert.equal(msg.content.length, body.length);
  assert.ok(msg.content.equals(body));

  ch.sendToQueue(q, body);
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');
  const got = await ch.get(q, { noAck: true });
  assert.ok(got.content.equals(body));
  assert.deepEqual(ch.errors, []);
});

amqpTest('heartbeat negotiated from the URL; idle connection stays open', async (t) => {
  const url = new URL(AMQP_URL);
  url.searchParams.set('heartbeat', '2');
  const conn = await connect(t, url.toString());
  assert.equal(conn.connection.heartbeat, 2);
  let closed = false;
  conn.on('close', () => {
    closed = true;
  });
  await sleep(5000);
  assert.equal(closed, false);
  const ch = await channel(conn);
  const q = await tempQueue(ch);
  ch.sendToQueue(q, Buffer.from('alive'));
  const msg = await waitGet(ch, q);
  assert.equal(msg.content.toString(), 'alive');
});

async function waitGet(ch, q) {
  let msg = false;
  const deadline = Date.now() + WAIT;
  while (msg === false && Date.now() < deadline) {
    msg = await ch.get(q, { noAck: true });
  }
  assert.notEqual(msg, false, `no message on ${q}`);
  return msg;
}
