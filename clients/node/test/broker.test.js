// Against a real RabbitMQ: set FANOUT_TEST_AMQP_URL and FANOUT_TEST_EXCHANGE (a scratch
// exchange; every test event published here also reaches whatever else is bound to it).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import amqp from "amqplib";

import { PublishFailed, createPublisher } from "../src/index.js";

const url = process.env.FANOUT_TEST_AMQP_URL;
const exchange = process.env.FANOUT_TEST_EXCHANGE;
const skip = url && exchange ? false : "set FANOUT_TEST_AMQP_URL and FANOUT_TEST_EXCHANGE";

/** The first message on `queue` for which `match` holds, or a rejection after `timeoutMs`. */
function nextMessage(channel, queue, match, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`no matching message on ${queue} within ${timeoutMs} ms`));
    }, timeoutMs);
    channel
      .consume(
        queue,
        (message) => {
          if (message === null || !match(message)) return;
          clearTimeout(timer);
          // The delivery can arrive before consume()'s promise resolves: take the tag from it.
          channel.cancel(message.fields.consumerTag).then(() => resolve(message), reject);
        },
        { noAck: true },
      )
      .catch(reject);
  });
}

describe("publishing to a real broker", { skip }, () => {
  let connection;
  let channel;
  let publisher;

  before(async () => {
    publisher = createPublisher({ url, exchange, source: "node-test" });
    connection = await amqp.connect(url);
    channel = await connection.createChannel();
  });

  after(async () => {
    await publisher?.close();
    await connection?.close();
  });

  it("delivers a persistent JSON message with message_id = id, routed by type", async () => {
    // The same declaration as the publisher's (and the worker's), so the queue can be bound first.
    await channel.assertExchange(exchange, "topic", { durable: true });
    const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, "order.*");

    const data = {
      orderId: "o1",
      customerId: "c1",
      items: [{ productId: "p1", shopId: "s1", quantity: 1, price: 10 }],
      totalPrice: 10,
    };
    const envelope = await publisher.publish("order.created", data, { correlationId: "req-7" });
    const message = await nextMessage(channel, queue, (m) => m.properties.messageId === envelope.id);

    assert.equal(message.fields.exchange, exchange);
    assert.equal(message.fields.routingKey, "order.created");
    assert.equal(message.properties.deliveryMode, 2);
    assert.equal(message.properties.contentType, "application/json");
    assert.equal(message.properties.messageId, envelope.id);
    assert.equal(message.properties.appId, "node-test");
    assert.deepEqual(JSON.parse(message.content.toString("utf8")), envelope);
    assert.equal(envelope.source, "node-test");
    assert.equal(envelope.correlationId, "req-7");
  });

  it("rejects as unroutable when no queue is bound to the exchange", async () => {
    const lonely = `${exchange}.unbound`;
    const unbound = createPublisher({ url, exchange: lonely });
    try {
      await assert.rejects(
        unbound.publish("user.registered", { userId: "u1" }),
        (error) => error instanceof PublishFailed && error.reason === "unroutable",
      );
    } finally {
      await unbound.close();
      await channel.deleteExchange(lonely);
    }
  });
});
