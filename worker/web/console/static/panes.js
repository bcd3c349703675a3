// The three live panes: each its own createRealtime (clients/js) with its own token, so each
// shows its own connection state exactly as that user's browser would.
import { createRealtime } from "/console/vendor/realtime/index.js";

const MAX_ROWS = 60;
const TYPING_TIMEOUT_MS = 8000;
const STATE_TEXT = {
  connecting: "connecting",
  live: "live",
  "catching-up": "catching up",
  polling: "polling fallback",
  offline: "offline",
};

/** The `sub` and `role` of a JWT (read only for display: the worker verifies it). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function clock(timestamp) {
  const date = new Date(typeof timestamp === "number" ? timestamp : Date.now());
  return el("time", { datetime: date.toISOString() }, date.toLocaleTimeString());
}

function money(amount, currency) {
  return typeof amount === "number" ? `${currency ?? "INR"} ${amount.toFixed(2)}` : "";
}

/** One line of text for an event, from the fields the contract's payloads carry. */
export function summary(event, d) {
  switch (event) {
    case "new-order":
      return `${d.orderId ?? ""} from ${d.customerName ?? d.customerId ?? "?"} ${money(d.shopTotal ?? d.totalPrice, d.currency)}`;
    case "order-update":
      return `${d.orderId ?? ""} is ${String(d.status ?? "").replace(/_/g, " ")}${d.message ? ` (${d.message})` : ""}`;
    case "payment-received":
      return `${money(d.amount, d.currency)} for ${d.orderId ?? "?"} by ${d.method ?? "?"}`;
    case "stock-low":
      return `${d.productName ?? d.productId}: ${d.currentStock} left (threshold ${d.threshold})`;
    case "new-message":
      return `${d.senderName ?? d.senderId ?? "?"}: ${d.content ?? ""}`;
    case "new-user":
    case "new-seller":
      return `${d.name ?? d.userId ?? d.shopId ?? ""} ${d.email ?? ""}`;
    case "system-alert":
      return `[${d.severity ?? "info"}] ${d.title ?? ""}: ${d.message ?? ""}`;
    case "user-online":
    case "user-offline":
      return `${d.name ?? d.userId ?? d.accountId ?? ""}`;
    case "product-approved":
    case "product-rejected":
      return `${d.productName ?? d.productId ?? ""} ${d.reason ?? ""}`;
    default:
      return JSON.stringify(d).slice(0, 120);
  }
}

/** Prepend one event row (newest on top) and keep the list short. */
function addRow(list, event, data, meta) {
  const row = el(
    "li",
    { "data-event": event, "data-event-id": meta.eventId ?? data.eventId ?? "" },
    clock(data.timestamp),
    el("span", { class: "tag" }, event),
    summary(event, data),
    meta.source === "history" ? el("span", { class: "via" }, "(polled)") : null,
  );
  list.prepend(row);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function showState(pane, state) {
  const badge = pane.querySelector(".state");
  badge.dataset.state = state;
  badge.textContent = STATE_TEXT[state] ?? state;
}

function connect(pane, config, token, options) {
  const realtime = createRealtime({
    key: config.key,
    wsHost: config.wsHost,
    wsPort: config.wsPort,
    forceTLS: config.forceTLS,
    authEndpoint: window.location.origin,
    getToken: () => token,
    pollIntervalMs: options.pollMs,
    reconnectIntervalMs: options.reconnectMs,
    pusherOptions: { enabledTransports: config.forceTLS ? ["wss"] : ["ws"] },
    onStateChange: (state) => showState(pane, state),
    onError: (error, channel) => console.warn("realtime", channel ?? "", error.message),
  });
  showState(pane, realtime.state);
  return realtime;
}

function adminPane(config, token, options) {
  const pane = document.getElementById("admin");
  const list = document.getElementById("admin-events");
  const online = document.getElementById("admin-online");
  const realtime = connect(pane, config, token, options);
  const onlineIds = new Map();
  const renderOnline = () => {
    online.replaceChildren(...[...onlineIds.values()].map((name) => el("li", {}, name)));
  };
  const row = (data, meta) => addRow(list, meta.event, data, meta);
  // The DLQ depth the ops pane just read live wins over stats-update's sampled one.
  const dlqFigure = document.getElementById("admin-dlq");
  let liveDlq = false;
  document.addEventListener("console:dlq-depth", (event) => {
    liveDlq = true;
    dlqFigure.textContent = String(event.detail);
  });
  realtime.subscribe("private-admin", {
    "new-order": row,
    "order-update": row,
    "payment-received": row,
    "new-user": row,
    "new-seller": row,
    "system-alert": row,
    "user-online": (data, meta) => {
      onlineIds.set(data.userId ?? data.accountId ?? data.eventId, data.name ?? data.userId ?? "?");
      renderOnline();
      row(data, meta);
    },
    "user-offline": (data, meta) => {
      onlineIds.delete(data.userId ?? data.accountId ?? data.eventId);
      renderOnline();
      row(data, meta);
    },
    "stats-update": (data) => {
      const perMinute = Object.values(data.eventsPerMinute ?? {}).reduce((a, b) => a + b, 0);
      document.getElementById("admin-online-count").textContent = data.accountsOnline ?? "–";
      document.getElementById("admin-rate").textContent = String(perMinute);
      if (!liveDlq) dlqFigure.textContent = data.dlqDepth ?? "–";
    },
  });
  realtime.subscribe("public", { "system-alert": row });
  return realtime;
}

function sellerPane(config, token, options) {
  const pane = document.getElementById("seller");
  const list = document.getElementById("seller-events");
  const shop = claims(token).sub ?? "?";
  document.getElementById("seller-title").textContent = `Seller · ${shop}`;
  const realtime = connect(pane, config, token, options);
  realtime.subscribe(`private-seller-${shop}`, { "*": (data, meta) => addRow(list, meta.event, data, meta) });
  return realtime;
}

function customerPane(config, token, chat, options) {
  const pane = document.getElementById("customer");
  const updates = document.getElementById("customer-events");
  const transcript = document.getElementById("customer-chat");
  const typing = document.getElementById("customer-typing");
  const me = claims(token).sub ?? "?";
  document.getElementById("customer-title").textContent = `Customer · ${me}`;
  const realtime = connect(pane, config, token, options);
  let typingTimer = null;
  const stopTyping = () => {
    clearTimeout(typingTimer);
    typing.hidden = true;
    typing.textContent = "";
  };
  realtime.subscribe(`private-user-${me}`, {
    "*": (data, meta) => {
      // Messages of the conversation shown below arrive there too (its own channel).
      if (meta.event === "new-message" && chat && data.conversationId === chat) return;
      addRow(updates, meta.event, data, meta);
    },
  });
  if (chat) {
    document.getElementById("customer-chat-title").textContent = `Chat · ${chat}`;
    realtime.subscribe(`private-chat-${chat}`, {
      "new-message": (data, meta) => {
        stopTyping();
        const mine = data.senderId === me;
        transcript.append(
          el(
            "li",
            { class: mine ? "mine" : null, "data-event-id": meta.eventId ?? "", lang: /[\u0900-\u097F]/.test(data.content ?? "") ? "hi" : null },
            clock(data.timestamp),
            el("strong", {}, `${mine ? "You" : (data.senderName ?? data.senderId)}: `),
            data.content ?? "",
          ),
        );
        while (transcript.children.length > MAX_ROWS) transcript.firstElementChild.remove();
        transcript.scrollTop = transcript.scrollHeight;
      },
      "typing-start": (data) => {
        if (data.userId === me) return;
        typing.textContent = `${data.userName ?? data.userId ?? "Someone"} is typing…`;
        typing.hidden = false;
        clearTimeout(typingTimer);
        typingTimer = setTimeout(stopTyping, TYPING_TIMEOUT_MS);
      },
      "typing-stop": (data) => {
        if (data.userId !== me) stopTyping();
      },
    });
  }
  return realtime;
}

/** Start every pane that has a token; returns the clients, to close on reconnect. */
export function startPanes(config, tokens, options) {
  const started = [];
  if (tokens.admin) started.push(adminPane(config, tokens.admin, options));
  if (tokens.seller) started.push(sellerPane(config, tokens.seller, options));
  if (tokens.customer) started.push(customerPane(config, tokens.customer, tokens.chat, options));
  return started;
}
