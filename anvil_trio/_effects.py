"""Effects: schedule drivers (``retry``, ``repeat``) and combinators for async handlers.

Invariants:
- An "effect" here is an async callable plus its arguments (``fn, *args``) or a zero-argument
  thunk (``lambda: fetch(url)``, ``functools.partial(...)``); every combinator takes and
  produces such callables' results, so they nest: ``retry(s, timeout, 5, fetch, url)``,
  ``race(partial(retry, s, f), partial(timeout, 1, g))``. A callable that returns a plain
  value instead of an awaitable is accepted too.
- Only ``retry`` and ``repeat`` sleep, and only with ``trio.sleep_until(at)`` where ``at`` is
  the schedule's absolute time; under ``effects_testing(no_waits=True)`` they skip the sleep
  (one checkpoint instead) and advance a private per-call virtual clock by the skipped
  delay, so time-based schedules (``up_to``, ``fixed``) still see time pass and end.
- Nothing here swallows ``trio.Cancelled`` or a ``BaseException`` that is not an
  ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, groups holding them): ``retry`` only
  ever catches ``Exception``; ``race``/``zip_par`` re-raise such exceptions as themselves.
- Global knobs (retry hooks, the testing switch) have context managers that restore the
  previous value, and reset functions for autouse fixtures.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import attrs
import trio

from ._schedule import Done, Schedule, Seconds, delay_of, to_seconds

T = TypeVar("T")

ExceptionMatcher = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)


class EffectError(Exception):
    """Base of the errors this layer raises itself (never of the errors it passes through)."""


class EffectTimeoutError(EffectError, TimeoutError):
    """``timeout(seconds, ...)`` ran out of time; the effect was cancelled.

    Attributes:
        seconds: the time limit that was exceeded.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"effect timed out after {seconds:g} s")
        self.seconds = seconds


class RaceFailedError(EffectError, ExceptionGroup):
    """Every contender of a ``race`` failed; ``exceptions`` holds the failures in argument
    order. It is an ``ExceptionGroup``, so ``except* SomeError`` works on it."""

    def derive(self, excs: Any) -> "RaceFailedError":
        return RaceFailedError(self.message, excs)


@attrs.frozen
class RetryDetails:
    """One scheduled retry, as given to retry hooks.

    Attributes:
        attempt: the number of the attempt that just failed (1 for the first call).
        error: the exception that attempt raised.
        next_delay: seconds until the next attempt, ``max(0, at - now)``.
        at: the absolute time (``trio.current_time()`` clock) of the next attempt.
    """

    attempt: int
    error: Exception
    next_delay: float
    at: float


@attrs.frozen
class EffectsTesting:
    """The testing switch. ``no_waits``: drivers skip their sleeps (see module docstring)."""

    no_waits: bool = False


RetryHook = Callable[[RetryDetails], object]

_retry_hooks: list[RetryHook] = []
_testing: EffectsTesting = EffectsTesting()


# ---------------------------------------------------------------------- instrumentation


def add_retry_hook(hook: RetryHook) -> Callable[[], None]:
    """Register ``hook(details: RetryDetails)``, called synchronously for each retry
    ``retry`` schedules, before it sleeps. Hooks run in registration order; an exception
    from a hook propagates out of ``retry`` (with the failure as its ``__context__``).

    Returns:
        A function that removes this registration (idempotent).
    """
    _retry_hooks.append(hook)

    def remove() -> None:
        remove_retry_hook(hook)

    return remove


def remove_retry_hook(hook: RetryHook) -> None:
    """Remove one registration of ``hook``; does nothing if it is not registered."""
    with contextlib.suppress(ValueError):
        _retry_hooks.remove(hook)


def clear_retry_hooks() -> None:
    """Remove every retry hook (for autouse fixtures)."""
    _retry_hooks.clear()


@contextlib.contextmanager
def retry_hook(hook: RetryHook) -> Iterator[RetryHook]:
    """Register ``hook`` for the duration of the ``with`` block; yields it."""
    remove = add_retry_hook(hook)
    try:
        yield hook
    finally:
        remove()


def current_effects_testing() -> EffectsTesting:
    """The testing switch now in force (other drivers, e.g. supervisor backoff, honour it)."""
    return _testing


@contextlib.contextmanager
def effects_testing(*, no_waits: bool = True) -> Iterator[EffectsTesting]:
    """Set the testing switch for the ``with`` block, restoring the previous one on exit.

    Args:
        no_waits: if true, ``retry``/``repeat`` do not sleep between attempts.

    Yields:
        The ``EffectsTesting`` now in force.
    """
    global _testing
    previous = _testing
    _testing = EffectsTesting(no_waits=no_waits)
    try:
        yield _testing
    finally:
        _testing = previous


def reset_effects_testing() -> None:
    """Put the testing switch back to its default (``no_waits=False``); for autouse fixtures."""
    global _testing
    _testing = EffectsTesting()


# ---------------------------------------------------------------------- helpers


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _matcher(on: ExceptionMatcher) -> Callable[[Exception], bool]:
    if isinstance(on, type):
        if not issubclass(on, BaseException):
            raise TypeError(f"on= must be exception types or a predicate, got {on!r}")
        return lambda exc: isinstance(exc, on)
    if isinstance(on, tuple):
        for kind in on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"on= tuple must hold exception types, got {kind!r}")
        return lambda exc: isinstance(exc, on)
    if callable(on):
        return lambda exc: bool(on(exc))
    raise TypeError(f"on= must be exception types or a predicate, got {on!r}")


def _is_cancellation(exc: BaseException) -> bool:
    """True for ``trio.Cancelled`` and for groups made only of ``trio.Cancelled``."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _cancelled, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


@attrs.define
class _DriverClock:
    """``trio.current_time()`` plus the delays skipped under ``no_waits``."""

    skipped: float = 0.0

    def now(self) -> float:
        return trio.current_time() + self.skipped

    async def wait_until(self, at: float) -> None:
        if _testing.no_waits:
            self.skipped += max(0.0, at - self.now())
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep_until(at - self.skipped)


# ---------------------------------------------------------------------- drivers


async def retry(
    schedule: Schedule,
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    on: ExceptionMatcher = Exception,
) -> T:
    """Call ``fn(*args)`` until it succeeds or ``schedule`` gives up.

    Each failure that matches ``on`` is fed to the schedule as its input (with
    ``now = trio.current_time()``); on ``Continue(at)`` the driver calls the retry hooks with
    ``RetryDetails`` and sleeps until ``at``, then calls ``fn`` again. With
    ``Schedule.exponential(b) & Schedule.recurs(n)`` the k-th retry (k = 1..n) waits
    ``b * 2**(k-1)`` seconds after the k-th failure: b, 2b, 4b, ...

    Args:
        schedule: the recurrence policy; its input is the exception.
        fn: an async callable (a plain callable is accepted too).
        *args: positional arguments for ``fn``.
        on: exception type(s) to retry, or a predicate ``on(exc) -> bool``. Only
            ``Exception`` instances are ever considered: ``trio.Cancelled``,
            ``KeyboardInterrupt`` and other ``BaseException``s pass through at once.

    Returns:
        What ``fn`` returned on its first success.

    Raises:
        The last failure, re-raised unchanged, when the schedule says ``DONE``; any exception
        not matching ``on`` at once; whatever a retry hook raises.
    """
    matches = _matcher(on)
    driver: Any = None  # built at the first failure: a first success costs nothing more
    clock = _DriverClock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _call(fn, *args)
        except Exception as exc:
            if not matches(exc):
                raise
            if driver is None:
                driver = schedule.driver()
            now = clock.now()
            decision = driver.next(exc, now=now)
            if isinstance(decision, Done):
                raise
            details = RetryDetails(
                attempt=attempt, error=exc, next_delay=delay_of(now, decision), at=decision.at
            )
            for hook in list(_retry_hooks):
                hook(details)
        await clock.wait_until(decision.at)


async def repeat(schedule: Schedule, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Call ``fn(*args)``, then again each time ``schedule`` says ``Continue(at)`` (sleeping
    until ``at``), feeding each result to the schedule as its input.

    ``fn`` always runs once before the schedule is consulted, so
    ``repeat(Schedule.recurs(n), fn)`` calls ``fn`` ``n + 1`` times and returns ``n``;
    ``repeat(Schedule.spaced(d) & Schedule.recurs(n), fn)`` runs at 0, d, 2d, ..., n*d.

    Args:
        schedule: the recurrence policy; its input is ``fn``'s result.
        fn: an async callable (a plain callable is accepted too).
        *args: positional arguments for ``fn``.

    Returns:
        The schedule's output on the step that said ``DONE`` (ZIO's ``repeat`` result): e.g.
        the count for ``recurs``, the pair for ``&``, all results for ``collect_all()``.

    Raises:
        Whatever ``fn`` raises, at once (wrap ``fn`` in ``retry`` to retry failures).
    """
    driver = schedule.driver()
    clock = _DriverClock()
    while True:
        value = await _call(fn, *args)
        decision = driver.next(value, now=clock.now())
        if isinstance(decision, Done):
            return driver.last_output
        await clock.wait_until(decision.at)


# ---------------------------------------------------------------------- combinators


async def timeout(seconds: Seconds, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` with a time limit; on expiry it is cancelled.

    Args:
        seconds: the limit, float seconds or ``timedelta``.
        fn: an async callable; ``*args`` its arguments.

    Returns:
        What ``fn`` returned within the limit.

    Raises:
        EffectTimeoutError: (a ``TimeoutError``) if the limit expired first. Whatever ``fn``
        raises passes through unchanged, as does cancellation from outside.
    """
    limit = to_seconds(seconds)
    with trio.move_on_after(limit):
        return await _call(fn, *args)
    # Only reachable when the deadline's cancellation ended ``fn``.
    raise EffectTimeoutError(limit)


@attrs.define
class _RaceState:
    has_winner: bool = False
    winner: Any = None
    failures: dict[int, Exception] = attrs.Factory(dict)
    fatal: BaseException | None = None


async def race(*fns: Callable[[], Awaitable[Any]]) -> Any:
    """Run the zero-argument ``fns`` concurrently; the first to succeed wins and the others
    are cancelled (and awaited) before ``race`` returns.

    Args:
        *fns: at least one zero-argument async callable.

    Returns:
        The winner's result.

    Raises:
        RaceFailedError: (an ``ExceptionGroup``) if every contender failed; its
            ``exceptions`` are the failures in argument order.
        BaseException: a non-``Exception`` failure (``KeyboardInterrupt``...) of any contender
            cancels the rest and is re-raised as itself, even if another one had won.
        ValueError: if no contender is given.
    """
    if not fns:
        raise ValueError("race() needs at least one contender")
    state = _RaceState()

    async def contender(index: int, fn: Callable[[], Any], scope: trio.CancelScope) -> None:
        try:
            value = await _call(fn)
        except BaseException as exc:
            if _is_cancellation(exc):
                raise
            if isinstance(exc, Exception):
                state.failures[index] = exc
            elif state.fatal is None:
                state.fatal = exc
                scope.cancel()
            return
        if not state.has_winner:
            state.has_winner, state.winner = True, value
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for index, fn in enumerate(fns):
                nursery.start_soon(contender, index, fn, nursery.cancel_scope)
    except BaseException:
        if state.fatal is not None:
            raise state.fatal from None
        raise
    if state.fatal is not None:
        raise state.fatal
    if state.has_winner:
        return state.winner
    failures = [state.failures[i] for i in sorted(state.failures)]
    raise RaceFailedError(f"all {len(failures)} race contenders failed", failures)


@attrs.define
class _ZipState:
    results: list[Any]
    failure: BaseException | None = None


async def zip_par(*fns: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
    """Run the zero-argument ``fns`` concurrently and return all their results.

    Args:
        *fns: zero-argument async callables (none: returns ``()``).

    Returns:
        The results, in argument order.

    Raises:
        The first failure, as itself (not wrapped in an exception group), after the other
        contenders have been cancelled and awaited. Later ``Exception``s raised while they
        wind down are dropped, but a ``BaseException`` that is not an ``Exception``
        (``KeyboardInterrupt``...) always wins over an ``Exception``.
    """
    state = _ZipState(results=[None] * len(fns))

    async def member(index: int, fn: Callable[[], Any], scope: trio.CancelScope) -> None:
        try:
            state.results[index] = await _call(fn)
        except BaseException as exc:
            if _is_cancellation(exc):
                raise
            if state.failure is None or (
                isinstance(state.failure, Exception) and not isinstance(exc, Exception)
            ):
                state.failure = exc
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for index, fn in enumerate(fns):
                nursery.start_soon(member, index, fn, nursery.cancel_scope)
    except BaseException:
        if state.failure is not None:
            raise state.failure from None
        raise
    if state.failure is not None:
        raise state.failure
    return tuple(state.results)


async def ensuring(fn: Callable[[], Awaitable[T]], finalizer: Callable[[], Any]) -> T:
    """Run ``fn()``, then ``finalizer()`` however ``fn`` ended: success, failure or
    cancellation. The finalizer runs in a shielded cancel scope, so it can await even when
    the surrounding scope is cancelled (bound it with its own ``trio.move_on_after`` if it may
    hang).

    Args:
        fn: a zero-argument async callable.
        finalizer: a zero-argument async (or plain) callable.

    Returns:
        What ``fn`` returned.

    Raises:
        Whatever ``fn`` raised, after the finalizer ran. If the finalizer itself raises, its
        exception propagates, with ``fn``'s exception (if any) as ``__context__``.
    """
    try:
        return await _call(fn)
    finally:
        with trio.CancelScope(shield=True):
            await _call(finalizer)
