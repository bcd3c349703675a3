"""call_with_retries: the adapters' retry schedule, with a first attempt outside tenacity."""

from __future__ import annotations

import asyncio

import pytest

from worker.errors import SoketiUnavailable
from worker.retry import RetryPolicy, call_with_retries


class Flaky:
    """A call that fails with ``error`` the first ``failures`` times, then answers."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or SoketiUnavailable("Soketi answered 503")
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.mark.parametrize(
    ("attempts", "failures", "answers", "calls"),
    [
        (4, 0, True, 1),
        (4, 1, True, 2),
        (4, 3, True, 4),
        (4, 4, False, 4),
        (4, 9, False, 4),
        (1, 1, False, 1),
    ],
)
async def test_attempts_are_bounded(
    attempts: int, failures: int, answers: bool, calls: int
) -> None:
    """A transient error is retried up to ``attempts`` attempts in all; then it is raised."""
    call = Flaky(failures)
    policy = RetryPolicy.instant(attempts)
    if answers:
        assert await call_with_retries(policy, call, SoketiUnavailable) == "ok"
    else:
        with pytest.raises(SoketiUnavailable):
            await call_with_retries(policy, call, SoketiUnavailable)
    assert call.calls == calls


async def test_an_error_not_named_is_raised_at_once() -> None:
    """Only the named error classes are retried."""
    call = Flaky(1, ValueError("bad"))
    with pytest.raises(ValueError):
        await call_with_retries(RetryPolicy.instant(4), call, SoketiUnavailable)
    assert call.calls == 1


async def test_a_first_attempt_that_used_the_time_budget_is_not_retried() -> None:
    """The total time bounds retries too: a first failure after ``total_s`` is final."""
    policy = RetryPolicy(attempts=4, total_s=0.01, initial_s=0.0, max_wait_s=0.0)
    calls = 0

    async def slow_failure() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)  # the call itself is slow, as a timeout would be
        raise SoketiUnavailable("Soketi timed out")

    with pytest.raises(SoketiUnavailable):
        await call_with_retries(policy, slow_failure, SoketiUnavailable)
    assert calls == 1
