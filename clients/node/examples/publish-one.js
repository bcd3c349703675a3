// Publish one event and print its envelope as one JSON line.
//
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ EXCHANGE=bazaar.events \
//   TYPE=user.registered DATA='{"userId":"u1"}' node examples/publish-one.js
//
// Exit codes: 0 published and confirmed, 2 the envelope is invalid, 1 anything else.

import { EnvelopeInvalid, createPublisher } from "../src/index.js";

const { AMQP_URL, EXCHANGE, TYPE, DATA, SOURCE } = process.env;

if (!AMQP_URL || !TYPE || DATA === undefined) {
  console.error("usage: AMQP_URL=... [EXCHANGE=...] TYPE=... DATA='{...}' node publish-one.js");
  process.exit(2);
}

const publisher = createPublisher({
  url: AMQP_URL,
  exchange: EXCHANGE || undefined,
  source: SOURCE || "publish-one",
});
try {
  const envelope = await publisher.publish(TYPE, JSON.parse(DATA));
  console.log(JSON.stringify(envelope));
} catch (error) {
  console.error(error instanceof EnvelopeInvalid ? error.message : error);
  process.exitCode = error instanceof EnvelopeInvalid || error instanceof SyntaxError ? 2 : 1;
} finally {
  await publisher.close();
}
