import type { ErrorObject } from "ajv";
import type { Options } from "amqplib";

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
