"""Short in-process retries for the adapters: bounded in attempts and time, jittered."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

_T = TypeVar("_T")


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


async def call_with_retries(
    policy: RetryPolicy, call: Callable[[], Awaitable[_T]], *retry_on: type[BaseException]
) -> _T:
    """``await call()``, retrying ``retry_on`` errors: at most ``policy.attempts`` attempts
    within ``policy.total_s``, jittered exponential waits between them; the last error is
    re-raised.

    The first attempt runs without tenacity: nearly every call succeeds at once, and building
    a retry loop around each is measurable CPU on the hot path. After a first failure,
    tenacity runs the rest of the same schedule.
    """
    started = time.monotonic()
    try:
        return await call()
    except retry_on:
        elapsed_s = time.monotonic() - started
        if policy.attempts <= 1 or elapsed_s >= policy.total_s:
            raise
    # The wait tenacity would take after the first attempt, then its loop for the rest.
    await asyncio.sleep(
        min(policy.initial_s + random.uniform(0, policy.initial_s), policy.max_wait_s)
    )
    remaining_s = max(policy.total_s - (time.monotonic() - started), 0.0)
    rest = _loop(policy.attempts - 1, remaining_s, policy.initial_s * 2, policy, retry_on)
    async for attempt in rest:
        with attempt:
            return await call()
    raise AssertionError("unreachable: retrying re-raises the last error")  # pragma: no cover


def _loop(
    attempts: int,
    total_s: float,
    initial_s: float,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...],
) -> AsyncRetrying:
    """The rest of ``policy``'s schedule: ``attempts`` and ``total_s`` left, waits from
    ``initial_s`` up, jittered by ``policy.initial_s``."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(total_s),
        wait=wait_exponential_jitter(
            multiplier=initial_s, max=policy.max_wait_s, jitter=policy.initial_s
        ),
        retry=retry_if_exception_type(retry_on),
        reraise=True,
    )
