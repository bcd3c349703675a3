// A transactional outbox: nothing is lost before the broker.
//
// `add` writes the validated envelope into a MongoDB collection, inside the caller's
// transaction when it passes a `session`, so the business write and the event commit or
// abort together. The relay (`start`/`stop`) publishes the pending entries in order, with
// confirms, through a publisher, and marks each one sent once the broker confirmed it. While
// RabbitMQ is down the entries wait (the relay retries with backoff); a relay that dies
// between the confirm and the mark publishes that entry again on restart, with the same
// envelope id, which the worker's duplicate suppression absorbs.
//
// Only plain operations are used (find with sort/limit, insertOne, updateOne by _id), so the
// nx-27017 stand-in and a real MongoDB behave the same.

import { EnvelopeInvalid, buildEnvelope } from "./index.js";

export const DEFAULT_OUTBOX_COLLECTION = "outbox";

/** Envelope fields `publish` takes as options when the relay sends a stored envelope. */
const OPTION_FIELDS = ["id", "occurredAt", "socketId", "correlationId", "source", "version"];

// seq orders entries added within one millisecond: microseconds since the epoch, strictly
// increasing in this process (stays below 2^53 until the year 2255).
let lastSeq = 0;
function nextSeq() {
  lastSeq = Math.max(Date.now() * 1000, lastSeq + 1);
  return lastSeq;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * An outbox in `db.collection(collection)`, relayed through `publisher` (a `createPublisher`
 * result, or anything with the same `publish(type, data, options)`).
 */
export function createOutbox({
  db,
  collection = DEFAULT_OUTBOX_COLLECTION,
  publisher,
  source,
  batchSize = 100,
  pollIntervalMs = 1000,
  minBackoffMs = 100,
  maxBackoffMs = 30_000,
  onError = () => {},
  onPublished,
} = {}) {
  if (!db || typeof db.collection !== "function") {
    throw new TypeError("createOutbox: `db` (a mongodb Db) is required");
  }
  const entries = db.collection(collection);
  let loop = null; // Promise<void> while the relay runs
  let controller = null; // aborts the relay's waits on stop()
  let wake = null; // resolves the relay's idle wait when an entry was added

  /**
   * Validate the envelope exactly as `publish` does (throwing EnvelopeInvalid before any
   * write) and insert it as a pending entry; pass `{ session }` to write inside the caller's
   * transaction. Resolves with the envelope.
   */
  async function add(type, data, options = {}, { session } = {}) {
    const envelope = buildEnvelope(type, data, { ...options, source: options.source ?? source });
    const entry = { _id: envelope.id, envelope, createdAt: new Date(), sentAt: null, seq: nextSeq() };
    await entries.insertOne(entry, session ? { session } : {});
    // A committed-later entry is found by the next poll; an immediate one wakes the relay now.
    if (!session) wake?.();
    return envelope;
  }

  /** Up to `limit` entries not yet marked sent, oldest first. */
  function pending(limit = batchSize) {
    return entries.find({ sentAt: null }).sort({ createdAt: 1, seq: 1 }).limit(limit).toArray();
  }

  async function publishEntry({ envelope }) {
    const options = {};
    for (const key of OPTION_FIELDS) if (envelope[key] !== undefined) options[key] = envelope[key];
    await publisher.publish(envelope.type, envelope.data, options);
  }

  async function run(signal) {
    let backoff = minBackoffMs;
    while (!signal.aborted) {
      let batch;
      try {
        batch = await pending();
      } catch (error) {
        onError(error);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, maxBackoffMs);
        continue;
      }
      if (batch.length === 0) {
        const woken = new Promise((resolve) => {
          wake = resolve;
        });
        await Promise.race([woken, sleep(pollIntervalMs, signal)]);
        wake = null;
        continue;
      }
      for (const entry of batch) {
        if (signal.aborted) return;
        try {
          await publishEntry(entry);
        } catch (error) {
          onError(error);
          if (error instanceof EnvelopeInvalid) {
            // Validated when added, so only a schema change gets here: it will not pass
            // later either. It stays pending (nothing is dropped) and holds up the rest.
            await sleep(maxBackoffMs, signal);
          } else {
            await sleep(backoff, signal);
            backoff = Math.min(backoff * 2, maxBackoffMs);
          }
          break; // read the pending entries again, from the oldest
        }
        // A test hook: throwing here is a relay that died after the confirm, before the mark.
        if (onPublished) await onPublished(entry);
        try {
          await entries.updateOne({ _id: entry._id }, { $set: { sentAt: new Date() } });
        } catch (error) {
          onError(error); // published but unmarked: it is sent again, with the same id
          await sleep(backoff, signal);
          backoff = Math.min(backoff * 2, maxBackoffMs);
          break;
        }
        backoff = minBackoffMs;
      }
    }
  }

  /** Start the relay (idempotent). The promise it returns settles when the relay stops. */
  function start() {
    if (!publisher || typeof publisher.publish !== "function") {
      throw new TypeError("createOutbox: `publisher` is required to start the relay");
    }
    if (loop === null) {
      controller = new AbortController();
      const signal = controller.signal;
      loop = run(signal).finally(() => {
        if (controller?.signal === signal) {
          loop = null;
          controller = null;
        }
      });
    }
    return loop;
  }

  /**
   * Stop the relay after the entry in flight (it is marked if the broker confirmed it);
   * resolves once stopped. Does not close the publisher.
   */
  async function stop() {
    const running = loop;
    controller?.abort();
    wake?.();
    if (running) await running.catch(() => {});
  }

  return {
    collection: entries,
    add,
    pending,
    start,
    stop,
    get running() {
      return loop !== null;
    },
  };
}
