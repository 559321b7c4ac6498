"""retry_call on a manual clock: what is retried, how long it waits, and when it gives up."""
from __future__ import annotations

import random

import pytest

from integrations.clock import ManualClock
from integrations.errors import (
    AuthFailed,
    BadRequest,
    CircuitOpen,
    ContextTooLong,
    MalformedResponse,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from integrations.resilience.retry import RetryPolicy, retry_call


class Script:
    """A fake upstream call that raises the scripted errors in turn, then answers "ok"."""

    def __init__(self, *errors: BaseException, forever: BaseException | None = None) -> None:
        self.errors = list(errors)
        self.forever = forever
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever
        return "ok"


class AlwaysHighest(random.Random):
    """Jitter that always picks the longest allowed wait, so budgets are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def run(clock: ManualClock, fn: Script, policy: RetryPolicy = RetryPolicy(), **kwargs) -> str:  # type: ignore[no-untyped-def]
    return await clock.run_until_complete(retry_call(fn, policy, clock, **kwargs))


async def test_retry_waits_exactly_the_retry_after_the_upstream_asked_for() -> None:
    clock = ManualClock()
    fn = Script(RateLimited("429", retry_after=7.0))
    t0 = clock.monotonic()

    assert await run(clock, fn) == "ok"

    assert fn.calls == 2
    assert clock.monotonic() - t0 == 7.0


async def test_retry_after_beyond_the_cap_is_raised_at_once_so_the_caller_can_fail_over() -> None:
    clock = ManualClock()
    fn = Script(RateLimited("429", retry_after=25.0))
    t0 = clock.monotonic()

    with pytest.raises(RateLimited):
        await run(clock, fn, RetryPolicy(retry_after_cap=20.0))

    assert fn.calls == 1
    assert clock.monotonic() == t0


async def test_retry_after_that_would_overrun_the_total_budget_is_raised_at_once() -> None:
    clock = ManualClock()
    fn = Script(Unavailable("503", retry_after=1.0), RateLimited("429", retry_after=9.5))
    t0 = clock.monotonic()

    with pytest.raises(RateLimited):
        await run(clock, fn, RetryPolicy(max_total=10.0))

    assert fn.calls == 2
    assert clock.monotonic() - t0 == 1.0


async def test_backoff_is_full_jitter_below_the_exponential_ceiling_and_the_cap() -> None:
    clock = ManualClock()
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=7, max_total=1000.0, base=0.5, cap=4.0)

    with pytest.raises(Unavailable):
        await run(
            clock,
            Script(forever=Unavailable("down")),
            policy,
            rng=random.Random(7),
            on_attempt=lambda attempt, error, wait: waits.append(wait),
        )

    expected_rng = random.Random(7)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert waits == [expected_rng.uniform(0.0, ceiling) for ceiling in ceilings]
    assert all(0.0 <= wait <= ceiling for wait, ceiling in zip(waits, ceilings))


async def test_retry_gives_up_after_max_attempts_with_the_last_project_error() -> None:
    clock = ManualClock()
    fn = Script(Unavailable("first"), MalformedResponse("second"), forever=Unavailable("third"))

    with pytest.raises(Unavailable, match="third"):
        await run(clock, fn, RetryPolicy(max_attempts=3))

    assert fn.calls == 3


async def test_retry_stops_when_the_next_backoff_would_overrun_the_total_budget() -> None:
    clock = ManualClock()
    fn = Script(forever=Unavailable("down"))
    t0 = clock.monotonic()

    with pytest.raises(Unavailable):
        await run(clock, fn, RetryPolicy(max_attempts=10, max_total=5.0, base=2.0, cap=8.0), rng=AlwaysHighest())

    # waits would be 2, 4, ...: after the first, 2 + 4 > 5.
    assert fn.calls == 2
    assert clock.monotonic() - t0 == 2.0


@pytest.mark.parametrize(
    "error",
    [
        BadRequest("bad field", status=400),
        ModelNotFound("no such model", status=404),
        ContextTooLong("too long", status=400),
        AuthFailed("bad key", status=401),
        QuotaExhausted("out of credit", status=429),
        CircuitOpen("open", retry_after=3.0),
    ],
)
async def test_errors_that_repeating_cannot_fix_are_raised_after_one_attempt(error: UpstreamError) -> None:
    clock = ManualClock()
    fn = Script(error)

    with pytest.raises(type(error)):
        await run(clock, fn)

    assert fn.calls == 1


async def test_non_project_exceptions_are_not_retried() -> None:
    clock = ManualClock()
    fn = Script(KeyError("bug"))

    with pytest.raises(KeyError):
        await run(clock, fn)

    assert fn.calls == 1


async def test_auth_failure_retries_once_when_reloading_changed_the_credential() -> None:
    clock = ManualClock()
    reloads = 0

    async def reload() -> bool:
        nonlocal reloads
        reloads += 1
        return True

    fn = Script(AuthFailed("old key", status=401))

    assert await run(clock, fn, on_auth_failed=reload) == "ok"
    assert (fn.calls, reloads) == (2, 1)


async def test_auth_failure_is_raised_when_the_reloaded_credential_is_unchanged() -> None:
    clock = ManualClock()

    async def unchanged() -> bool:
        return False

    fn = Script(forever=AuthFailed("bad key", status=401))

    with pytest.raises(AuthFailed):
        await run(clock, fn, on_auth_failed=unchanged)
    assert fn.calls == 1


async def test_credential_is_reloaded_only_once_per_call() -> None:
    clock = ManualClock()
    reloads = 0

    async def reload() -> bool:
        nonlocal reloads
        reloads += 1
        return True

    fn = Script(forever=AuthFailed("still refused", status=403))

    with pytest.raises(AuthFailed):
        await run(clock, fn, on_auth_failed=reload)
    assert (fn.calls, reloads) == (2, 1)
