// createPublisher against a fake amqplib: what it sends, when it connects, how it fails.

import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { describe, it } from "node:test";

import { EnvelopeInvalid, PublishFailed, createPublisher, laneOf } from "../src/index.js";

/** A stand-in for amqplib's connect/ConfirmChannel that records calls. */
function fakeAmqp({ onPublish = (_msg, confirm) => confirm(null) } = {}) {
  const calls = { connect: 0, assertExchange: [], published: [], closed: 0 };
  const channel = new EventEmitter();
  channel.assertExchange = async (...args) => {
    calls.assertExchange.push(args);
    return { exchange: args[0] };
  };
  channel.publish = (exchange, routingKey, content, options, confirm) => {
    const message = { exchange, routingKey, content, options };
    calls.published.push(message);
    queueMicrotask(() => onPublish(message, confirm, channel));
    return true;
  };
  channel.waitForConfirms = async () => {};
  const connection = new EventEmitter();
  connection.createConfirmChannel = async () => channel;
  connection.close = async () => {
    calls.closed += 1;
  };
  async function connect(url) {
    calls.connect += 1;
    calls.url = url;
    return connection;
  }
  return { calls, channel, connection, connect };
}

const URL_ = "amqp://guest:guest@127.0.0.1:1/";

describe("createPublisher", () => {
  it("requires a url", () => {
    assert.throws(() => createPublisher({}), /url/);
  });

  it("refuses invalid envelopes and unknown types before connecting", async () => {
    const fake = fakeAmqp();
    const publisher = createPublisher({ url: URL_, connect: fake.connect });
    await assert.rejects(publisher.publish("order.created", { orderId: "o1" }), EnvelopeInvalid);
    await assert.rejects(
      publisher.publish("user.registered", { userId: "u1" }, { id: "a,b" }),
      /\/id must match pattern/,
    );
    await assert.rejects(publisher.publish("nope.never", {}), /unknown event type/);
    assert.equal(fake.calls.connect, 0);
    assert.equal(fake.calls.published.length, 0);
    await publisher.close();
  });

  it("publishes persistent JSON with message_id = id to the exchange, routed by type", async () => {
    const fake = fakeAmqp();
    const publisher = createPublisher({
      url: URL_,
      exchange: "shop.events",
      source: "backend",
      connect: fake.connect,
    });
    const envelope = await publisher.publish(
      "user.registered",
      { userId: "u1" },
      { socketId: "1.2", correlationId: "req-1" },
    );
    assert.equal(fake.calls.url, URL_);
    assert.deepEqual(fake.calls.assertExchange, [["shop.events", "topic", { durable: true }]]);
    assert.equal(fake.calls.published.length, 1);
    const [sent] = fake.calls.published;
    assert.equal(sent.exchange, "shop.events");
    assert.equal(sent.routingKey, "user.registered");
    assert.equal(sent.options.persistent, true);
    assert.equal(sent.options.contentType, "application/json");
    assert.equal(sent.options.messageId, envelope.id);
    assert.equal(sent.options.mandatory, true);
    assert.equal(sent.options.appId, "backend");
    assert.deepEqual(JSON.parse(sent.content.toString("utf8")), envelope);
    assert.equal(envelope.source, "backend");
    assert.equal(envelope.socketId, "1.2");
    assert.equal(envelope.correlationId, "req-1");
    await publisher.close();
    assert.equal(fake.calls.closed, 1);
  });

  it("sets the fanout-lane header to the conversation or the order, and nothing else", async () => {
    const fake = fakeAmqp();
    const publisher = createPublisher({ url: URL_, connect: fake.connect });
    await publisher.publish("typing.started", { conversationId: "c9", userId: "u1", userType: "user" });
    await publisher.publish("order.status_changed", {
      orderId: "o7",
      customerId: "u1",
      shopId: "s1",
      status: "Shipping",
    });
    await publisher.publish("payment.received", {
      orderId: "o7",
      paymentId: "pay1",
      customerId: "u1",
      shopIds: ["s1"],
      amount: 10,
    });
    await publisher.publish("user.registered", { userId: "u1" });
    const [chat, status, payment, other] = fake.calls.published;
    assert.deepEqual(chat.options.headers, { "fanout-lane": "c9" });
    assert.deepEqual(status.options.headers, { "fanout-lane": "o7" });
    assert.deepEqual(payment.options.headers, { "fanout-lane": "o7" });
    assert.equal(other.options.headers, undefined);
    await publisher.close();
  });

  it("connects once for many publishes and again after the connection closes", async () => {
    const fake = fakeAmqp();
    const publisher = createPublisher({ url: URL_, connect: fake.connect });
    await Promise.all(
      Array.from({ length: 5 }, (_, i) => publisher.publish("user.registered", { userId: `u${i}` })),
    );
    assert.equal(fake.calls.connect, 1);
    fake.connection.emit("close", new Error("connection lost"));
    await publisher.publish("user.registered", { userId: "u9" });
    assert.equal(fake.calls.connect, 2);
    await publisher.close();
  });

  it("resolves only after the broker confirms", async () => {
    let confirm;
    const fake = fakeAmqp({ onPublish: (_msg, cb) => (confirm = cb) });
    const publisher = createPublisher({ url: URL_, connect: fake.connect });
    let settled = false;
    const pending = publisher.publish("user.registered", { userId: "u1" }).then((e) => {
      settled = true;
      return e;
    });
    while (confirm === undefined) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(settled, false);
    confirm(null);
    const envelope = await pending;
    assert.equal(envelope.type, "user.registered");
    await publisher.close();
  });

  it("rejects with PublishFailed when the broker nacks, returns, never confirms or closes", async () => {
    const cases = [
      ["nacked", (_m, cb) => cb(new Error("message nacked"))],
      [
        "unroutable",
        (m, cb, channel) => {
          channel.emit("return", { properties: { messageId: m.options.messageId } });
          cb(null);
        },
      ],
      ["timeout", () => {}],
      ["closed", (_m, cb) => cb(new Error("channel closed"))],
    ];
    for (const [reason, onPublish] of cases) {
      const fake = fakeAmqp({ onPublish });
      const publisher = createPublisher({ url: URL_, connect: fake.connect, confirmTimeoutMs: 50 });
      await assert.rejects(publisher.publish("user.registered", { userId: "u1" }), (error) => {
        assert.ok(error instanceof PublishFailed, `${reason}: ${error}`);
        assert.equal(error.reason, reason);
        assert.equal(error.envelope.data.userId, "u1");
        return true;
      });
      await publisher.close();
    }
  });

  it("retries the connection on the next publish after a failed connect", async () => {
    const fake = fakeAmqp();
    let attempts = 0;
    const flaky = async (url) => {
      attempts += 1;
      if (attempts === 1) throw new Error("ECONNREFUSED");
      return fake.connect(url);
    };
    const publisher = createPublisher({ url: URL_, connect: flaky });
    await assert.rejects(publisher.publish("user.registered", { userId: "u1" }), /ECONNREFUSED/);
    await publisher.publish("user.registered", { userId: "u1" });
    assert.equal(attempts, 2);
    await publisher.close();
  });

  it("refuses to publish after close", async () => {
    const fake = fakeAmqp();
    const publisher = createPublisher({ url: URL_, connect: fake.connect });
    await publisher.close();
    await publisher.close();
    await assert.rejects(publisher.publish("user.registered", { userId: "u1" }), /closed/);
    assert.equal(fake.calls.connect, 0);
  });
});

describe("laneOf", () => {
  it("reads the lane as the worker does: conversation, order, or none", () => {
    const cases = [
      [{ type: "message.created", data: { conversationId: "c1", orderId: "o1" } }, "c1"],
      [{ type: "typing.stopped", data: { conversationId: "c2" } }, "c2"],
      [{ type: "order.created", data: { orderId: "o1", conversationId: "c1" } }, "o1"],
      [{ type: "order.status_changed", data: { orderId: "o2" } }, "o2"],
      [{ type: "payment.received", data: { orderId: "o3" } }, "o3"],
      [{ type: "user.registered", data: { userId: "u1", orderId: "o1" } }, undefined],
      [{ type: "order.created", data: { orderId: "" } }, undefined],
      [{ type: "order.created", data: { orderId: 7 } }, undefined],
      [{ type: "order.created", data: null }, undefined],
      [{ type: 3, data: { orderId: "o1" } }, undefined],
      [null, undefined],
    ];
    for (const [envelope, lane] of cases) {
      assert.equal(laneOf(envelope), lane, JSON.stringify(envelope));
    }
  });
});
