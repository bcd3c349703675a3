// The ops pane: polls /console/api/ops and /console/api/dlq with the admin token; DLQ replay
// and purge (per message or per filter) ask for confirmation first; a test-event form.
const OUTCOMES = [
  ["delivered", "#1d6b2c"],
  ["retried", "#8a4b00"],
  ["dead_lettered", "#a11d1d"],
  ["duplicate", "#4a4a4a"],
];
const EVENT_TYPES = {
  "system.alert": { severity: "info", title: "Console test", message: "Sent from the ops pane", audience: "admin" },
  "order.created": {
    orderId: "ord-console-1",
    customerId: "user-aarav",
    items: [{ productId: "prod-masala-chai", shopId: "shop-chai", quantity: 1, price: 180 }],
    totalPrice: 180,
    currency: "INR",
  },
  "product.stock_low": { productId: "prod-masala-chai", currentStock: 2, threshold: 5 },
  "user.registered": { userId: "user-aarav" },
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return `${(seconds / size).toFixed(1)} ${unit}`;
  }
  return `${Math.round(seconds)} s`;
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `≤ ${Math.round(seconds * 1000)} ms` : `≤ ${seconds} s`;
}

/** Ask through the page's <dialog>; resolves true only on "Confirm". */
function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

export function startOps(token, { intervalMs = 3000 } = {}) {
  // The DLQ's depth as /console/api/dlq last read it live: the one number the ops figure, the
  // chip and the admin pane show (the sampled gauge lags the table by up to a sample).
  let dlqDepth = null;
  const showDlqDepth = () => {
    if (dlqDepth === null) return;
    document.getElementById("ops-dlq-depth").textContent = String(dlqDepth);
    const chip = document.querySelector("#ops-circuits [data-queue='dlq']");
    if (chip) chip.textContent = `dlq: ${dlqDepth} ready`;
    document.dispatchEvent(new CustomEvent("console:dlq-depth", { detail: dlqDepth }));
  };
  const status = document.getElementById("ops-status");
  const say = (text, error = false) => {
    status.textContent = text;
    status.classList.toggle("error", error);
  };

  async function api(path, body) {
    const response = await fetch(`/console/api/${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${response.status} ${answer.error ?? ""} ${answer.detail ?? ""}`.trim());
    return answer;
  }

  function drawChart(points) {
    const svg = document.getElementById("ops-chart");
    const width = 400, height = 120, pad = 4;
    const rates = points.map((p) => Object.fromEntries(OUTCOMES.map(([o]) => [o, (p.outcomes[o] ?? 0) / Math.max(p.seconds, 0.001)])));
    const top = Math.max(1, ...rates.flatMap((r) => Object.values(r)));
    const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, rates.length - 1);
    const y = (v) => height - pad - (v / top) * (height - 2 * pad);
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    for (const [outcome, colour] of OUTCOMES) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", colour);
      line.setAttribute("stroke-width", "2");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      line.setAttribute("points", rates.map((r, i) => `${x(i).toFixed(1)},${y(r[outcome]).toFixed(1)}`).join(" "));
      svg.append(line);
    }
    const last = rates.at(-1) ?? {};
    document.getElementById("ops-chart-desc").textContent =
      `Per second (chart top ${top.toFixed(1)}/s), latest: ` + OUTCOMES.map(([o]) => `${o.replace("_", " ")} ${(last[o] ?? 0).toFixed(1)}`).join(", ") +
      " (green delivered, orange retried, red dead-lettered, grey duplicate)";
  }

  async function refreshOps() {
    const ops = await api("ops");
    drawChart(ops.series);
    document.getElementById("ops-age-p50").textContent = ms(ops.eventAge.p50);
    document.getElementById("ops-age-p95").textContent = ms(ops.eventAge.p95);
    document.getElementById("ops-in-flight").textContent = String(ops.inFlight);
    const consuming = document.getElementById("ops-consuming");
    consuming.dataset.state = ops.consuming ? "live" : "offline";
    consuming.textContent = ops.consuming ? "consuming" : "not consuming";
    document.getElementById("ops-circuits").replaceChildren(
      ...Object.entries(ops.circuits).map(([name, state]) =>
        el("li", { class: state === "open" ? "open" : "closed", "data-downstream": name }, `${name}: circuit ${state}`),
      ),
      ...Object.entries({ ...ops.queues, ...(dlqDepth === null ? {} : { dlq: dlqDepth }) }).map(([queue, depth]) =>
        el("li", { "data-queue": queue }, `${queue}: ${depth} ready`),
      ),
    );
  }

  async function act(kind, selection, description) {
    const verb = kind === "replay" ? "Replay" : "Purge for good";
    if (!(await confirmAction(`${verb} ${description}?`))) {
      say(`${kind} cancelled`);
      return;
    }
    try {
      const outcome = await api(`dlq/${kind}`, selection);
      say(`${kind}: ${outcome.done} of ${outcome.selected} done${outcome.failed.length ? `, ${outcome.failed.length} failed` : ""}`);
    } catch (error) {
      say(`${kind} failed: ${error.message}`, true);
    }
    await refreshDlq();
  }

  async function refreshDlq() {
    const { letters, total, depth } = await api("dlq");
    document.getElementById("dlq-count").textContent = `(${total})`;
    dlqDepth = depth ?? total;
    showDlqDepth();
    const rows = letters.map((letter) => {
      const replay = el("button", { type: "button", "aria-label": `Replay ${letter.type ?? "message"} ${letter.id}` }, "Replay");
      const purge = el("button", { type: "button", class: "danger", "aria-label": `Purge ${letter.type ?? "message"} ${letter.id}` }, "Purge");
      replay.addEventListener("click", () => act("replay", { ids: [letter.id] }, `message ${letter.id} (${letter.type ?? "no type"})`));
      purge.addEventListener("click", () => act("purge", { ids: [letter.id] }, `message ${letter.id} (${letter.type ?? "no type"})`));
      return el(
        "tr",
        { "data-id": letter.id },
        el("td", {}, letter.reason),
        el("td", {}, letter.type ?? "–"),
        el("td", {}, age(letter.ageSeconds)),
        el("td", {}, String(letter.attempts)),
        el("td", {}, letter.error.slice(0, 160)),
        el("td", {}, replay, " ", purge),
      );
    });
    document.querySelector("#dlq-table tbody").replaceChildren(...rows);
  }

  const filter = document.getElementById("dlq-filter");
  for (const button of filter.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => {
      const reason = filter.reason.value.trim();
      const type = filter.type.value.trim();
      if (!reason && !type) {
        say("give a reason or a type to act on matching messages", true);
        return;
      }
      const description = `every dead letter with ${[reason && `reason ${reason}`, type && `type ${type}`].filter(Boolean).join(" and ")}`;
      act(button.dataset.action, { reason: reason || undefined, type: type || undefined }, description);
    });
  }
  document.getElementById("dlq-refresh").addEventListener("click", () => refreshDlq().catch((e) => say(e.message, true)));

  const select = document.getElementById("publish-type");
  const data = document.getElementById("publish-data");
  select.replaceChildren(...Object.keys(EVENT_TYPES).map((type) => el("option", { value: type }, type)));
  const fill = () => { data.value = JSON.stringify(EVENT_TYPES[select.value], null, 1); };
  select.addEventListener("change", fill);
  fill();
  document.getElementById("publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = JSON.parse(data.value);
    } catch (error) {
      say(`the data is not JSON: ${error.message}`, true);
      return;
    }
    try {
      const answer = await api("publish", { type: select.value, data: payload });
      say(`published ${answer.type} ${answer.id}`);
    } catch (error) {
      say(`publish refused: ${error.message}`, true);
    }
  });

  const tick = async () => {
    try {
      await Promise.all([refreshOps(), refreshDlq()]);
    } catch (error) {
      say(`ops: ${error.message}`, true);
    }
  };
  tick();
  const timer = setInterval(tick, intervalMs);
  return { refresh: tick, close: () => clearInterval(timer) };
}
