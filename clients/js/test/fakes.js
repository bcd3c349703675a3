// Test doubles: a pusher-js stand-in driven by the test, and the worker's HTTP endpoints
// (auth and history, CONTRACT.md §6) in memory behind a fake `fetch`.

export class FakeConnection {
  constructor() {
    this.state = "connecting";
    this.callbacks = new Map();
  }

  bind(event, fn) {
    if (!this.callbacks.has(event)) this.callbacks.set(event, new Set());
    this.callbacks.get(event).add(fn);
  }

  unbind(event, fn) {
    this.callbacks.get(event)?.delete(fn);
  }

  setState(current) {
    const previous = this.state;
    this.state = current;
    for (const fn of [...(this.callbacks.get("state_change") ?? [])]) fn({ previous, current });
  }
}

export class FakeChannel {
  constructor(name) {
    this.name = name;
    this.callbacks = new Map();
    this.globals = new Set();
  }

  bind(event, fn) {
    if (!this.callbacks.has(event)) this.callbacks.set(event, new Set());
    this.callbacks.get(event).add(fn);
  }

  unbind(event, fn) {
    this.callbacks.get(event)?.delete(fn);
  }

  bind_global(fn) {
    this.globals.add(fn);
  }

  unbind_global(fn) {
    this.globals.delete(fn);
  }

  emit(event, data) {
    for (const fn of [...this.globals]) fn(event, data);
    for (const fn of [...(this.callbacks.get(event) ?? [])]) fn(data);
  }
}

/** Stands in for the pusher-js constructor; the test drives connection and events. */
export class FakePusher {
  static last = null;

  constructor(key, options) {
    this.key = key;
    this.options = options;
    this.connection = new FakeConnection();
    this.channels = new Map();
    this.unsubscribed = [];
    this.disconnected = false;
    this.signedIn = 0;
    this.socketCounter = 0;
    FakePusher.last = this;
  }

  subscribe(name) {
    let channel = this.channels.get(name);
    if (!channel) {
      channel = new FakeChannel(name);
      this.channels.set(name, channel);
      if (this.connection.state === "connected") this.#authorize(channel);
    }
    return channel;
  }

  unsubscribe(name) {
    this.channels.delete(name);
    this.unsubscribed.push(name);
  }

  disconnect() {
    this.disconnected = true;
    this.disconnects = (this.disconnects ?? 0) + 1;
    this.connection.setState("disconnected");
  }

  connect() {
    this.connects = (this.connects ?? 0) + 1;
    this.connection.setState("connecting");
  }

  signin() {
    this.signedIn += 1;
    const handler = this.options.userAuthentication.customHandler;
    return new Promise((resolve) =>
      handler({ socketId: this.socketId }, (error, data) => resolve({ error, data })),
    );
  }

  // -- test controls ---------------------------------------------------------------------

  /** Connect, then (re)subscribe every channel as pusher-js does; resolves once all are done. */
  async open() {
    this.socketCounter += 1;
    this.socketId = `${this.socketCounter}.${this.socketCounter * 7}`;
    this.connection.setState("connected");
    await Promise.all([...this.channels.values()].map((channel) => this.#authorize(channel)));
  }

  /** The socket closed: pusher-js goes back to "connecting" (then "unavailable"). */
  drop(state = "connecting") {
    this.connection.setState(state);
  }

  /** A live event from Soketi. */
  live(channel, event, data) {
    this.channels.get(channel).emit(event, data);
  }

  #authorize(channel) {
    if (!channel.name.startsWith("private-")) {
      channel.emit("pusher:subscription_succeeded", {});
      return Promise.resolve();
    }
    const handler = this.options.channelAuthorization.customHandler;
    return new Promise((resolve) => {
      handler({ socketId: this.socketId, channelName: channel.name }, (error) => {
        if (this.channels.get(channel.name) === channel) {
          if (error) channel.emit("pusher:subscription_error", { type: "AuthError", error: error.message });
          else channel.emit("pusher:subscription_succeeded", {});
        }
        resolve();
      });
    });
  }
}

export function formatCursor(seq) {
  return String(seq).padStart(20, "0");
}

/** The worker's auth and history endpoints, in memory. */
export class FakeWorker {
  constructor() {
    /** channel -> [{cursor, seq, event, data}] */
    this.history = new Map();
    this.counters = new Map();
    this.requests = [];
    this.down = false;
    /** channel -> lowest seq still kept (older ones answer 410). */
    this.keptFrom = new Map();
    this.refuse = new Map(); // channel -> status for /pusher/auth and history
    /** When set, history requests wait for it (resolve to release). */
    this.gate = null;
    /** Pending numbers: channel -> Set of seq not yet visible ("being written"). */
    this.pending = new Map();
    this.fetch = this.fetch.bind(this);
  }

  /** Record an event as the worker does before triggering it; returns the live payload. */
  record(channel, event, eventId, extra = {}) {
    const seq = (this.counters.get(channel) ?? 0) + 1;
    this.counters.set(channel, seq);
    const data = { eventId, cursor: formatCursor(seq), timestamp: Date.now(), ...extra };
    if (!this.history.has(channel)) this.history.set(channel, []);
    this.history.get(channel).push({ cursor: data.cursor, seq, event, data });
    return data;
  }

  /** Reserve a number whose entry is not visible until `reveal()` (a write in flight). */
  reserve(channel, event, eventId) {
    const data = this.record(channel, event, eventId);
    const seq = Number(data.cursor);
    if (!this.pending.has(channel)) this.pending.set(channel, new Set());
    this.pending.get(channel).add(seq);
    return { data, reveal: () => this.pending.get(channel).delete(seq) };
  }

  async fetch(url, init = {}) {
    const parsed = new URL(url);
    const request = {
      method: init.method ?? "GET",
      path: parsed.pathname,
      query: Object.fromEntries(parsed.searchParams),
      headers: init.headers ?? {},
      body: init.body,
      credentials: init.credentials,
    };
    this.requests.push(request);
    if (this.down) throw new TypeError("fetch failed");
    if (request.method === "POST" && parsed.pathname === "/pusher/auth") {
      const form = new URLSearchParams(init.body);
      const status = this.refuse.get(form.get("channel_name"));
      if (status) return json(status, { error: "not_your_channel" });
      return json(200, { auth: `key:sig-${form.get("channel_name")}` });
    }
    if (request.method === "POST" && parsed.pathname === "/pusher/user-auth") {
      return json(200, { auth: "key:user-sig", user_data: '{"id":"admin-1"}' });
    }
    const match = /^\/channels\/([^/]+)\/events$/.exec(parsed.pathname);
    if (request.method === "GET" && match) {
      if (this.gate) await this.gate;
      if (this.down) throw new TypeError("fetch failed");
      const channel = decodeURIComponent(match[1]);
      const status = this.refuse.get(channel);
      if (status) return json(status, { error: "not_your_channel" });
      return this.#page(channel, parsed.searchParams);
    }
    return json(404, { error: "not_found" });
  }

  #page(channel, params) {
    const after = params.has("after") ? Number(params.get("after")) : null;
    const limit = Number(params.get("limit") ?? 50);
    const keptFrom = this.keptFrom.get(channel) ?? 1;
    if (after !== null && after + 1 < keptFrom) {
      return json(410, { error: "cursor_expired", oldest: formatCursor(keptFrom) });
    }
    const pending = this.pending.get(channel) ?? new Set();
    const all = (this.history.get(channel) ?? []).filter(
      (e) => e.seq >= keptFrom && (after === null || e.seq > after),
    );
    const events = [];
    let stoppedAtPending = false;
    for (const entry of all) {
      if (pending.has(entry.seq)) {
        stoppedAtPending = true;
        break;
      }
      if (events.length === limit) break;
      events.push({ cursor: entry.cursor, event: entry.event, data: entry.data });
    }
    const more = stoppedAtPending || all.length > events.length;
    const last = events.at(-1)?.cursor ?? (after === null ? null : formatCursor(after));
    return json(200, { events, next: more ? last : null });
  }
}

function json(status, body) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

/** Wait until `condition()` holds, checking every few milliseconds, or throw. */
export async function waitFor(condition, { timeoutMs = 2000, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** A memory `storage` (the Web Storage subset the client uses). */
export class MemoryStorage {
  constructor(entries = {}) {
    this.map = new Map(Object.entries(entries));
  }

  getItem(key) {
    return this.map.get(key) ?? null;
  }

  setItem(key, value) {
    this.map.set(key, value);
  }
}
