import type { ErrorObject } from "ajv";
import type { Options } from "amqplib";
import type { ClientSession, Collection, Db } from "mongodb";

/** The event types of the contract's catalogue (CONTRACT.md §3). */
export type EventType =
  | "message.created"
  | "order.created"
  | "order.status_changed"
  | "payment.received"
  | "presence.offline"
  | "presence.online"
  | "product.approved"
  | "product.rejected"
  | "product.stock_low"
  | "seller.registered"
  | "system.alert"
  | "typing.started"
  | "typing.stopped"
  | "user.registered";

/** What goes on the wire (CONTRACT.md §2). */
export interface Envelope<T extends string = EventType, D = Record<string, unknown>> {
  /** 1-64 chars of [A-Za-z0-9_-]; the worker pushes each id once. */
  id: string;
  type: T;
  /** ISO-8601 with a timezone. */
  occurredAt: string;
  data: D;
  /** The Pusher socket id of the browser that caused the event; excluded from the broadcast. */
  socketId?: string;
  version?: number;
  source?: string;
  correlationId?: string;
}

export interface PublishOptions {
  /** Defaults to a fresh UUID without dashes. Reuse it when retrying the same event. */
  id?: string;
  /** Defaults to now. */
  occurredAt?: string | Date;
  socketId?: string;
  correlationId?: string;
  /** Overrides the publisher's `source`. */
  source?: string;
  version?: number;
}

export interface PublisherOptions {
  /** amqp://user:pass@host:5672/vhost */
  url: string | Options.Connect;
  /** Topic exchange, declared durable on connect. Default "bazaar.events". */
  exchange?: string;
  /** Put in each envelope's `source` and the AMQP `app_id`. */
  source?: string;
  /** Reject with PublishFailed("unroutable") when no queue is bound. Default true. */
  mandatory?: boolean;
  /** How long `publish` waits for the broker's confirm. Default 10000. */
  confirmTimeoutMs?: number;
  /** Passed to amqplib's `connect`. */
  socketOptions?: unknown;
  /** An amqplib-compatible `connect` (tests inject a fake). Default amqplib's. */
  connect?: (url: string | Options.Connect, socketOptions?: unknown) => Promise<unknown>;
}

export interface Publisher {
  readonly exchange: string;
  /**
   * Build the envelope, validate it against the schema for `type` (throwing EnvelopeInvalid
   * before any network use), publish it persistently with routing key `type` and
   * `message_id` = id, and resolve with the envelope once the broker confirms.
   */
  publish<D = Record<string, unknown>>(
    type: EventType,
    data: D,
    options?: PublishOptions,
  ): Promise<Envelope<EventType, D>>;
  /** Wait for outstanding confirms and close the connection; idempotent. */
  close(): Promise<void>;
}

export const ID_PATTERN: RegExp;
export const DEFAULT_EXCHANGE: "bazaar.events";
export const EVENT_TYPES: readonly EventType[];

export class EnvelopeInvalid extends Error {
  readonly type: unknown;
  readonly errors: ErrorObject[];
}

export class UnknownEventType extends EnvelopeInvalid {}

export class PublishFailed extends Error {
  readonly reason: "nacked" | "unroutable" | "timeout" | "closed";
  readonly envelope: Envelope;
}

export function createPublisher(options: PublisherOptions): Publisher;
export function buildEnvelope<D = Record<string, unknown>>(
  type: EventType,
  data: D,
  options?: PublishOptions,
): Envelope<EventType, D>;
export function validateEnvelope<E extends Envelope<string, unknown>>(envelope: E): E;
export function newEventId(): string;
/**
 * The `fanout-lane` header of an envelope: `data.conversationId` of `message.*`/`typing.*`,
 * `data.orderId` of `order.*`/`payment.*`; undefined for other events.
 */
export function laneOf(envelope: Envelope<string, unknown>): string | undefined;

/** A document of the outbox collection. */
export interface OutboxEntry {
  /** The envelope id. */
  _id: string;
  envelope: Envelope;
  createdAt: Date;
  /** Set by the relay once the broker confirmed the envelope; null while pending. */
  sentAt: Date | null;
  /** Orders entries added within one millisecond (microseconds, increasing per process). */
  seq: number;
}

export interface OutboxOptions {
  /** A Db of the official `mongodb` driver (the same client the caller's session belongs to). */
  db: Db;
  /** Default "outbox". */
  collection?: string;
  /** Publishes for the relay; only needed by `start()`. */
  publisher?: Pick<Publisher, "publish">;
  /** Put in each envelope's `source` unless `add` is given one. */
  source?: string;
  /** Entries read per query. Default 100. */
  batchSize?: number;
  /** How often an idle relay looks for entries committed by other processes. Default 1000. */
  pollIntervalMs?: number;
  /** Retry delays while RabbitMQ or MongoDB is down, doubling. Defaults 100 and 30000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Told of every failure the relay retries (PublishFailed, connection and MongoDB errors). */
  onError?: (error: unknown) => void;
  /** Called after the broker confirmed an entry, before it is marked sent (tests). */
  onPublished?: (entry: OutboxEntry) => void | Promise<void>;
}

export interface Outbox {
  readonly collection: Collection<OutboxEntry>;
  /**
   * Build and validate the envelope exactly as `publish` does (throwing EnvelopeInvalid before
   * any write) and insert it as pending; with `{ session }` inside the caller's transaction.
   */
  add<D = Record<string, unknown>>(
    type: EventType,
    data: D,
    options?: PublishOptions,
    write?: { session?: ClientSession },
  ): Promise<Envelope<EventType, D>>;
  /** Up to `limit` pending entries, oldest first. */
  pending(limit?: number): Promise<OutboxEntry[]>;
  /**
   * Start the relay: publish pending entries in order with confirms and mark them sent,
   * retrying with backoff while the broker is down. Idempotent; settles when it stops.
   */
  start(): Promise<void>;
  /** Stop the relay after the entry in flight; does not close the publisher. */
  stop(): Promise<void>;
  readonly running: boolean;
}

export const DEFAULT_OUTBOX_COLLECTION: "outbox";
export function createOutbox(options: OutboxOptions): Outbox;
