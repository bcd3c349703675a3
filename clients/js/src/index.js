// Live updates from the fan-out worker in a browser or in Node (CONTRACT.md §5-§6).
//
// pusher-js carries the live events; private channels are authorized by the worker's
// `POST /pusher/auth` with the caller's JWT. Every live payload carries `eventId` and
// `cursor`, so the client can
//
// - remember, per channel, the last cursor it delivered (and persist it in `storage`);
// - drop repeats by `eventId` (a bounded set per channel), whether they come twice from
//   the worker or once live and once from history;
// - while the WebSocket is down, poll `GET /channels/{channel}/events?after=CURSOR` every
//   `pollIntervalMs` and deliver what it missed, oldest first;
// - when the WebSocket is back, hold that channel's live events until it has caught up
//   from its last cursor, so nothing arrives twice or out of order.
//
// One state for the whole connection, for the UI: connecting -> live; polling while the
// WebSocket is down (offline when the worker cannot be reached either); catching-up right
// after a (re)connect until every channel has caught up.

import DefaultPusher from "pusher-js";

import {
  CursorExpired,
  HttpError,
  compareCursors,
  createHttp,
  isUnavailable,
  laterCursor,
} from "./http.js";
import { SeenSet } from "./seen.js";

export { CursorExpired, HttpError, compareCursors } from "./http.js";

export const STATES = Object.freeze(["connecting", "live", "polling", "catching-up", "offline"]);

/** pusher-js connection states that mean "no WebSocket now" (besides a reconnect). */
const DOWN_STATES = new Set(["unavailable", "failed", "disconnected"]);
const STORAGE_PREFIX = "bazaar-fanout:cursor:";
const GAP_RETRY_FIRST_MS = 100;
const GAP_RETRY_MAX_MS = 1000;

function positiveInteger(name, value) {
  if (!Number.isInteger(value) || value < 1) {
    throw new TypeError(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}

function isInternal(event) {
  return event.startsWith("pusher:") || event.startsWith("pusher_internal:");
}

/**
 * Connect to Soketi through pusher-js and the worker; see index.d.ts for the options.
 */
export function createRealtime(options) {
  const {
    key,
    wsHost,
    wsPort,
    forceTLS = false,
    authEndpoint,
    getToken,
    pollIntervalMs = 10000,
    reconnectIntervalMs = 5000,
    historyLimit = 100,
    fetch = globalThis.fetch,
    Pusher = DefaultPusher,
    storage,
    dedupeSize = 1000,
    gapWaitMs = 3000,
    catchUpAttempts = 3,
    credentials = "same-origin",
    pusherOptions = {},
    onStateChange,
    onGap,
    onError,
  } = options ?? {};
  if (!key) throw new TypeError("key (the Soketi app key) is required");
  if (!authEndpoint) throw new TypeError("authEndpoint (the worker's base URL) is required");
  if (typeof fetch !== "function") throw new TypeError("fetch is not available; pass one");
  positiveInteger("pollIntervalMs", pollIntervalMs);
  positiveInteger("historyLimit", historyLimit);
  positiveInteger("dedupeSize", dedupeSize);
  positiveInteger("catchUpAttempts", catchUpAttempts);
  if (reconnectIntervalMs !== 0) positiveInteger("reconnectIntervalMs", reconnectIntervalMs);

  const http = createHttp({ baseUrl: authEndpoint, getToken, fetch, credentials });
  const listeners = { state: new Set(), gap: new Set(), error: new Set() };
  if (onStateChange) listeners.state.add(onStateChange);
  if (onGap) listeners.gap.add(onGap);
  if (onError) listeners.error.add(onError);

  /** @type {Map<string, any>} */
  const channels = new Map();
  /** The last refusal of /pusher/auth per channel, to explain a subscription error. */
  const authErrors = new Map();
  const sleepers = new Set();
  let state = "connecting";
  let closed = false;
  let connection = "connecting";
  let wasConnected = false;
  /** True while the WebSocket is down and history is polled instead. */
  let fallback = false;
  /** True when the last poll could not reach the worker for any channel. */
  let unreachable = false;
  let pollTimer = null;
  let polling = false;
  let reconnectTimer = null;

  // -- plumbing ----------------------------------------------------------------------

  function emit(kind, ...args) {
    for (const listener of [...listeners[kind]]) {
      try {
        listener(...args);
      } catch (error) {
        if (kind !== "error") report(error);
      }
    }
  }

  function report(error, channel) {
    if (listeners.error.size === 0) {
      console.error("[fanout-realtime]", channel ?? "", error);
      return;
    }
    emit("error", error, channel);
  }

  function on(kind, callback) {
    listeners[kind].add(callback);
    return () => listeners[kind].delete(callback);
  }

  /** Resolves after `ms`, or at once when the client closes. */
  function sleep(ms) {
    return new Promise((resolve) => {
      const sleeper = { resolve, timer: null };
      sleeper.timer = setTimeout(() => {
        sleepers.delete(sleeper);
        resolve();
      }, ms);
      sleepers.add(sleeper);
    });
  }

  function computeState() {
    if (closed) return "offline";
    if (connection === "connected") {
      for (const ch of channels.values()) if (ch.buffering) return "catching-up";
      return "live";
    }
    if (fallback) return unreachable ? "offline" : "polling";
    return "connecting";
  }

  function updateState() {
    const next = computeState();
    if (next === state) return;
    const previous = state;
    state = next;
    emit("state", next, previous);
  }

  // -- pusher-js -----------------------------------------------------------------------

  const pusher = new Pusher(key, {
    cluster: "", // required by pusher-js 8, unused when wsHost is given
    wsHost,
    wsPort,
    wssPort: wsPort,
    forceTLS,
    enabledTransports: ["ws", "wss"],
    channelAuthorization: {
      customHandler({ socketId, channelName }, callback) {
        http.authorizeChannel(socketId, channelName).then(
          (data) => {
            authErrors.delete(channelName);
            callback(null, data);
          },
          (error) => {
            authErrors.set(channelName, error);
            callback(error, null);
          },
        );
      },
    },
    userAuthentication: {
      customHandler({ socketId }, callback) {
        http.authenticateUser(socketId).then(
          (data) => callback(null, data),
          (error) => {
            report(error);
            callback(error, null);
          },
        );
      },
    },
    ...pusherOptions,
  });

  function onConnectionChange({ current }) {
    if (closed) return;
    connection = current;
    if (current === "connected") {
      wasConnected = true;
      fallback = false;
      unreachable = false;
      stopPolling();
      // pusher-js subscribes every channel again; each catches up once subscribed.
      for (const ch of channels.values()) ch.buffering = true;
    } else if (DOWN_STATES.has(current) || wasConnected) {
      // A dropped WebSocket goes back to "connecting": poll right away rather than after
      // pusher-js's unavailableTimeout.
      if (!fallback) {
        fallback = true;
        startPolling();
      }
    }
    updateState();
  }

  pusher.connection.bind("state_change", onConnectionChange);
  if (pusher.connection.state && pusher.connection.state !== "initialized") {
    onConnectionChange({ current: pusher.connection.state });
  }

  // -- delivery ------------------------------------------------------------------------

  function advance(ch, cursor) {
    const next = laterCursor(ch.cursor, cursor);
    if (next === ch.cursor) return;
    ch.cursor = next;
    ch.positioned = true;
    if (storage) {
      try {
        Promise.resolve(storage.setItem(STORAGE_PREFIX + ch.name, next)).catch((error) =>
          report(error, ch.name),
        );
      } catch (error) {
        report(error, ch.name);
      }
    }
  }

  /** Deliver one event unless it is a repeat; history entries pass their own cursor. */
  function accept(ch, event, data, source, cursor) {
    const at = typeof cursor === "string" ? cursor : data?.cursor;
    if (typeof at === "string") advance(ch, at);
    const eventId = data?.eventId;
    if (typeof eventId === "string" && !ch.seen.add(eventId)) return;
    const meta = { channel: ch.name, event, source, cursor: at ?? null, eventId: eventId ?? null };
    for (const handlers of [...ch.handlerSets]) {
      for (const handler of [handlers[event], handlers["*"]]) {
        if (typeof handler !== "function") continue;
        try {
          handler(data, meta);
        } catch (error) {
          report(error, ch.name);
        }
      }
    }
  }

  function onLive(ch, event, data) {
    if (ch.closed || isInternal(event)) return;
    if (ch.buffering && typeof data?.cursor === "string") {
      ch.buffer.push({ event, data });
      return;
    }
    accept(ch, event, data, "live");
  }

  /** Deliver the live events held during a catch-up: by cursor, repeats dropped. */
  function flush(ch) {
    const held = ch.buffer.splice(0).sort((a, b) => compareCursors(a.data.cursor, b.data.cursor));
    for (const { event, data } of held) accept(ch, event, data, "live");
  }

  // -- history -------------------------------------------------------------------------

  /** Serialize history work per channel. */
  function enqueue(ch, operation) {
    const run = ch.chain.then(() => (closed || ch.closed ? undefined : operation()));
    ch.chain = run.catch(() => {});
    return run;
  }

  /** Move `ch` to the newest entry of its history, delivering nothing (the baseline). */
  async function seek(ch) {
    let after = null;
    for (;;) {
      const page = await http.history(ch.name, after, historyLimit);
      if (closed || ch.closed) return;
      after = laterCursor(after, page.events.at(-1)?.cursor ?? null);
      if (page.next == null || page.events.length === 0) break;
    }
    if (after != null) advance(ch, after);
    ch.positioned = true;
  }

  /**
   * Deliver everything after the channel's cursor until the worker says there is no more
   * (`next` null). True when caught up; false when an entry was still being written after
   * `gapWaitMs` (picked up by a later pull).
   */
  async function pull(ch) {
    if (!ch.positioned) await seek(ch);
    let waited = 0;
    let delay = GAP_RETRY_FIRST_MS;
    while (!closed && !ch.closed) {
      let page;
      try {
        page = await http.history(ch.name, ch.positioned ? ch.cursor : null, historyLimit);
      } catch (error) {
        if (!(error instanceof CursorExpired)) throw error;
        // Older than the retention: the UI reloads what it shows, we go on from the newest.
        emit("gap", ch.name, { reason: "cursor_expired", error });
        ch.cursor = null;
        ch.positioned = false;
        await seek(ch);
        continue;
      }
      if (closed || ch.closed) return false;
      const before = ch.cursor;
      for (const entry of page.events) accept(ch, entry.event, entry.data, "history", entry.cursor);
      if (page.next == null) return true;
      if (ch.cursor !== before) continue;
      // A number before `next` may still be being written (numbers may skip): wait a little.
      if (waited >= gapWaitMs) return false;
      await sleep(delay);
      waited += delay;
      delay = Math.min(delay * 2, GAP_RETRY_MAX_MS);
    }
    return false;
  }

  /** After (re)subscribing: catch up from the cursor, then release the held live events. */
  async function catchUp(ch) {
    for (let attempt = 1; ; attempt += 1) {
      if (connection !== "connected") return; // polling takes over; the held events wait
      try {
        await pull(ch);
        break;
      } catch (error) {
        report(error, ch.name);
        if (connection !== "connected" || closed || ch.closed) return;
        if (!isUnavailable(error) || attempt >= catchUpAttempts) {
          emit("gap", ch.name, { reason: "history_unavailable", error });
          break;
        }
        await sleep(Math.min(pollIntervalMs, 500 * attempt));
      }
    }
    if (closed || ch.closed) return;
    flush(ch);
    ch.buffering = false;
  }

  function requestCatchUp(ch) {
    ch.buffering = true;
    updateState();
    enqueue(ch, () => catchUp(ch)).finally(updateState);
  }

  // -- polling -------------------------------------------------------------------------

  async function pollOnce() {
    const outcomes = await Promise.all(
      [...channels.values()].map((ch) => {
        if (ch.pollQueued || ch.refused) return null;
        ch.pollQueued = true;
        return enqueue(ch, () => {
          ch.pollQueued = false;
          return pull(ch);
        }).then(
          () => "ok",
          (error) => {
            ch.pollQueued = false;
            report(error, ch.name);
            return isUnavailable(error) ? "unreachable" : "refused";
          },
        );
      }),
    );
    const settled = outcomes.filter(Boolean);
    if (settled.length > 0) {
      unreachable = settled.includes("unreachable") && !settled.includes("ok");
    }
  }

  async function tick() {
    pollTimer = null;
    if (!fallback || closed) {
      polling = false;
      return;
    }
    await pollOnce();
    if (!fallback || closed) {
      polling = false;
      return;
    }
    updateState();
    pollTimer = setTimeout(tick, pollIntervalMs);
  }

  function startPolling() {
    scheduleReconnect();
    if (polling) return;
    polling = true;
    tick();
  }

  function stopPolling() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
    polling = false;
    if (reconnectTimer !== null) clearTimeout(reconnectTimer);
    reconnectTimer = null;
  }

  /**
   * After a failed attempt pusher-js waits 15 s, then 30 s, then 60 s before the next one,
   * so a client could poll for a minute after Soketi is back. While polling, start its
   * connection strategy afresh every `reconnectIntervalMs` (one connection attempt).
   */
  function scheduleReconnect() {
    if (!reconnectIntervalMs || reconnectTimer !== null) return;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      if (closed || !fallback) return;
      if (pusher.connection.state !== "connected") {
        pusher.disconnect();
        pusher.connect();
      }
      scheduleReconnect();
    }, reconnectIntervalMs);
  }

  // -- channels ------------------------------------------------------------------------

  function openChannel(name, after) {
    const ch = {
      name,
      handlerSets: new Set(),
      cursor: null,
      /** False until the cursor means "deliver what comes after it" (null = from the start). */
      positioned: false,
      seen: new SeenSet(dedupeSize),
      buffer: [],
      buffering: connection === "connected",
      chain: Promise.resolve(),
      pollQueued: false,
      refused: null,
      closed: false,
      pusherChannel: null,
      bindings: [],
    };
    channels.set(name, ch);

    enqueue(ch, async () => {
      let start = after;
      if (start === undefined && storage) {
        try {
          start = (await storage.getItem(STORAGE_PREFIX + name)) ?? undefined;
        } catch (error) {
          report(error, name);
        }
      }
      if (typeof start === "string") {
        ch.cursor = start;
        ch.positioned = true;
        return;
      }
      try {
        await seek(ch);
      } catch (error) {
        report(error, name); // a later pull seeks again
      }
    });

    const pc = pusher.subscribe(name);
    ch.pusherChannel = pc;
    const live = (event, data) => onLive(ch, event, data);
    const succeeded = () => {
      if (ch.closed) return;
      ch.refused = null;
      requestCatchUp(ch);
    };
    const failed = (status) => {
      if (ch.closed) return;
      const error =
        authErrors.get(name) ??
        new HttpError(status?.status ?? 0, status, `subscription to ${name}`);
      ch.refused = error;
      ch.buffering = false;
      flush(ch);
      report(error, name);
      updateState();
    };
    pc.bind_global(live);
    pc.bind("pusher:subscription_succeeded", succeeded);
    pc.bind("pusher:subscription_error", failed);
    ch.bindings = [
      () => pc.unbind_global(live),
      () => pc.unbind("pusher:subscription_succeeded", succeeded),
      () => pc.unbind("pusher:subscription_error", failed),
    ];
    updateState();
    return ch;
  }

  function closeChannel(ch) {
    ch.closed = true;
    channels.delete(ch.name);
    for (const unbind of ch.bindings) unbind();
    pusher.unsubscribe(ch.name);
  }

  // -- the public surface --------------------------------------------------------------

  return {
    get state() {
      return state;
    },

    get pusher() {
      return pusher;
    },

    subscribe(channel, handlers, { after } = {}) {
      if (closed) throw new Error("this realtime client is closed");
      if (typeof channel !== "string" || channel === "") {
        throw new TypeError("channel must be a non-empty string");
      }
      const own = { ...(handlers ?? {}) };
      const ch = channels.get(channel) ?? openChannel(channel, after);
      ch.handlerSets.add(own);
      let active = true;
      return () => {
        if (!active) return;
        active = false;
        ch.handlerSets.delete(own);
        if (ch.handlerSets.size === 0 && !ch.closed) {
          closeChannel(ch);
          updateState();
        }
      };
    },

    cursor(channel) {
      return channels.get(channel)?.cursor ?? null;
    },

    onStateChange(callback) {
      return on("state", callback);
    },

    onGap(callback) {
      return on("gap", callback);
    },

    onError(callback) {
      return on("error", callback);
    },

    signin() {
      pusher.signin();
    },

    close() {
      if (closed) return;
      closed = true;
      stopPolling();
      for (const sleeper of sleepers) {
        clearTimeout(sleeper.timer);
        sleeper.resolve();
      }
      sleepers.clear();
      for (const ch of [...channels.values()]) closeChannel(ch);
      pusher.connection.unbind("state_change", onConnectionChange);
      pusher.disconnect();
      updateState();
    },
  };
}
