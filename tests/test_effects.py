"""Tests of anvil_trio's effect drivers (retry, repeat) and combinators (timeout, race,
zip_par, ensuring), with exact virtual times under the autojump MockClock."""

from __future__ import annotations

import datetime
import functools
import inspect

import attrs
import pytest
import trio

from anvil_trio import (
    EffectError,
    EffectTimeoutError,
    RaceFailedError,
    RetryDetails,
    Schedule,
    add_retry_hook,
    clear_retry_hooks,
    current_effects_testing,
    effects_testing,
    ensuring,
    race,
    repeat,
    reset_effects_testing,
    retry,
    retry_hook,
    timeout,
    zip_par,
)


class Flaky:
    """An async callable that raises `errors` in turn, then returns `value`; logs call times."""

    def __init__(self, errors, value="ok", *, takes=0.0):
        self.errors = list(errors)
        self.value = value
        self.takes = takes
        self.calls: list[float] = []

    async def __call__(self, *args):
        self.calls.append(trio.current_time())
        if self.takes:
            await trio.sleep(self.takes)
        if self.errors:
            raise self.errors.pop(0)
        return (self.value, *args) if args else self.value


# ---------------------------------------------------------------- retry


async def test_retry_exponential_sleeps_exactly_1_2_4(autojump_clock):
    """exponential(1) & recurs(5) with three failures sleeps exactly 1, 2 and 4 seconds."""
    fn = Flaky([ConnectionError("a"), ConnectionError("b"), ConnectionError("c")], "v")
    schedule = Schedule.exponential(1.0) & Schedule.recurs(5)
    assert await retry(schedule, fn, on=ConnectionError) == "v"
    assert fn.calls == [0.0, 1.0, 3.0, 7.0]
    assert trio.current_time() == 7.0


async def test_retry_passes_arguments(autojump_clock):
    """retry(s, fn, *args) calls fn(*args) on every attempt."""
    fn = Flaky([ValueError()], "v")
    assert await retry(Schedule.spaced(1.0), fn, 1, 2) == ("v", 1, 2)


async def test_retry_reraises_last_failure_when_schedule_is_done(autojump_clock):
    """When recurs(2) is exhausted, the third failure itself is re-raised."""
    errors = [OSError(i) for i in range(5)]
    fn = Flaky(errors)
    with pytest.raises(OSError) as info:
        await retry(Schedule.spaced(2.0) & Schedule.recurs(2), fn)
    assert info.value.args == (2,)
    assert fn.calls == [0.0, 2.0, 4.0]


async def test_retry_lets_unmatched_errors_through_at_once(autojump_clock):
    """An exception not matching `on` propagates on the first attempt, without sleeping."""
    fn = Flaky([KeyError("x")])
    with pytest.raises(KeyError):
        await retry(Schedule.spaced(1.0), fn, on=(ConnectionError, TimeoutError))
    assert fn.calls == [0.0] and trio.current_time() == 0.0


async def test_retry_on_predicate(autojump_clock):
    """on= may be a predicate over the exception."""
    fn = Flaky([ValueError("retry me"), ValueError("fatal")])
    with pytest.raises(ValueError, match="fatal"):
        await retry(Schedule.spaced(1.0), fn, on=lambda e: "retry" in str(e))
    assert fn.calls == [0.0, 1.0]


async def test_retry_feeds_errors_to_the_schedule(autojump_clock):
    """The schedule's input is the exception: recur_while on it decides retrying."""
    fn = Flaky([ConnectionError(), ConnectionError(), PermissionError()])
    schedule = Schedule.recur_while(lambda e: isinstance(e, ConnectionError))
    with pytest.raises(PermissionError):
        await retry(schedule, fn)
    assert len(fn.calls) == 3


async def test_retry_rejects_bad_on():
    """on= must be exception types or a predicate."""
    with pytest.raises(TypeError):
        await retry(Schedule.forever(), Flaky([]), on=int)
    with pytest.raises(TypeError):
        await retry(Schedule.forever(), Flaky([]), on=(ValueError, "x"))


async def test_retry_never_catches_base_exceptions(autojump_clock):
    """KeyboardInterrupt passes through retry even with on=BaseException."""
    fn = Flaky([KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        await retry(Schedule.forever(), fn, on=BaseException)
    assert fn.calls == [0.0]


async def test_retry_does_not_swallow_cancellation(autojump_clock):
    """Cancelling retry, during an attempt or a backoff sleep, ends it at once."""
    hanging = Flaky([], takes=100.0)
    with trio.move_on_after(2.5) as scope:
        await retry(Schedule.forever(), hanging)
    assert scope.cancelled_caught and hanging.calls == [0.0]
    assert trio.current_time() == 2.5
    failing = Flaky([ValueError()] * 10)
    with trio.move_on_after(2.5) as scope:
        await retry(Schedule.spaced(1.0), failing)
    assert scope.cancelled_caught and failing.calls == [2.5, 3.5, 4.5]


async def test_retry_accepts_a_plain_callable(autojump_clock):
    """A non-async fn works too."""
    attempts = []

    def sync_fn():
        attempts.append(trio.current_time())
        if len(attempts) < 2:
            raise ValueError()
        return "sync"

    assert await retry(Schedule.spaced(0.5), sync_fn) == "sync"
    assert attempts == [0.0, 0.5]


# ---------------------------------------------------------------- repeat


async def test_repeat_recurs_runs_n_plus_one_times_and_returns_last_output(autojump_clock):
    """repeat(recurs(3)) runs fn 4 times and returns 3."""
    fn = Flaky([])
    assert await repeat(Schedule.recurs(3), fn) == 3
    assert len(fn.calls) == 4


async def test_repeat_spaced_waits_after_each_run(autojump_clock):
    """spaced(2) waits 2 s after each run ends: runs of 0.5 s start at 0, 2.5, 5, 7.5."""
    fn = Flaky([], takes=0.5)
    result = await repeat(Schedule.spaced(2.0) & Schedule.recurs(3), fn)
    assert result == (3, 3)
    assert fn.calls == [0.0, 2.5, 5.0, 7.5]


async def test_repeat_fixed_aligns_to_first_step(autojump_clock):
    """fixed(2) keeps runs of 0.5 s on a 2 s grid from the first step (at 0.5)."""
    fn = Flaky([], takes=0.5)
    await repeat(Schedule.fixed(2.0) & Schedule.recurs(3), fn)
    assert fn.calls == [0.0, 2.5, 4.5, 6.5]


async def test_repeat_fixed_overrun_runs_at_once_without_burst(autojump_clock):
    """fixed(1) with a 3.5 s run: the next run is at once, the missed ones are not replayed."""
    durations = [0.25, 3.5, 0.25, 0.25]
    starts = []

    async def job():
        starts.append(trio.current_time())
        await trio.sleep(durations[len(starts) - 1])

    await repeat(Schedule.fixed(1.0) & Schedule.recurs(3), job)
    assert starts == [0.0, 1.25, 4.75, 5.25]


async def test_repeat_feeds_results_and_stops_on_input(autojump_clock):
    """repeat feeds each result to the schedule; collect_all returns them all."""
    counter = iter(range(10))

    async def tick():
        return next(counter)

    schedule = Schedule.recur_until(lambda n: n >= 3).zip_right(Schedule.collect_all())
    assert await repeat(schedule, tick) == (0, 1, 2, 3)


async def test_repeat_propagates_failures(autojump_clock):
    """A failure of fn ends repeat at once with that failure."""
    fn = Flaky([], takes=1.0)

    async def second_call_fails():
        await fn()
        if len(fn.calls) == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await repeat(Schedule.spaced(1.0), second_call_fails)
    assert fn.calls == [0.0, 2.0]


# ---------------------------------------------------------------- hooks and testing switch


async def test_retry_hook_receives_details(autojump_clock):
    """Each scheduled retry reaches the hook as a frozen RetryDetails, before the sleep."""
    errors = [ConnectionError(1), ConnectionError(2)]
    fn = Flaky(list(errors))
    seen: list[RetryDetails] = []
    with retry_hook(seen.append):
        await retry(Schedule.exponential(1.0), fn)
    assert seen == [
        RetryDetails(attempt=1, error=errors[0], next_delay=1.0, at=1.0),
        RetryDetails(attempt=2, error=errors[1], next_delay=2.0, at=3.0),
    ]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        seen[0].attempt = 9  # type: ignore[misc]
    await retry(Schedule.forever(), Flaky([ValueError()]))
    assert len(seen) == 2


async def test_add_retry_hook_returns_a_remover(autojump_clock):
    """add_retry_hook's return value unregisters the hook."""
    seen = []
    remove = add_retry_hook(seen.append)
    await retry(Schedule.forever(), Flaky([ValueError()]))
    remove()
    remove()
    await retry(Schedule.forever(), Flaky([ValueError()]))
    assert len(seen) == 1


async def test_no_retry_hook_call_when_schedule_gives_up(autojump_clock):
    """No RetryDetails is emitted for the failure that ends the retrying."""
    seen = []
    with retry_hook(seen.append), pytest.raises(ValueError):
        await retry(Schedule.recurs(1), Flaky([ValueError(), ValueError()]))
    assert [d.attempt for d in seen] == [1]


async def test_failing_hook_propagates(autojump_clock):
    """An exception in a hook ends retry with that exception."""

    def broken(details):
        raise LookupError("hook")

    with retry_hook(broken), pytest.raises(LookupError, match="hook"):
        await retry(Schedule.forever(), Flaky([ValueError()]))


async def test_no_waits_skips_sleeps_and_restores(autojump_clock):
    """effects_testing(no_waits=True) makes retry skip its sleeps; the previous setting
    comes back on exit, also when nested."""
    assert current_effects_testing().no_waits is False
    with effects_testing(no_waits=True):
        with effects_testing(no_waits=False):
            assert current_effects_testing().no_waits is False
        assert current_effects_testing().no_waits is True
        fn = Flaky([ConnectionError()] * 3, "v")
        assert await retry(Schedule.exponential(1.0) & Schedule.recurs(5), fn) == "v"
        assert fn.calls == [0.0] * 4
    assert current_effects_testing().no_waits is False


async def test_no_waits_still_lets_time_based_schedules_end(autojump_clock):
    """Under no_waits the skipped delays count as elapsed, so up_to(10) still ends."""
    seen = []
    fn = Flaky([ValueError()] * 100)
    with effects_testing(no_waits=True), retry_hook(seen.append), pytest.raises(ValueError):
        await retry(Schedule.spaced(1.0).up_to(10.0), fn)
    assert len(fn.calls) == 11
    assert [d.at for d in seen] == [float(k) for k in range(1, 11)]
    assert trio.current_time() == 0.0


async def test_switching_waits_back_on_mid_retry_keeps_the_schedule_times(autojump_clock):
    """Turning no_waits off between retries sleeps only the remaining real delay."""
    fn = Flaky([ValueError()] * 2, "v")

    def waits_on_after_first(details):
        if details.attempt == 2:
            reset_effects_testing()

    with effects_testing(no_waits=True), retry_hook(waits_on_after_first):
        assert await retry(Schedule.spaced(1.0), fn) == "v"
    assert fn.calls == [0.0, 0.0, 1.0]


async def test_reset_effects_testing_restores_default():
    """reset_effects_testing() turns no_waits off."""
    with effects_testing(no_waits=True):
        reset_effects_testing()
        assert current_effects_testing().no_waits is False


# ---------------------------------------------------------------- timeout


async def test_timeout_returns_value_in_time(autojump_clock):
    """A call that finishes within the limit returns its value."""
    assert await timeout(2.0, Flaky([], "v", takes=1.5)) == "v"
    assert trio.current_time() == 1.5


async def test_timeout_raises_effect_timeout_error_at_the_limit(autojump_clock):
    """A slow call is cancelled at exactly the limit with an EffectTimeoutError."""
    cancelled = []

    async def slow():
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    with pytest.raises(EffectTimeoutError) as info:
        await timeout(datetime.timedelta(seconds=3), slow)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, EffectError)
    assert info.value.seconds == 3.0
    assert cancelled == [3.0] and trio.current_time() == 3.0


async def test_timeout_passes_failures_through(autojump_clock):
    """An exception inside the time limit propagates unchanged."""
    with pytest.raises(ZeroDivisionError):
        await timeout(5.0, Flaky([ZeroDivisionError()], takes=1.0))


async def test_retry_of_timeout_composes(autojump_clock):
    """retry(s, timeout, 1, slow, on=EffectTimeoutError) times out each attempt after 1 s."""
    slow = Flaky([], takes=5.0)
    with pytest.raises(EffectTimeoutError):
        schedule = Schedule.spaced(0.5) & Schedule.recurs(2)
        await retry(schedule, timeout, 1.0, slow, on=EffectTimeoutError)
    assert slow.calls == [0.0, 1.5, 3.0]
    assert trio.current_time() == 4.0


# ---------------------------------------------------------------- race


async def test_race_first_success_wins_and_losers_are_cancelled(autojump_clock):
    """The fastest success is returned at its own time; slower contenders are cancelled."""
    cancelled = []

    async def contender(name, delay):
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            cancelled.append(name)
            raise
        return name

    result = await race(
        functools.partial(contender, "slow", 5),
        functools.partial(contender, "fast", 1),
        functools.partial(contender, "slower", 9),
    )
    assert result == "fast" and trio.current_time() == 1.0
    assert sorted(cancelled) == ["slow", "slower"]


async def test_race_ignores_failures_when_one_succeeds(autojump_clock):
    """A failing contender does not end the race while another can still win."""
    result = await race(Flaky([ValueError()], takes=0.5), Flaky([], "late", takes=2.0))
    assert result == "late" and trio.current_time() == 2.0


async def test_race_all_failed_raises_group_in_argument_order(autojump_clock):
    """When every contender fails, RaceFailedError holds the failures in argument order."""
    a, b = ValueError("a"), KeyError("b")
    with pytest.raises(RaceFailedError) as info:
        await race(Flaky([a], takes=2.0), Flaky([b], takes=1.0))
    assert list(info.value.exceptions) == [a, b]
    assert isinstance(info.value, ExceptionGroup)
    matched, rest = info.value.split(KeyError)
    assert isinstance(matched, RaceFailedError) and list(rest.exceptions) == [a]


async def test_race_reraises_base_exceptions_as_themselves(autojump_clock):
    """A KeyboardInterrupt from a contender cancels the rest and propagates unwrapped."""
    with pytest.raises(KeyboardInterrupt):
        await race(Flaky([KeyboardInterrupt()], takes=1.0), Flaky([], takes=5.0))
    assert trio.current_time() == 1.0


async def test_race_outer_cancellation_propagates(autojump_clock):
    """Cancelling the caller cancels every contender; race does not return a value."""
    with trio.move_on_after(1.0) as scope:
        await race(Flaky([], takes=5.0), Flaky([], takes=6.0))
        pytest.fail("race returned after cancellation")
    assert scope.cancelled_caught and trio.current_time() == 1.0


async def test_race_needs_contenders():
    """race() with nothing to race is a ValueError."""
    with pytest.raises(ValueError):
        await race()


# ---------------------------------------------------------------- zip_par


async def test_zip_par_returns_all_results_in_order(autojump_clock):
    """All contenders run concurrently; results come in argument order at the slowest time."""
    result = await zip_par(Flaky([], "a", takes=3.0), Flaky([], "b", takes=1.0), lambda: "c")
    assert result == ("a", "b", "c") and trio.current_time() == 3.0
    assert await zip_par() == ()


async def test_zip_par_first_failure_cancels_others_and_is_raised_itself(autojump_clock):
    """The first failure cancels the others and is raised as itself, not in a group."""
    boom = ValueError("boom")
    cancelled = []

    async def patient():
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    async def late_failure():
        await trio.sleep(4)
        raise KeyError("late")

    with pytest.raises(ValueError) as info:
        await zip_par(patient, Flaky([boom], takes=2.0), late_failure)
    assert info.value is boom
    assert cancelled == [2.0] and trio.current_time() == 2.0


async def test_zip_par_base_exception_wins_over_exception(autojump_clock):
    """A KeyboardInterrupt raised while winding down is not hidden by an earlier Exception."""

    async def interrupt_on_cancel():
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            raise KeyboardInterrupt from None

    with pytest.raises(KeyboardInterrupt):
        await zip_par(interrupt_on_cancel, Flaky([ValueError()], takes=1.0))


async def test_zip_par_outer_cancellation_propagates(autojump_clock):
    """Cancelling the caller cancels every member and zip_par does not return."""
    with trio.move_on_after(1.5) as scope:
        await zip_par(Flaky([], takes=5.0), Flaky([], takes=6.0))
        pytest.fail("zip_par returned after cancellation")
    assert scope.cancelled_caught and trio.current_time() == 1.5


async def slow_to_stop():
    """Sleeps long; when cancelled, takes 2 more (shielded) seconds to wind down."""
    try:
        await trio.sleep(10)
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            await trio.sleep(2)
        raise


async def test_zip_par_failure_survives_concurrent_outer_cancellation(autojump_clock):
    """A failure is still raised when the caller is cancelled while the others wind down."""
    boom = ValueError("boom")
    with pytest.raises(ValueError) as info, trio.move_on_after(1.5):
        await zip_par(slow_to_stop, Flaky([boom], takes=1.0))
    assert info.value is boom and trio.current_time() == 3.0


async def test_race_base_exception_survives_concurrent_outer_cancellation(autojump_clock):
    """A KeyboardInterrupt in a contender is raised even if the caller is cancelled too."""
    with pytest.raises(KeyboardInterrupt), trio.move_on_after(1.5):
        await race(slow_to_stop, Flaky([KeyboardInterrupt()], takes=1.0))
    assert trio.current_time() == 3.0


async def test_retry_of_zip_par_sees_the_plain_failure(autojump_clock):
    """Because zip_par raises the failure itself, retry(on=ConnectionError) matches it."""
    flaky = Flaky([ConnectionError()], "x", takes=1.0)
    result = await retry(
        Schedule.spaced(1.0),
        zip_par,
        flaky,
        Flaky([], "y", takes=0.5),
        on=ConnectionError,
    )
    assert result == ("x", "y") and flaky.calls == [0.0, 2.0]


# ---------------------------------------------------------------- ensuring


async def test_ensuring_runs_finalizer_on_success_and_failure(autojump_clock):
    """The finalizer runs after a success (value returned) and after a failure (re-raised)."""
    log = []

    async def finalizer():
        log.append("final")

    assert await ensuring(Flaky([], "v"), finalizer) == "v"
    with pytest.raises(ValueError):
        await ensuring(Flaky([ValueError()]), finalizer)
    assert log == ["final", "final"]


async def test_ensuring_finalizer_is_shielded_from_cancellation(autojump_clock):
    """On cancellation the finalizer still runs to completion, even if it sleeps."""
    log = []

    async def finalizer():
        await trio.sleep(2.0)
        log.append(trio.current_time())

    with trio.move_on_after(1.0) as scope:
        await ensuring(Flaky([], takes=10.0), finalizer)
    assert scope.cancelled_caught
    assert log == [3.0] and trio.current_time() == 3.0


async def test_ensuring_accepts_plain_finalizer_and_its_error_propagates(autojump_clock):
    """A sync finalizer works; a finalizer's own error propagates."""
    log = []
    assert await ensuring(Flaky([], "v"), lambda: log.append("sync")) == "v"
    assert log == ["sync"]

    def broken():
        raise RuntimeError("finalizer")

    with pytest.raises(RuntimeError, match="finalizer"):
        await ensuring(Flaky([], "v"), broken)
