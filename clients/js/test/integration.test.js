// Against the real worker and Soketi; run by tests/integration/test_js_client.py, which sets
// FANOUT_TEST_* (skipped otherwise). The outage scenario is driven from pytest through
// examples/watch.js, because it stops and restarts Soketi.

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { createRealtime } from "../src/index.js";
import { waitFor } from "./fakes.js";

const env = process.env;
const configured = Boolean(env.FANOUT_TEST_WORKER_URL);
const skip = configured ? false : "FANOUT_TEST_WORKER_URL is not set (run through pytest)";
const open = [];

function client(token) {
  const calls = [];
  const errors = [];
  const rt = createRealtime({
    key: env.FANOUT_TEST_SOKETI_KEY,
    wsHost: env.FANOUT_TEST_SOKETI_HOST,
    wsPort: Number(env.FANOUT_TEST_SOKETI_PORT),
    authEndpoint: env.FANOUT_TEST_WORKER_URL,
    getToken: () => token,
    pusherOptions: { enabledTransports: ["ws"] },
    fetch: async (url, init) => {
      const response = await globalThis.fetch(url, init);
      calls.push({ path: new URL(url).pathname, status: response.status });
      return response;
    },
    onError: (error, channel) => errors.push({ status: error.status, channel }),
  });
  open.push(rt);
  return { rt, calls, errors };
}

afterEach(() => {
  while (open.length) open.pop().close();
});

describe("the real worker and Soketi", { skip }, () => {
  test("an admin subscribes to private-admin through /pusher/auth and reads its history", async () => {
    const { rt, calls, errors } = client(env.FANOUT_TEST_ADMIN_TOKEN);
    rt.subscribe("private-admin", {});
    await waitFor(() => rt.state === "live", { timeoutMs: 15000, what: "live" });
    assert.equal(rt.pusher.channel("private-admin").subscribed, true);
    assert.deepEqual(errors, []);
    assert.ok(calls.some((c) => c.path === "/pusher/auth" && c.status === 200));
    assert.ok(calls.some((c) => c.path === "/channels/private-admin/events" && c.status === 200));
  });

  test("a user gets their own channel but 403 for private-admin, live and history", async () => {
    const { rt, calls, errors } = client(env.FANOUT_TEST_USER_TOKEN);
    const own = `private-user-${env.FANOUT_TEST_USER_ID}`;
    rt.subscribe(own, {});
    rt.subscribe("private-admin", {});
    // Refused twice: the history read that sets its starting point, and the subscription.
    await waitFor(() => rt.state === "live" && errors.length >= 2, {
      timeoutMs: 15000,
      what: "live with private-admin refused",
    });
    assert.equal(rt.pusher.channel(own).subscribed, true);
    assert.equal(rt.pusher.channel("private-admin").subscribed, false);
    assert.ok(errors.every((e) => e.channel === "private-admin" && e.status === 403), JSON.stringify(errors));
    assert.ok(calls.some((c) => c.path === "/channels/private-admin/events" && c.status === 403));
  });

  test("a token signed with another secret is refused with 401", async () => {
    const { rt, errors } = client(env.FANOUT_TEST_FORGED_TOKEN);
    rt.subscribe("private-admin", {});
    await waitFor(() => errors.length >= 2, { timeoutMs: 15000, what: "the refusals" });
    assert.ok(errors.every((e) => e.status === 401), JSON.stringify(errors));
  });

  test("signin() is signed by /pusher/user-auth", async () => {
    const { rt, calls } = client(env.FANOUT_TEST_USER_TOKEN);
    await waitFor(() => rt.pusher.connection.state === "connected", { timeoutMs: 15000 });
    rt.signin();
    await waitFor(() => calls.some((c) => c.path === "/pusher/user-auth"), { timeoutMs: 5000 });
    assert.equal(calls.find((c) => c.path === "/pusher/user-auth").status, 200);
  });
});
