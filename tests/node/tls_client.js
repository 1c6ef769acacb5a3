// amqplib over AMQPS, run by tests/tls.rs (outside test/, so the
// cross-client suite does not pick it up: it needs a TLS broker and the
// certificates the Rust test makes).
//
//   node tls_client.js PORT CA [CERT KEY] [external]
//
// Connects to amqps://localhost:PORT trusting CA (with a client certificate
// if given), as guest/guest or with SASL EXTERNAL, publishes to an exclusive
// queue and gets the message back. Prints "ok", or "error: ..." and exits 1.
'use strict';

const fs = require('fs');
const amqp = require('amqplib');

async function main() {
  const [port, ca, cert, key, mode] = process.argv.slice(2);
  const external = mode === 'external';
  const opts = { ca: [fs.readFileSync(ca)], servername: 'localhost', timeout: 5000 };
  if (cert) {
    opts.cert = fs.readFileSync(cert);
    opts.key = fs.readFileSync(key);
  }
  if (external) opts.credentials = amqp.credentials.external();
  const url = external
    ? `amqps://localhost:${port}/%2F`
    : `amqps://guest:guest@localhost:${port}/%2F`;
  const conn = await amqp.connect(url, opts);
  const ch = await conn.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  ch.sendToQueue(queue, Buffer.from('amqplib over tls'));
  let msg = false;
  for (let i = 0; i < 50 && !msg; i++) {
    msg = await ch.get(queue, { noAck: true });
    if (!msg) await new Promise((r) => setTimeout(r, 100));
  }
  await conn.close();
  if (!msg || msg.content.toString() !== 'amqplib over tls') {
    throw new Error(`got ${msg && msg.content}`);
  }
  console.log('ok');
}

const timer = setTimeout(() => {
  console.log('error: timed out after 20 s');
  process.exit(1);
}, 20000);
main().then(
  () => clearTimeout(timer),
  (e) => {
    console.log(`error: ${e.message}`);
    process.exit(1);
  },
);
