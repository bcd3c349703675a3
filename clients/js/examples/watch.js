// Watch channels through the client and print one JSON line per happening:
//   {"type":"state","state":"polling","previous":"live"}
//   {"type":"event","channel":"private-admin","event":"new-order","eventId":"…","cursor":"…","source":"live"}
//   {"type":"raw","channel":…,"event":…,"eventId":…}     every live arrival, repeats included
//   {"type":"gap","channel":…,"reason":"cursor_expired"}
//   {"type":"error","channel":…,"message":…,"status":403}
//
//   WORKER_URL=http://127.0.0.1:8000 SOKETI_KEY=app-key SOKETI_HOST=127.0.0.1 SOKETI_PORT=6001 \
//   TOKEN=<JWT> CHANNELS=private-admin,public node examples/watch.js
//
// Optional: POLL_MS (default 10000), RECONNECT_MS (5000), HISTORY_LIMIT (100), FORCE_TLS=1. Stops on SIGINT,
// SIGTERM or when stdin closes.

import { createRealtime } from "../src/index.js";

const env = process.env;
const required = ["WORKER_URL", "SOKETI_KEY", "SOKETI_HOST", "SOKETI_PORT", "CHANNELS"];
const missing = required.filter((name) => !env[name]);
if (missing.length > 0) {
  console.error(`missing environment: ${missing.join(", ")}`);
  process.exit(2);
}

function print(line) {
  process.stdout.write(`${JSON.stringify({ ...line, at: Date.now() })}\n`);
}

const rt = createRealtime({
  key: env.SOKETI_KEY,
  wsHost: env.SOKETI_HOST,
  wsPort: Number(env.SOKETI_PORT),
  forceTLS: env.FORCE_TLS === "1",
  authEndpoint: env.WORKER_URL,
  getToken: () => env.TOKEN,
  pollIntervalMs: Number(env.POLL_MS ?? 10000),
  reconnectIntervalMs: Number(env.RECONNECT_MS ?? 5000),
  historyLimit: Number(env.HISTORY_LIMIT ?? 100),
  pusherOptions: env.FORCE_TLS === "1" ? {} : { enabledTransports: ["ws"] },
  onStateChange: (state, previous) => print({ type: "state", state, previous }),
  onGap: (channel, { reason }) => print({ type: "gap", channel, reason }),
  onError: (error, channel) =>
    print({ type: "error", channel: channel ?? null, message: error.message, status: error.status }),
});

for (const channel of env.CHANNELS.split(",").filter(Boolean)) {
  rt.subscribe(channel, {
    "*": (data, meta) =>
      print({
        type: "event",
        channel,
        event: meta.event,
        eventId: meta.eventId,
        cursor: meta.cursor,
        source: meta.source,
      }),
  });
  // Every live arrival, before the client drops repeats, to show what it dropped.
  rt.pusher.channel(channel)?.bind_global((event, data) => {
    if (!event.startsWith("pusher")) {
      print({ type: "raw", channel, event, eventId: data?.eventId ?? null });
    }
  });
}
print({ type: "started", channels: env.CHANNELS.split(",") });

function stop() {
  rt.close();
  process.exit(0);
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.resume();
