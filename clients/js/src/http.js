// The worker's browser-side HTTP endpoints (CONTRACT.md §6): the two pusher-js sign-in
// calls and the channel history used for polling and catch-up.

/** The worker answered with a status other than 200. */
export class HttpError extends Error {
  constructor(status, body, url) {
    const reason = body && typeof body === "object" && body.error ? `: ${body.error}` : "";
    super(`${url} answered ${status}${reason}`);
    this.name = "HttpError";
    /** The HTTP status. */
    this.status = status;
    /** The parsed JSON body (or the text when it is not JSON). */
    this.body = body;
  }
}

/** 410 from the history endpoint: the cursor is older than the worker's retention. */
export class CursorExpired extends HttpError {
  constructor(body, url) {
    super(410, body, url);
    this.name = "CursorExpired";
  }
}

/** True when `error` means the worker could not be reached or could not answer (not a refusal). */
export function isUnavailable(error) {
  return !(error instanceof HttpError) || error.status >= 500 || error.status === 429;
}

/**
 * Compare two cursors: negative, zero or positive. Cursors are opaque strings that increase
 * per channel; the worker writes fixed-width decimals, and a longer string is later, so this
 * orders them by length, then character by character.
 */
export function compareCursors(a, b) {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The later of two cursors, either of which may be null. */
export function laterCursor(a, b) {
  if (a == null) return b ?? null;
  if (b == null) return a;
  return compareCursors(a, b) >= 0 ? a : b;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function createHttp({ baseUrl, getToken, fetch, credentials }) {
  const base = String(baseUrl).replace(/\/+$/, "");

  async function headers(extra = {}) {
    const token = getToken ? await getToken() : undefined;
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
  }

  async function call(url, init) {
    const response = await fetch(url, { ...init, credentials });
    const body = await readBody(response);
    if (response.status === 410) throw new CursorExpired(body, url);
    if (response.status !== 200) throw new HttpError(response.status, body, url);
    return body;
  }

  async function post(path, fields) {
    return call(`${base}${path}`, {
      method: "POST",
      headers: await headers({ "Content-Type": "application/x-www-form-urlencoded" }),
      body: new URLSearchParams(fields).toString(),
    });
  }

  return {
    /** `POST /pusher/auth`: `{auth}` for a private channel. */
    authorizeChannel(socketId, channelName) {
      return post("/pusher/auth", { socket_id: socketId, channel_name: channelName });
    },

    /** `POST /pusher/user-auth`: `{auth, user_data}` for `pusher:signin`. */
    authenticateUser(socketId) {
      return post("/pusher/user-auth", { socket_id: socketId });
    },

    /** One page of `channel`'s history after `after` (from the oldest kept when null). */
    async history(channel, after, limit) {
      const query = new URLSearchParams({ limit: String(limit) });
      if (after != null) query.set("after", after);
      const url = `${base}/channels/${encodeURIComponent(channel)}/events?${query}`;
      const body = await call(url, { method: "GET", headers: await headers() });
      if (!body || !Array.isArray(body.events) || !("next" in body)) {
        throw new HttpError(200, body, `${url} (not a history page)`);
      }
      return body;
    },
  };
}
