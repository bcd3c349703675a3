// Entry point: tokens from the address's fragment (#admin=…&seller=…&customer=…&chat=…) or the
// form, Soketi's address from /console/config.json, then the panes.
import { startPanes } from "/console/static/panes.js";
import { startOps } from "/console/static/ops.js";

const FIELDS = ["admin", "seller", "customer", "chat"];
const query = new URLSearchParams(window.location.search);
const options = {
  pollMs: Number(query.get("poll_ms") ?? 3000),
  reconnectMs: Number(query.get("reconnect_ms") ?? 3000),
  opsMs: Number(query.get("ops_ms") ?? 3000),
};
let running = [];
let ops = null;

function readFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  return Object.fromEntries(FIELDS.map((f) => [f, params.get(f) ?? ""]));
}

async function start(tokens) {
  for (const realtime of running) realtime.close();
  ops?.close();
  const config = await (await fetch("/console/config.json")).json();
  running = startPanes(config, tokens, options);
  ops = tokens.admin ? startOps(tokens.admin, { intervalMs: options.opsMs }) : null;
  document.body.dataset.ready = "true";
}

const form = document.getElementById("tokens-form");
const tokens = readFragment();
for (const field of FIELDS) form.elements[field].value = tokens[field];
if (!tokens.admin && !tokens.seller && !tokens.customer) document.getElementById("session").open = true;
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const fromForm = Object.fromEntries(FIELDS.map((f) => [f, form.elements[f].value.trim()]));
  start(fromForm);
});
start(tokens);
