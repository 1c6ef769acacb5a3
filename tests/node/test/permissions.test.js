// Cross-client tests: users, vhosts and permissions as amqplib sees them.
//
// Each test gets a fresh vhost and user, made through the management HTTP API
// at LEVERET_TEST_MGMT_URL (e.g. http://127.0.0.1:15672) as the AMQP_URL user, which
// must be an administrator (guest/guest). The user may configure, write and
// read only names starting with "app.". Without LEVERET_TEST_MGMT_URL these tests
// are skipped.
//
// Written against RabbitMQ 3.10; Leveret must behave the same way. Run with
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F \
//   LEVERET_TEST_MGMT_URL=http://127.0.0.1:15672 node --test tests/node/test/
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const path = require('node:path');
const amqp = require('amqplib');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2F';
const MGMT_URL = (process.env.LEVERET_TEST_MGMT_URL || '').replace(/\/+$/, '');
const SKIP = MGMT_URL ? false : 'LEVERET_TEST_MGMT_URL not set (no management API to make users with)';
const TEST_TIMEOUT = 15_000;
const WAIT = 5_000;
const PATTERN = '^app\\.';
const PASSWORD = 's3cret-pw';

// Never hang the caller (see amqplib.test.js); unref(): never keeps us alive.
setTimeout(() => {
  console.error('permissions suite watchdog: still running after 60 s, exiting');
  process.exit(1);
}, 60_000).unref();

// Rejects if `promise` does not settle within `ms`.
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------- management API

const admin = (() => {
  const u = new URL(AMQP_URL);
  return { user: decodeURIComponent(u.username || 'guest'), password: decodeURIComponent(u.password || 'guest') };
})();

const seg = (name) => encodeURIComponent(name);

// One request as the AMQP_URL user; resolves { status, json }. No keep-alive
// (agent: false), so no socket outlives the request.
function api(method, p, body, expect = [200, 201, 204]) {
  return within(
    new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers = { authorization: `Basic ${Buffer.from(`${admin.user}:${admin.password}`).toString('base64')}` };
      if (data) Object.assign(headers, { 'content-type': 'application/json', 'content-length': data.length });
      const req = http.request(new URL(MGMT_URL + p), { method, headers, agent: false }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (expect && !expect.includes(res.statusCode)) {
            reject(new Error(`${method} ${p} -> ${res.statusCode}: ${text.slice(0, 500)}`));
          } else {
            resolve({ status: res.statusCode, json: text.trim() ? JSON.parse(text) : null });
          }
        });
      });
      req.on('error', reject);
      req.end(data);
    }),
    WAIT,
    `${method} ${p}`,
  );
}

// A fresh vhost (the user may use "app.*" there), a vhost the user has no
// permissions on, and the user; all deleted when the test ends.
async function setup(t) {
  const tag = crypto.randomUUID().slice(0, 12);
  const s = {
    vhost: `leveret-js-perm-${tag}`,
    bareVhost: `leveret-js-bare-${tag}`,
    user: `leveret-js-user-${tag}`,
    password: PASSWORD,
  };
  t.after(async () => {
    // Deleting the vhosts and the user closes any connection left over.
    for (const p of [`/api/vhosts/${seg(s.vhost)}`, `/api/vhosts/${seg(s.bareVhost)}`, `/api/users/${seg(s.user)}`]) {
      await api('DELETE', p, undefined, null).catch(() => {});
    }
  });
  await api('PUT', `/api/vhosts/${seg(s.vhost)}`, {});
  await api('PUT', `/api/vhosts/${seg(s.bareVhost)}`, {});
  await api('PUT', `/api/users/${seg(s.user)}`, { password: s.password, tags: '' });
  await api('PUT', `/api/permissions/${seg(s.vhost)}/${seg(s.user)}`, {
    configure: PATTERN,
    write: PATTERN,
    read: PATTERN,
  });
  return s;
}

function userUrl(s, { vhost = s.vhost, user = s.user, password = s.password } = {}) {
  const u = new URL(AMQP_URL);
  return `amqp://${seg(user)}:${seg(password)}@${u.host}/${seg(vhost)}`;
}

async function connect(t, url) {
  const conn = await within(amqp.connect(url, { timeout: WAIT }), WAIT + 1_000, 'connect');
  conn.on('error', () => {});
  t.after(async () => {
    try {
      await within(conn.close(), 2_000, 'connection.close');
    } catch {
      conn.connection.heartbeater?.clear();
    }
    conn.connection.stream.destroy();
  });
  return conn;
}

// A channel whose server-side errors are recorded.
async function channel(conn, confirm = false) {
  const ch = await within(confirm ? conn.createConfirmChannel() : conn.createChannel(), WAIT, 'open channel');
  ch.errors = [];
  ch.closed = new Promise((resolve) => ch.once('close', resolve));
  ch.on('error', (err) => ch.errors.push(err));
  return ch;
}

const refused = (kind, name, s) =>
  `ACCESS_REFUSED - access to ${kind} '${name}' in vhost '${s.vhost}' refused for user '${s.user}'`;

// The channel was closed by the broker with 403 and exactly `text`.
async function assertClosedWith403(ch, text) {
  await within(ch.closed, WAIT, 'channel close');
  assert.equal(ch.errors.length, 1, `channel errors: ${ch.errors.map((e) => e.message)}`);
  assert.equal(ch.errors[0].code, 403);
  assert.equal(
    ch.errors[0].message,
    `Channel closed by server: 403 (ACCESS-REFUSED) with message "${text}"`,
  );
}

function permTest(name, fn) {
  test(name, { skip: SKIP, timeout: TEST_TIMEOUT + 5_000 }, (t) => within(fn(t), TEST_TIMEOUT, `test "${name}"`));
}

// ---------------------------------------------------------------- tests

permTest('declare: allowed by configure, refused with 403 otherwise', async (t) => {
  const s = await setup(t);
  const conn = await connect(t, userUrl(s));
  const ch = await channel(conn);
  assert.deepEqual(await ch.assertQueue('app.q'), { queue: 'app.q', messageCount: 0, consumerCount: 0 });

  const text = refused('queue', 'other.q', s);
  await assert.rejects(ch.assertQueue('other.q'), (err) => {
    assert.equal(err.code, 403);
    assert.equal(err.classId, 50); // queue
    assert.equal(err.methodId, 10); // declare
    assert.ok(err.message.includes(`403 (ACCESS-REFUSED) with message "${text}"`), err.message);
    return true;
  });
  await assertClosedWith403(ch, text);

  // A channel error only: the connection still works.
  const ch2 = await channel(conn);
  await ch2.assertExchange('app.x', 'fanout');
  await assert.rejects(ch2.assertExchange('other.x', 'fanout'), (err) => err.code === 403);
  await assertClosedWith403(ch2, refused('exchange', 'other.x', s));

  await api('GET', `/api/queues/${seg(s.vhost)}/app.q`, undefined, [200]);
  await api('GET', `/api/queues/${seg(s.vhost)}/other.q`, undefined, [404]);
});

permTest('publish: needs write on the exchange (amq.default for the default one)', async (t) => {
  const s = await setup(t);
  const conn = await connect(t, userUrl(s));
  const ch = await channel(conn, true);
  await ch.assertQueue('app.q');
  await ch.assertExchange('app.x', 'fanout');
  await ch.bindQueue('app.q', 'app.x', '');
  ch.publish('app.x', '', Buffer.from('hello'));
  await within(ch.waitForConfirms(), WAIT, 'waitForConfirms');
  const msg = await ch.get('app.q', { noAck: true });
  assert.ok(msg, 'expected the message published to app.x');
  assert.equal(msg.content.toString(), 'hello');

  const acked = new Promise((resolve) => ch.publish('', 'app.q', Buffer.from('refused'), {}, (err) => resolve(err)));
  const err = await within(acked, WAIT, 'publish callback');
  assert.ok(err, 'publishing to the default exchange should not be confirmed');
  await assertClosedWith403(ch, refused('exchange', 'amq.default', s));

  const ch2 = await channel(conn);
  assert.equal((await ch2.checkQueue('app.q')).messageCount, 0);
});

permTest('get: needs read on the queue, checked before it is looked up', async (t) => {
  const s = await setup(t);
  const conn = await connect(t, userUrl(s));
  const ch = await channel(conn);
  await ch.assertQueue('app.q');
  assert.equal(await ch.get('app.q', { noAck: true }), false);
  await assert.rejects(ch.get('other.missing', { noAck: true }), (err) => err.code === 403);
  await assertClosedWith403(ch, refused('queue', 'other.missing', s));
});

// amqplib reports a connection.close in reply to connection.open only as
// "Expected ConnectionOpenOk; got <ConnectionClose channel:0>", without its
// code or text. To check those, record the frames amqplib reads during the
// handshake (Connection#step). The module is loaded by file, past amqplib's
// "exports" map; it is the same module instance amqplib itself uses.
const { Connection } = require(path.join(path.dirname(require.resolve('amqplib')), 'lib', 'connection.js'));

async function connectRefused(url) {
  const frames = [];
  const step = Connection.prototype.step;
  Connection.prototype.step = function (cb) {
    return step.call(this, (err, frame) => {
      if (frame) frames.push(frame);
      cb(err, frame);
    });
  };
  try {
    const err = await within(
      amqp.connect(url, { timeout: WAIT }).then(
        async (conn) => {
          await conn.close();
          throw new Error(`connected to ${url}; expected a refusal`);
        },
        (e) => e,
      ),
      WAIT + 1_000,
      'refused connect',
    );
    const close = frames.find((f) => f.fields && 'replyCode' in f.fields);
    return { err, close: close && close.fields };
  } finally {
    Connection.prototype.step = step;
  }
}

permTest('connect: a vhost without permissions is 530', async (t) => {
  const s = await setup(t);
  const expectations = [
    [s.bareVhost, `NOT_ALLOWED - access to vhost '${s.bareVhost}' refused for user '${s.user}'`],
    [`${s.vhost}-missing`, `NOT_ALLOWED - vhost ${s.vhost}-missing not found`],
  ];
  for (const [vhost, text] of expectations) {
    const { err, close } = await connectRefused(userUrl(s, { vhost }));
    assert.equal(err.message, 'Expected ConnectionOpenOk; got <ConnectionClose channel:0>');
    assert.ok(close, `no connection.close frame seen (${err.message})`);
    assert.equal(close.replyCode, 530);
    assert.equal(close.replyText, text);
    assert.equal(close.classId, 10); // connection
    assert.equal(close.methodId, 40); // open
  }
  // The vhost with permissions works.
  const conn = await connect(t, userUrl(s));
  await channel(conn);
});

permTest('connect: bad credentials are 403', async (t) => {
  const s = await setup(t);
  const text =
    'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.';
  for (const url of [userUrl(s, { password: `wrong-${PASSWORD}` }), userUrl(s, { user: `${s.user}-nobody` })]) {
    const { err, close } = await connectRefused(url);
    // amqplib advertises authentication_failure_close, so the broker answers
    // with connection.close rather than dropping the socket.
    assert.equal(err.message, `Handshake terminated by server: 403 (ACCESS-REFUSED) with message "${text}"`);
    assert.equal(close.replyCode, 403);
    assert.equal(close.replyText, text);
  }
});
