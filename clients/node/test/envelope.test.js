// Envelope building and validation against the worker's JSON Schemas: no network.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { describe, it } from "node:test";

import {
  EVENT_TYPES,
  EnvelopeInvalid,
  ID_PATTERN,
  UnknownEventType,
  buildEnvelope,
  newEventId,
  validateEnvelope,
} from "../src/index.js";

const ORDER = {
  orderId: "665f1c2a9b1e8a0012345678",
  customerId: "665f1c2a9b1e8a0012345679",
  items: [{ productId: "p1", shopId: "s1", quantity: 2, price: 199.5 }],
  totalPrice: 399,
  currency: "INR",
};

describe("buildEnvelope", () => {
  it("builds a valid order.created with a fresh id and occurredAt", () => {
    const before = Date.now();
    const envelope = buildEnvelope("order.created", ORDER);
    assert.match(envelope.id, ID_PATTERN);
    assert.match(envelope.id, /^[0-9a-f]{32}$/);
    assert.equal(envelope.type, "order.created");
    assert.deepEqual(envelope.data, ORDER);
    assert.match(envelope.occurredAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Date.parse(envelope.occurredAt) >= before - 1);
    assert.deepEqual(Object.keys(envelope), ["id", "type", "occurredAt", "data"]);
  });

  it("carries the optional fields given, and only those", () => {
    const envelope = buildEnvelope("order.created", ORDER, {
      id: "01JDZ8Q1T5V6Y7W8X9A0B1C2D3",
      occurredAt: new Date("2026-11-29T05:00:00Z"),
      socketId: "1234.5678",
      correlationId: "req-42",
      source: "backend",
      version: 1,
    });
    assert.deepEqual(envelope, {
      id: "01JDZ8Q1T5V6Y7W8X9A0B1C2D3",
      type: "order.created",
      occurredAt: "2026-11-29T05:00:00.000Z",
      data: ORDER,
      socketId: "1234.5678",
      correlationId: "req-42",
      source: "backend",
      version: 1,
    });
  });

  it("accepts an ISO string with an offset for occurredAt", () => {
    const envelope = buildEnvelope("user.registered", { userId: "u1" }, {
      occurredAt: "2026-11-29T10:30:00+05:30",
    });
    assert.equal(envelope.occurredAt, "2026-11-29T10:30:00+05:30");
  });

  it("refuses order.created without items, naming the missing property", () => {
    const { items: _dropped, ...withoutItems } = ORDER;
    assert.throws(
      () => buildEnvelope("order.created", withoutItems),
      (error) => {
        assert.ok(error instanceof EnvelopeInvalid);
        assert.equal(error.type, "order.created");
        assert.ok(error.errors.some((e) => e.params.missingProperty === "items"));
        assert.match(error.message, /\/data must have required property 'items'/);
        return true;
      },
    );
  });

  it("refuses an id with a comma", () => {
    assert.throws(
      () => buildEnvelope("order.created", ORDER, { id: "a,b" }),
      (error) => error instanceof EnvelopeInvalid && /\/id must match pattern/.test(error.message),
    );
  });

  it("refuses a bad id inside data, an empty items list and a bad quantity, all at once", () => {
    const data = { ...ORDER, customerId: "x y", items: [] };
    assert.throws(
      () => buildEnvelope("order.created", data),
      (error) => {
        const paths = error.errors.map((e) => e.instancePath).sort();
        assert.deepEqual(paths, ["/data/customerId", "/data/items"]);
        return true;
      },
    );
    const badItem = { ...ORDER, items: [{ ...ORDER.items[0], quantity: 0 }] };
    assert.throws(() => buildEnvelope("order.created", badItem), EnvelopeInvalid);
  });

  it("refuses an occurredAt without a timezone and a malformed socketId", () => {
    assert.throws(
      () => buildEnvelope("user.registered", { userId: "u1" }, { occurredAt: "2026-11-29T05:00:00" }),
      /\/occurredAt must match format "date-time"/,
    );
    assert.throws(
      () => buildEnvelope("user.registered", { userId: "u1" }, { socketId: "abc" }),
      /\/socketId/,
    );
  });

  it("refuses an unknown type with UnknownEventType, an EnvelopeInvalid", () => {
    assert.throws(
      () => buildEnvelope("order.exploded", ORDER),
      (error) => {
        assert.ok(error instanceof UnknownEventType);
        assert.ok(error instanceof EnvelopeInvalid);
        assert.match(error.message, /unknown event type "order\.exploded"/);
        return true;
      },
    );
  });
});

describe("validateEnvelope", () => {
  it("returns a valid envelope unchanged and refuses one missing its type", () => {
    const envelope = buildEnvelope("system.alert", {
      severity: "warning",
      title: "Payments slow",
      message: "Gateway latency above 2 s",
    });
    assert.equal(validateEnvelope(envelope), envelope);
    assert.throws(() => validateEnvelope({ ...envelope, type: undefined }), UnknownEventType);
    assert.throws(() => validateEnvelope(null), UnknownEventType);
  });
});

describe("catalogue", () => {
  it("knows every type whose schema is checked in", () => {
    const files = readdirSync(new URL("../schemas/", import.meta.url))
      .filter((name) => name.endsWith(".schema.json"))
      .map((name) => name.replace(/\.schema\.json$/, ""))
      .sort();
    assert.deepEqual([...EVENT_TYPES], files);
    assert.ok(EVENT_TYPES.includes("order.created"));
  });

  it("lists the same types in index.d.ts as the schemas", () => {
    const dts = readFileSync(new URL("../src/index.d.ts", import.meta.url), "utf8");
    const union = dts.match(/export type EventType =([^;]+);/)[1];
    const declared = [...union.matchAll(/"([^"]+)"/g)].map((m) => m[1]).sort();
    assert.deepEqual(declared, [...EVENT_TYPES]);
  });

  it("makes ids that match the contract's pattern", () => {
    const ids = new Set(Array.from({ length: 1000 }, newEventId));
    assert.equal(ids.size, 1000);
    for (const id of ids) assert.match(id, ID_PATTERN);
  });
});
