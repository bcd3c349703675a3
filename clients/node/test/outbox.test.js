// The outbox against a real RabbitMQ and a MongoDB (the nx-27017 stand-in in CI): set
// FANOUT_TEST_AMQP_URL, FANOUT_TEST_EXCHANGE and FANOUT_TEST_MONGODB_URL (and optionally
// FANOUT_TEST_MONGODB_DB). Each run uses a database of its own and drops it afterwards.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import net from "node:net";
import { after, before, describe, it } from "node:test";

import amqp from "amqplib";
import { MongoClient } from "mongodb";

import { EnvelopeInvalid, createOutbox, createPublisher } from "../src/index.js";

const url = process.env.FANOUT_TEST_AMQP_URL;
const exchange = process.env.FANOUT_TEST_EXCHANGE;
const mongoUrl = process.env.FANOUT_TEST_MONGODB_URL;
const skip =
  url && exchange && mongoUrl
    ? false
    : "set FANOUT_TEST_AMQP_URL, FANOUT_TEST_EXCHANGE and FANOUT_TEST_MONGODB_URL";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve once `check()` is truthy; reject after `timeoutMs`. */
async function until(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * A loopback TCP proxy to the broker: `cut()` resets its connections and refuses new ones
 * (as an outage looks to the client), `restore()` listens on the same port again.
 */
class TcpProxy {
  constructor(host, port) {
    this.target = { host, port };
    this.sockets = new Set();
    this.connections = 0;
    this.server = null;
    this.port = 0;
  }

  async start() {
    this.server = net.createServer((client) => {
      this.connections += 1;
      const upstream = net.connect(this.target);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => this.sockets.delete(socket));
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.port, "127.0.0.1", () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    this.port = this.server.address().port;
    return this;
  }

  async cut() {
    const server = this.server;
    this.server = null;
    const closed = new Promise((resolve) => server.close(resolve));
    for (const socket of this.sockets) socket.resetAndDestroy();
    await closed;
  }

  restore() {
    return this.start();
  }

  async close() {
    if (this.server) await this.cut();
  }
}

/** A status change of order `orderId`: routing key order.status_changed. */
function statusChange(orderId, status = "Processing") {
  return { orderId, customerId: "u-outbox", shopId: "s-outbox", status };
}

describe("the outbox against a real broker and MongoDB", { skip }, () => {
  let client;
  let db;
  let connection;
  let channel;
  let queue;
  const received = []; // envelope ids, in arrival order

  before(async () => {
    client = new MongoClient(mongoUrl, { serverSelectionTimeoutMS: 10_000 });
    await client.connect();
    db = client.db(
      process.env.FANOUT_TEST_MONGODB_DB ||
        `outbox_test_${randomUUID().replaceAll("-", "").slice(0, 12)}`,
    );
    connection = await amqp.connect(url);
    channel = await connection.createChannel();
    await channel.assertExchange(exchange, "topic", { durable: true });
    ({ queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true }));
    await channel.bindQueue(queue, exchange, "#");
    await channel.consume(queue, (message) => {
      if (message !== null) received.push(message.properties.messageId);
    }, { noAck: true });
  });

  after(async () => {
    await connection?.close();
    await db?.dropDatabase().catch(() => {});
    await client?.close();
  });

  /** The ids in `ids`, in the order they arrived (repeats included). */
  const arrivals = (ids) => {
    const wanted = new Set(ids);
    return received.filter((id) => wanted.has(id));
  };

  it("add validates like publish and writes nothing for an invalid envelope", async () => {
    const outbox = createOutbox({ db, collection: "invalid" });
    await assert.rejects(outbox.add("order.status_changed", { orderId: "o1" }), EnvelopeInvalid);
    await assert.rejects(outbox.add("no.such.type", {}), EnvelopeInvalid);
    assert.equal(await outbox.collection.countDocuments({}), 0);

    const envelope = await outbox.add("order.status_changed", statusChange("o1"), {
      correlationId: "req-1",
    });
    const entry = await outbox.collection.findOne({ _id: envelope.id });
    assert.deepEqual(entry.envelope, envelope);
    assert.equal(entry.sentAt, null);
    assert.ok(entry.createdAt instanceof Date);
    assert.equal(typeof entry.seq, "number");
  });

  it("add with a session commits with the business write and aborts with it", async () => {
    const outbox = createOutbox({ db, collection: "txn" });
    const orders = db.collection("orders");
    const session = client.startSession();
    try {
      let envelope;
      await session.withTransaction(async () => {
        await orders.insertOne({ _id: "o-commit", status: "Processing" }, { session });
        envelope = await outbox.add("order.status_changed", statusChange("o-commit"), {}, { session });
      });
      assert.ok(await orders.findOne({ _id: "o-commit" }));
      assert.ok(await outbox.collection.findOne({ _id: envelope.id }));

      const failure = new Error("the controller failed after both writes");
      let aborted;
      await assert.rejects(
        session.withTransaction(async () => {
          await orders.insertOne({ _id: "o-abort", status: "Processing" }, { session });
          aborted = await outbox.add("order.status_changed", statusChange("o-abort"), {}, { session });
          throw failure;
        }),
        failure,
      );
      assert.equal(await orders.findOne({ _id: "o-abort" }), null);
      assert.equal(await outbox.collection.findOne({ _id: aborted.id }), null);
      assert.equal(await outbox.collection.countDocuments({}), 1);
    } finally {
      await session.endSession();
    }
  });

  it("delivers 50 events in order, none lost, across a broker outage mid-way", async () => {
    const broker = new URL(url);
    const proxy = await new TcpProxy(broker.hostname, Number(broker.port || 5672)).start();
    const viaProxy = new URL(url);
    viaProxy.hostname = "127.0.0.1";
    viaProxy.port = String(proxy.port);
    const publisher = createPublisher({ url: viaProxy.toString(), exchange, confirmTimeoutMs: 2000 });
    const errors = [];
    let confirmed = 0;
    let restored;
    const outbox = createOutbox({
      db,
      collection: "outage",
      publisher,
      minBackoffMs: 50,
      maxBackoffMs: 400,
      onError: (error) => errors.push(error),
      onPublished: async () => {
        confirmed += 1;
        if (confirmed === 25) {
          await proxy.cut(); // RabbitMQ is gone after the 25th confirm
          restored = sleep(1500).then(() => proxy.restore());
        }
      },
    });
    try {
      const ids = [];
      for (let n = 0; n < 50; n += 1) {
        ids.push((await outbox.add("order.status_changed", statusChange(`o-out-${n}`))).id);
      }
      const running = outbox.start();
      await until(async () => (await outbox.pending()).length === 0, "the outbox to drain");
      await until(() => new Set(arrivals(ids)).size === 50, "50 deliveries");
      await outbox.stop();
      await running;

      assert.ok(restored, "the outage happened");
      await restored;
      assert.ok(errors.length > 0, "the relay felt the outage");
      assert.ok(proxy.connections >= 2, "the publisher reconnected");
      const got = arrivals(ids);
      assert.deepEqual([...new Set(got)], ids, "in order, none lost");
      assert.ok(got.length - 50 <= 1, `at most the entry in flight repeats: ${got.length}`);
      const sent = await outbox.collection.countDocuments({ sentAt: { $ne: null } });
      assert.equal(sent, 50);
    } finally {
      await outbox.stop();
      await publisher.close();
      await proxy.close();
    }
  });

  it("a relay that dies between publish and mark repeats only the unmarked entry", async () => {
    const publisher = createPublisher({ url, exchange });
    const ids = [];
    try {
      const crashing = createOutbox({
        db,
        collection: "crash",
        publisher,
        onPublished: async (entry) => {
          if (entry._id === ids[3]) throw new Error("the relay died before marking");
        },
      });
      for (let n = 0; n < 10; n += 1) {
        ids.push((await crashing.add("order.status_changed", statusChange(`o-crash-${n}`))).id);
      }
      await assert.rejects(crashing.start(), /the relay died before marking/);
      assert.equal(crashing.running, false);
      assert.deepEqual(
        (await crashing.pending()).map((entry) => entry._id),
        ids.slice(3),
        "the first three were marked; the fourth was published, not marked",
      );
      await until(() => arrivals(ids).length === 4, "the first four deliveries");

      const restarted = createOutbox({ db, collection: "crash", publisher });
      const running = restarted.start();
      await until(async () => (await restarted.pending()).length === 0, "the outbox to drain");
      await until(() => arrivals(ids).length === 11, "eleven deliveries");
      await restarted.stop();
      await running;
      await sleep(200); // nothing more arrives
      assert.deepEqual(arrivals(ids), [...ids.slice(0, 4), ...ids.slice(3)]);
    } finally {
      await publisher.close();
    }
  });
});
