"""Short in-process retries for the adapters: bounded in attempts and time, jittered."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard an adapter tries before giving a transient error back to the consumer."""

    attempts: int = 4
    total_s: float = 3.0
    initial_s: float = 0.1
    max_wait_s: float = 1.0

    @classmethod
    def instant(cls, attempts: int = 3) -> RetryPolicy:
        """A policy that retries without waiting, for tests."""
        return cls(attempts=attempts, total_s=60.0, initial_s=0.0, max_wait_s=0.0)


def retrying(policy: RetryPolicy, *retry_on: type[BaseException]) -> AsyncRetrying:
    """A tenacity loop that retries only ``retry_on`` errors and re-raises the last one."""
    return AsyncRetrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_s),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_wait_s, jitter=policy.initial_s
        ),
        retry=retry_if_exception_type(retry_on),
        reraise=True,
    )
