"""The worker's error tree: the exception class decides how ``settle`` treats a message.

::

    FanoutError
     ├── PermanentError        -> dead-letter at once, with ``reason``
     │    ├── InvalidMessage        invalid_json | invalid_event | unknown_type
     │    ├── PayloadTooLarge       payload_too_large (checked in UTF-8 bytes before sending)
     │    └── RejectedBySoketi      rejected_by_soketi (a 4xx answer other than 401/403/429)
     ├── TransientError        -> retry with backoff, then dead-letter ``retries_exhausted``
     │    ├── SoketiUnavailable     connection refused/reset, timeout, 5xx, 429
     │    └── StoreUnavailable      MongoDB unreachable or timing out
     │         └── PushedUnrecorded  Soketi accepted, the pushed mark failed: retried with
     │                               ``fanout-pushed``, which only marks, never pushes again
     ├── Misconfigured         -> stop consuming and say so loudly; the message goes back
     │                            to the queue untouched (Soketi says 401/403: wrong credentials)
     └── Interrupted           -> the worker stops while holding the message: back to the queue

Every message is one line for humans and must never contain a secret.
"""

from __future__ import annotations


class FanoutError(Exception):
    """Base of every error the worker raises on purpose; ``reason`` is a short machine code."""

    reason: str = "error"
    #: Set by the pipeline once the message parsed, so settle can log and count it by type.
    event_type: str | None = None
    event_id: str | None = None
    #: ``(deliveries, age_s)`` when Soketi already accepted the event: whatever retries the
    #: message must only mark it pushed (settle carries this in ``fanout-pushed``).
    pushed: tuple[int, float] | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(_one_line(message))
        if reason is not None:
            self.reason = reason


class PermanentError(FanoutError):
    """Retrying cannot help: the message goes to the dead-letter queue at once."""


class InvalidMessage(PermanentError):
    """The body is not a valid envelope of a known event type."""

    reason = "invalid_event"


class PayloadTooLarge(PermanentError):
    """A payload exceeds Soketi's event size limit (UTF-8 bytes)."""

    reason = "payload_too_large"


class RejectedBySoketi(PermanentError):
    """Soketi refused the request itself (a 4xx other than 401/403/429)."""

    reason = "rejected_by_soketi"


class TransientError(FanoutError):
    """A downstream is unavailable for now: retry later."""

    reason = "transient"


class SoketiUnavailable(TransientError):
    """Soketi could not be reached, timed out, or answered 5xx/429."""

    reason = "soketi_unavailable"


class StoreUnavailable(TransientError):
    """MongoDB could not be reached or timed out."""

    reason = "store_unavailable"


class PushedUnrecorded(StoreUnavailable):
    """Soketi accepted the event but its pushed mark could not be written (MongoDB down)."""

    def __init__(self, message: str, *, deliveries: int, age_s: float) -> None:
        super().__init__(message)
        self.pushed = (deliveries, age_s)


class Interrupted(FanoutError):
    """The worker is stopping while it held a message for an open circuit: requeue it."""

    reason = "shutdown"


class Misconfigured(FanoutError):
    """The worker itself is misconfigured (wrong Soketi credentials): stop, do not dead-letter."""

    reason = "misconfigured"


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
