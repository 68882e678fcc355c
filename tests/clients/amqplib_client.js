// A real Node.js client (amqplib) for setgate's end-to-end tests.
//
// Usage: node amqplib_client.js AMQP_URI QUEUE COUNT
// Connects (through setgate), publishes COUNT persistent messages on a confirm channel, consumes
// and acks them, and prints one JSON line with what it saw. Exits non-zero on any failure.
const amqp = require("amqplib");

async function main() {
  const [uri, queue, countText] = process.argv.slice(2);
  const count = Number(countText);
  const conn = await amqp.connect(uri);
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue(queue, { durable: true });
  for (let i = 0; i < count; i++) {
    ch.sendToQueue(queue, Buffer.from(`amqplib-${i}`), { persistent: true });
  }
  await ch.waitForConfirms(); // rejects if any publish was nacked
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${count} consumed`)), 10000);
    ch.consume(queue, (msg) => {
      got.push(msg.content.toString());
      ch.ack(msg);
      if (got.length === count) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const expected = Array.from({ length: count }, (_, i) => `amqplib-${i}`);
  const inOrder = JSON.stringify(got) === JSON.stringify(expected);
  await ch.close();
  await conn.close();
  console.log(JSON.stringify({ client: "amqplib", published: count, consumed: got.length, in_order: inOrder }));
  process.exit(inOrder ? 0 : 1);
}

main().catch((err) => {
  console.error(`amqplib client failed: ${err.stack || err}`);
  process.exit(1);
});
