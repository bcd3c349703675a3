// The node-direct baseline: the seed's way in Node, one `pusher` trigger per event, 32 in
// flight over a keep-alive http.Agent. Driven by bench/node_direct.py:
//   argv: <events.json> <sent.json>; env: SOKETI_{APP_ID,KEY,SECRET,HOST,PORT}, IN_FLIGHT.
//   events.json: [[channel, eventName, data], ...] (data without `timestamp`)
//   stdout "ready" once loaded; stdin "go" starts sending; stdout "done" when every
//   trigger has been answered, after writing sent.json: {"sentMs": [...], "failures": [...]}
//   (send wall times in ms, in the order of events.json). Exits when stdin closes, so the
//   bench can read this process's CPU time in /proc after "done".
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const readline = require("node:readline");
const Pusher = require("pusher");

const [eventsPath, sentPath] = process.argv.slice(2);
const env = process.env;
const inFlight = Number(env.IN_FLIGHT || 32);
const events = JSON.parse(fs.readFileSync(eventsPath, "utf8"));
const agent = new http.Agent({ keepAlive: true, maxSockets: inFlight });
const pusher = new Pusher({
  appId: env.SOKETI_APP_ID,
  key: env.SOKETI_KEY,
  secret: env.SOKETI_SECRET,
  host: env.SOKETI_HOST,
  port: env.SOKETI_PORT,
  useTLS: false,
  agent,
});

async function sendAll() {
  const sentMs = new Array(events.length);
  const failures = [];
  let next = 0;
  async function sender() {
    while (next < events.length) {
      const index = next++;
      const [channel, name, data] = events[index];
      const now = Date.now();
      sentMs[index] = now;
      try {
        const response = await pusher.trigger(channel, name, { ...data, timestamp: now });
        await response.text();
      } catch (error) {
        failures.push(String(error && error.status ? `HTTP ${error.status}` : error));
      }
    }
  }
  await Promise.all(Array.from({ length: inFlight }, sender));
  fs.writeFileSync(sentPath, JSON.stringify({ sentMs, failures }));
  process.stdout.write("done\n");
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (line.trim() === "go") sendAll();
});
input.on("close", () => {
  agent.destroy();
  process.exit(0);
});
process.stdout.write("ready\n");
