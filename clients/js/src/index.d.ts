import type { Options as PusherOptions } from "pusher-js";

/** The pusher-js client class. */
type Pusher = import("pusher-js").default;

/**
 * The connection as the UI should show it:
 * - "connecting": the first WebSocket connection is being made;
 * - "live": connected and every channel has caught up;
 * - "catching-up": (re)connected, some channel is still fetching what it missed (its live
 *   events are held until then, so they arrive in order);
 * - "polling": no WebSocket; history is polled every `pollIntervalMs` (updates are late);
 * - "offline": no WebSocket and the worker cannot be reached either, or `close()` was called.
 */
export type RealtimeState = "connecting" | "live" | "polling" | "catching-up" | "offline";

export const STATES: readonly RealtimeState[];

/** Every payload the worker sends (CONTRACT.md §3) carries these, besides the event's data. */
export interface FanoutPayload {
  /** The envelope id: the same event never reaches a handler twice. */
  eventId: string;
  /** Opaque, increasing per channel; absent on ephemeral events (typing). */
  cursor?: string;
  /** `occurredAt` as epoch milliseconds. */
  timestamp: number;
  [field: string]: unknown;
}

export interface DeliveryMeta {
  channel: string;
  /** The Pusher event name, e.g. "new-order". */
  event: string;
  /** "live" from the WebSocket, "history" from polling or catch-up. */
  source: "live" | "history";
  cursor: string | null;
  eventId: string | null;
}

export type EventHandler<D = FanoutPayload> = (data: D, meta: DeliveryMeta) => void;

/** Handlers by Pusher event name; "*" receives every event of the channel. */
export type Handlers = { [event: string]: EventHandler<any> };

export interface SubscribeOptions {
  /**
   * Resume after this cursor: everything the channel's history holds after it is delivered
   * first. Default: the cursor kept in `storage`, else "from now".
   */
  after?: string;
}

/** Why a channel may have missed events; the UI should reload what it shows for it. */
export interface GapInfo {
  /** "cursor_expired": the history endpoint answered 410 (older than the retention);
   * "history_unavailable": the catch-up after a reconnect failed. */
  reason: "cursor_expired" | "history_unavailable";
  error: Error;
}

/** Web Storage (`localStorage`) or anything with the same two methods, sync or async. */
export interface CursorStorage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
}

/** The subset of a pusher-js constructor this client uses (tests inject a fake). */
export type PusherConstructor = new (key: string, options: PusherOptions) => Pusher;

export interface RealtimeOptions {
  /** Soketi app key (SOKETI_APP_KEY). */
  key: string;
  /** Soketi host and port for the WebSocket. */
  wsHost: string;
  wsPort: number;
  /** wss:// only. Default false. */
  forceTLS?: boolean;
  /**
   * The worker's base URL, e.g. "https://fanout.example.in": `${authEndpoint}/pusher/auth`,
   * `/pusher/user-auth` and `/channels/{channel}/events` are called there.
   */
  authEndpoint: string;
  /** The backend's session JWT, sent as `Authorization: Bearer`; omit to rely on a cookie. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** How often history is polled while the WebSocket is down. Default 10000. */
  pollIntervalMs?: number;
  /**
   * While polling, restart pusher-js's connection attempts this often (pusher-js alone
   * waits 15, 30, then 60 s between attempts); 0 leaves it to pusher-js. Default 5000.
   */
  reconnectIntervalMs?: number;
  /** Page size of history requests (the worker allows up to 500). Default 100. */
  historyLimit?: number;
  /** Default globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
  /** fetch's `credentials` for the worker's endpoints ("include" for a cross-origin cookie). Default "same-origin". */
  credentials?: RequestCredentials;
  /** Default: pusher-js (its Node build in Node, its web build under a bundler). */
  Pusher?: PusherConstructor;
  /** Keeps each channel's last cursor, so a reload resumes where it stopped. */
  storage?: CursorStorage;
  /** How many event ids each channel remembers to drop repeats. Default 1000. */
  dedupeSize?: number;
  /** How long a catch-up waits for an entry still being written before going on. Default 3000. */
  gapWaitMs?: number;
  /** Tries of the catch-up after a reconnect before reporting a gap. Default 3. */
  catchUpAttempts?: number;
  /** Passed to pusher-js last (e.g. activityTimeout, unavailableTimeout, enabledTransports). */
  pusherOptions?: Partial<PusherOptions>;
  onStateChange?: (state: RealtimeState, previous: RealtimeState) => void;
  onGap?: (channel: string, info: GapInfo) => void;
  /** Failed requests, refused subscriptions, handler exceptions. Default: console.error. */
  onError?: (error: Error, channel?: string) => void;
}

export interface Realtime {
  readonly state: RealtimeState;
  /** The pusher-js instance (e.g. for presence or client events). */
  readonly pusher: Pusher;
  /**
   * Subscribe `handlers` to `channel` (private channels are authorized by the worker);
   * returns the function that removes them (the channel is left with its last handlers).
   */
  subscribe(channel: string, handlers: Handlers, options?: SubscribeOptions): () => void;
  /** The last cursor delivered on `channel`, or null. */
  cursor(channel: string): string | null;
  /** Each returns the function that removes the callback. */
  onStateChange(callback: (state: RealtimeState, previous: RealtimeState) => void): () => void;
  onGap(callback: (channel: string, info: GapInfo) => void): () => void;
  onError(callback: (error: Error, channel?: string) => void): () => void;
  /** pusher-js user sign-in through `/pusher/user-auth`. */
  signin(): void;
  /** Disconnect, stop polling, drop every subscription; the state becomes "offline". */
  close(): void;
}

export function createRealtime(options: RealtimeOptions): Realtime;

/** Orders two cursors (by length, then lexicographically). */
export function compareCursors(a: string, b: string): number;

/** The worker answered something other than 200. */
export class HttpError extends Error {
  readonly status: number;
  readonly body: unknown;
}

/** The history endpoint's 410: the cursor is older than the retention. */
export class CursorExpired extends HttpError {}
