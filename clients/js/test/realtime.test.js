import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { compareCursors, createRealtime, CursorExpired, HttpError, STATES } from "../src/index.js";
import { SeenSet } from "../src/seen.js";
import { FakePusher, FakeWorker, MemoryStorage, formatCursor, waitFor } from "./fakes.js";

const open = [];

function setup(overrides = {}) {
  const worker = new FakeWorker();
  const states = [];
  const gaps = [];
  const errors = [];
  const rt = createRealtime({
    key: "app-key",
    wsHost: "127.0.0.1",
    wsPort: 6001,
    authEndpoint: "http://worker.test/",
    getToken: async () => "jwt-token",
    pollIntervalMs: 20,
    historyLimit: 3,
    fetch: worker.fetch,
    Pusher: FakePusher,
    onStateChange: (state) => states.push(state),
    onGap: (channel, info) => gaps.push({ channel, reason: info.reason }),
    onError: (error, channel) => errors.push({ error, channel }),
    ...overrides,
  });
  open.push(rt);
  return { rt, worker, pusher: FakePusher.last, states, gaps, errors };
}

/** Handlers recording every delivery as "event:eventId" plus its source. */
function recorder() {
  const got = [];
  const handlers = {
    "*": (data, meta) => got.push({ id: data.eventId, event: meta.event, source: meta.source }),
  };
  return { got, handlers, ids: () => got.map((g) => g.id) };
}

afterEach(() => {
  while (open.length) open.pop().close();
});

describe("connecting and live delivery", () => {
  test("configures pusher-js for Soketi and authorizes private channels with the Bearer token", async () => {
    const { rt, worker, pusher } = setup();
    assert.equal(pusher.key, "app-key");
    assert.equal(pusher.options.wsHost, "127.0.0.1");
    assert.equal(pusher.options.wsPort, 6001);
    assert.equal(pusher.options.forceTLS, false);
    assert.deepEqual(pusher.options.enabledTransports, ["ws", "wss"]);
    rt.subscribe("private-admin", {});
    await pusher.open();
    const auth = worker.requests.find((r) => r.path === "/pusher/auth");
    assert.ok(auth, "no /pusher/auth call");
    assert.equal(auth.method, "POST");
    assert.equal(auth.headers.Authorization, "Bearer jwt-token");
    assert.equal(auth.headers["Content-Type"], "application/x-www-form-urlencoded");
    const form = new URLSearchParams(auth.body);
    assert.equal(form.get("socket_id"), pusher.socketId);
    assert.equal(form.get("channel_name"), "private-admin");
  });

  test("goes connecting -> catching-up -> live and delivers live events to the handler of their name", async () => {
    const { rt, worker, pusher, states } = setup();
    assert.equal(rt.state, "connecting");
    const orders = [];
    rt.subscribe("private-admin", { "new-order": (data) => orders.push(data.orderId) });
    await pusher.open();
    await waitFor(() => rt.state === "live", { what: "live" });
    assert.deepEqual(states, ["catching-up", "live"]);
    pusher.live("private-admin", "new-order", worker.record("private-admin", "new-order", "e1", { orderId: "o1" }));
    pusher.live("private-admin", "new-user", worker.record("private-admin", "new-user", "e2"));
    assert.deepEqual(orders, ["o1"]);
    assert.equal(rt.cursor("private-admin"), formatCursor(2));
  });

  test("drops repeats by eventId, live or not, and ignores pusher-internal events", async () => {
    const { rt, worker, pusher } = setup();
    const { got, handlers, ids } = recorder();
    rt.subscribe("private-admin", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    const payload = worker.record("private-admin", "new-user", "e1");
    pusher.live("private-admin", "new-user", payload);
    pusher.live("private-admin", "new-user", { ...payload });
    pusher.live("private-admin", "pusher:subscription_count", { subscription_count: 2 });
    pusher.live("private-admin", "stats-update", { onlineAccounts: 3 }); // no eventId: delivered
    assert.deepEqual(ids(), ["e1", undefined]);
    assert.equal(got[1].event, "stats-update");
  });

  test("public channels and user sign-in use the worker's endpoints", async () => {
    const { rt, worker, pusher } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("public", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.live("public", "system-alert", worker.record("public", "system-alert", "a1"));
    assert.deepEqual(ids(), ["a1"]);
    rt.signin();
    assert.equal(pusher.signedIn, 1);
    await waitFor(() => worker.requests.some((r) => r.path === "/pusher/user-auth"));
    const userAuth = worker.requests.find((r) => r.path === "/pusher/user-auth");
    assert.equal(userAuth.headers.Authorization, "Bearer jwt-token");
    assert.equal(new URLSearchParams(userAuth.body).get("socket_id"), pusher.socketId);
  });
});

describe("polling fallback and catch-up", () => {
  test("polls the history while the WebSocket is down, in order, from the last cursor", async () => {
    const { rt, worker, pusher, states } = setup();
    const { ids, got, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.live("private-admin", "new-user", worker.record("private-admin", "new-user", "e1"));
    pusher.drop();
    assert.equal(rt.state, "polling");
    for (const id of ["e2", "e3", "e4", "e5"]) worker.record("private-admin", "new-user", id);
    await waitFor(() => got.length === 5, { what: "polled events" });
    assert.deepEqual(ids(), ["e1", "e2", "e3", "e4", "e5"]);
    assert.deepEqual(
      got.map((g) => g.source),
      ["live", "history", "history", "history", "history"],
    );
    const polls = worker.requests.filter((r) => r.path === "/channels/private-admin/events");
    assert.ok(polls.some((r) => r.query.after === formatCursor(1)), "did not poll from the cursor");
    assert.ok(polls.every((r) => r.query.limit === "3"));
    assert.ok(polls.every((r) => r.headers.Authorization === "Bearer jwt-token"));
    worker.record("private-admin", "new-user", "e6");
    await waitFor(() => got.length === 6, { what: "the next poll" });
    assert.deepEqual(states.slice(-1), ["polling"]);
  });

  test("while polling, restarts pusher-js's connection attempts every reconnectIntervalMs", async () => {
    const { rt, pusher } = setup({ reconnectIntervalMs: 20 });
    rt.subscribe("private-admin", {});
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.drop();
    await waitFor(() => (pusher.connects ?? 0) >= 2, { what: "two reconnect attempts" });
    assert.equal(pusher.disconnects, pusher.connects);
    assert.equal(rt.state, "polling");
    await pusher.open();
    await waitFor(() => rt.state === "live");
    const attempts = pusher.connects;
    await new Promise((resolve) => setTimeout(resolve, 60));
    assert.equal(pusher.connects, attempts, "kept reconnecting while connected");
  });

  test("goes polling on unavailable/failed even before the first connection", async () => {
    const { rt, pusher } = setup();
    rt.subscribe("private-admin", {});
    pusher.drop("connecting");
    assert.equal(rt.state, "connecting");
    pusher.drop("unavailable");
    assert.equal(rt.state, "polling");
  });

  test("catches up after a reconnect, holding live events so nothing is late, early or twice", async () => {
    const { rt, worker, pusher, states } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    rt.subscribe("private-seller-s1", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.live("private-admin", "new-order", worker.record("private-admin", "new-order", "a1"));
    // History answers nothing until released: the polls and the catch-up wait for it.
    let release;
    worker.gate = new Promise((resolve) => (release = resolve));
    pusher.drop("unavailable");
    assert.equal(rt.state, "polling");
    worker.record("private-admin", "new-order", "a2");
    worker.record("private-seller-s1", "new-order", "s1");
    const reconnect = pusher.open();
    assert.equal(rt.state, "catching-up");
    // Live events arrive while history is still being read: held, not delivered.
    const a3 = worker.record("private-admin", "new-order", "a3");
    pusher.live("private-admin", "new-order", a3);
    pusher.live("private-admin", "new-order", a3); // and a repeat
    assert.deepEqual(ids(), ["a1"]);
    worker.gate = null;
    release();
    await reconnect;
    await waitFor(() => rt.state === "live", { what: "live after catch-up" });
    const admin = ids().filter((id) => id.startsWith("a"));
    assert.deepEqual(admin, ["a1", "a2", "a3"]);
    assert.deepEqual(ids().filter((id) => id.startsWith("s")), ["s1"]);
    assert.deepEqual(states.slice(-3), ["polling", "catching-up", "live"]);
    // Live again: the next event is delivered immediately.
    pusher.live("private-admin", "new-order", worker.record("private-admin", "new-order", "a4"));
    assert.equal(ids().at(-1), "a4");
  });

  test("waits for an entry still being written instead of skipping it", async () => {
    const { rt, worker, pusher } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.drop();
    const inFlight = worker.reserve("private-admin", "new-order", "b1");
    worker.record("private-admin", "new-order", "b2");
    await new Promise((resolve) => setTimeout(resolve, 60)); // a few polls see the hole
    assert.deepEqual(ids(), []);
    inFlight.reveal();
    await waitFor(() => ids().length === 2, { what: "both after the hole fills" });
    assert.deepEqual(ids(), ["b1", "b2"]);
  });

  test("is offline while the worker cannot be reached either, polling again once it can", async () => {
    const { rt, worker, pusher, errors } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    worker.down = true;
    pusher.drop();
    await waitFor(() => rt.state === "offline", { what: "offline" });
    assert.ok(errors.some((e) => e.error instanceof TypeError && e.channel === "private-admin"));
    worker.record("private-admin", "new-user", "u1");
    worker.down = false;
    await waitFor(() => rt.state === "polling" && ids().length === 1, { what: "polling again" });
    assert.deepEqual(ids(), ["u1"]);
  });
});

describe("cursors", () => {
  test("a new subscription starts from now: older history is not delivered", async () => {
    const { rt, worker, pusher } = setup();
    for (const id of ["old1", "old2", "old3", "old4"]) worker.record("private-admin", "new-user", id);
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    await waitFor(() => rt.cursor("private-admin") === formatCursor(4), { what: "the baseline" });
    pusher.drop("unavailable");
    worker.record("private-admin", "new-user", "new1");
    await waitFor(() => ids().length === 1, { what: "new1" });
    assert.deepEqual(ids(), ["new1"]);
  });

  test("an empty channel's first events are delivered from the start", async () => {
    const { rt, worker, pusher } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers);
    await waitFor(() => worker.requests.some((r) => r.path.startsWith("/channels/")));
    pusher.drop("unavailable");
    worker.record("private-admin", "new-user", "first");
    await waitFor(() => ids().length === 1, { what: "first" });
    assert.deepEqual(ids(), ["first"]);
  });

  test("storage keeps the last cursor, and a new client resumes after it", async () => {
    const storage = new MemoryStorage();
    const first = setup({ storage });
    first.rt.subscribe("private-admin", {});
    await first.pusher.open();
    await waitFor(() => first.rt.state === "live");
    first.pusher.live("private-admin", "new-user", first.worker.record("private-admin", "new-user", "e1"));
    assert.equal(storage.getItem("bazaar-fanout:cursor:private-admin"), formatCursor(1));
    first.rt.close();

    const second = setup({ storage });
    second.worker.history = first.worker.history;
    second.worker.counters = first.worker.counters;
    second.worker.record("private-admin", "new-user", "e2");
    const { ids, handlers } = recorder();
    second.rt.subscribe("private-admin", handlers);
    await second.pusher.open();
    await waitFor(() => second.rt.state === "live");
    assert.deepEqual(ids(), ["e2"]);
  });

  test("a 410 calls onGap and continues from the newest entry", async () => {
    const { rt, worker, pusher, gaps } = setup();
    for (let i = 1; i <= 6; i += 1) worker.record("private-admin", "new-user", `old${i}`);
    worker.keptFrom.set("private-admin", 5); // 1-4 are past the retention
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", handlers, { after: formatCursor(2) });
    pusher.drop("unavailable");
    await waitFor(() => gaps.length === 1, { what: "onGap" });
    assert.deepEqual(gaps, [{ channel: "private-admin", reason: "cursor_expired" }]);
    await waitFor(() => rt.cursor("private-admin") === formatCursor(6));
    worker.record("private-admin", "new-user", "fresh");
    await waitFor(() => ids().length === 1, { what: "fresh" });
    assert.deepEqual(ids(), ["fresh"]);
  });

  test("compareCursors orders the worker's cursors and longer strings after shorter", () => {
    assert.ok(compareCursors(formatCursor(9), formatCursor(10)) < 0);
    assert.ok(compareCursors("10", "9") > 0);
    assert.equal(compareCursors(formatCursor(3), formatCursor(3)), 0);
  });
});

describe("errors, unsubscribing and closing", () => {
  test("a refused subscription is reported with its status and not polled", async () => {
    const { rt, worker, pusher, errors } = setup();
    worker.refuse.set("private-user-12", 403);
    rt.subscribe("private-user-12", {});
    await pusher.open();
    await waitFor(() => errors.length > 0, { what: "the refusal" });
    assert.ok(errors[0].error instanceof HttpError);
    assert.equal(errors[0].error.status, 403);
    assert.equal(errors[0].channel, "private-user-12");
    assert.equal(rt.state, "live");
    const before = worker.requests.filter((r) => r.path.startsWith("/channels/")).length;
    pusher.drop();
    await new Promise((resolve) => setTimeout(resolve, 60));
    assert.equal(worker.requests.filter((r) => r.path.startsWith("/channels/")).length, before);
  });

  test("a throwing handler is reported and the other handlers still run", async () => {
    const { rt, worker, pusher, errors } = setup();
    const { ids, handlers } = recorder();
    rt.subscribe("private-admin", { "new-user": () => { throw new Error("boom"); } });
    rt.subscribe("private-admin", handlers);
    await pusher.open();
    await waitFor(() => rt.state === "live");
    pusher.live("private-admin", "new-user", worker.record("private-admin", "new-user", "e1"));
    assert.deepEqual(ids(), ["e1"]);
    assert.equal(errors.at(-1).error.message, "boom");
  });

  test("the channel is left when its last handlers go; close() stops everything", async () => {
    const { rt, worker, pusher, states } = setup();
    const first = rt.subscribe("private-admin", {});
    const second = rt.subscribe("private-admin", {});
    first();
    assert.deepEqual(pusher.unsubscribed, []);
    second();
    second();
    assert.deepEqual(pusher.unsubscribed, ["private-admin"]);
    rt.subscribe("private-order-o1", {});
    pusher.drop("unavailable");
    rt.close();
    assert.equal(rt.state, "offline");
    assert.equal(states.at(-1), "offline");
    assert.ok(pusher.disconnected);
    const count = worker.requests.length;
    await new Promise((resolve) => setTimeout(resolve, 60));
    assert.equal(worker.requests.length, count, "still polling after close()");
    assert.throws(() => rt.subscribe("public", {}), /closed/);
  });

  test("rejects missing or invalid options", () => {
    assert.throws(() => createRealtime({ authEndpoint: "http://w" }), /key/);
    assert.throws(() => createRealtime({ key: "k" }), /authEndpoint/);
    assert.throws(
      () => createRealtime({ key: "k", authEndpoint: "http://w", pollIntervalMs: 0, Pusher: FakePusher }),
      /pollIntervalMs/,
    );
  });

  test("the 410 error class and the state list are exported", () => {
    assert.ok(new CursorExpired({}, "u") instanceof HttpError);
    assert.deepEqual(STATES, ["connecting", "live", "polling", "catching-up", "offline"]);
  });
});

describe("SeenSet", () => {
  test("remembers at most capacity ids, forgetting the least recently seen", () => {
    const seen = new SeenSet(2);
    assert.equal(seen.add("a"), true);
    assert.equal(seen.add("b"), true);
    assert.equal(seen.add("a"), false); // refreshed
    assert.equal(seen.add("c"), true); // evicts b
    assert.equal(seen.has("b"), false);
    assert.equal(seen.has("a"), true);
    assert.equal(seen.size, 2);
  });
});
