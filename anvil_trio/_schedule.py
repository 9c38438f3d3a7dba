"""Schedules: a port of ZIO 2's ``Schedule`` to Trio.

Invariants:
- A schedule is a value: an initial state and a pure ``step(now, input, state)`` that returns
  ``(state, output, decision)``; ``decision`` is ``Continue(at)`` (recur at absolute time ``at``,
  on the same clock as ``now``) or ``DONE``.
- ``step`` never sleeps, never reads a clock and never mutates anything. Every constructor and
  combinator is built from ``step``; only drivers (``retry``, ``repeat``, supervisor backoff)
  sleep, with ``trio.sleep_until(decision.at)``.
- Times are seconds (float) on the caller's clock (``trio.current_time()`` in drivers).
  Durations given to constructors are seconds (``float``/``int``) or ``datetime.timedelta``;
  durations that schedules *output* (``exponential``, ``delays``, ``elapsed``...) are float
  seconds.
- The "delay" of a step is ``max(0, at - now)``. ``Continue(now)`` means "recur at once".
- Every schedule may be stepped again after it said ``DONE`` (combinators such as ``|`` keep
  stepping a finished side); it keeps answering ``DONE``.
- States are immutable (tuples, numbers, ``None``), so a state may be kept and replayed.
  The one impurity a caller can opt into is ``jittered(random=<callable or random.Random>)``;
  ``jittered(random=<int seed>)`` stays pure and replayable.
"""

from __future__ import annotations

import datetime
import math
import random as _random
import types
from typing import Any, Callable, Generic, TypeVar

import attrs

In = TypeVar("In")
Out = TypeVar("Out")

Seconds = float | int | datetime.timedelta

# Tolerance (relative to the interval) under which ``fixed`` treats ``now`` as on a boundary.
_BOUNDARY_EPS = 1e-9


@attrs.frozen
class Continue:
    """Recur: the next run starts at absolute time ``at``."""

    at: float


@attrs.frozen
class Done:
    """Stop recurring."""


DONE = Done()
Decision = Continue | Done

StepFn = Callable[[float, Any, Any], "tuple[Any, Any, Decision]"]


def to_seconds(duration: Seconds) -> float:
    """Convert a duration to float seconds.

    Args:
        duration: seconds as ``float``/``int``, or a ``datetime.timedelta``.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: if the duration is negative or not finite.
        TypeError: if it is neither a number nor a timedelta.
    """
    if isinstance(duration, datetime.timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        raise TypeError(f"expected seconds (float) or timedelta, got {duration!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and >= 0, got {duration!r}")
    return seconds


def delay_of(now: float, decision: Decision) -> float:
    """The delay a decision asks for: ``max(0, at - now)``, or ``0.0`` for ``DONE``."""
    if isinstance(decision, Continue):
        return max(0.0, decision.at - now)
    return 0.0


class _dualmethod:
    """A name that is a constructor on the class and a combinator on an instance.

    ``Schedule.up_to(5)`` builds the elapsed-time schedule; ``s.up_to(5)`` limits ``s``.
    """

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self._on_class = on_class
        self._on_instance = on_instance
        self.__doc__ = f"{on_class.__doc__}\n\nOn an instance: {on_instance.__doc__}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Callable[..., Any]:
        if obj is None:
            return types.MethodType(self._on_class, objtype)
        return types.MethodType(self._on_instance, obj)


def _always_now(now: float) -> Decision:
    return Continue(now)


@attrs.frozen
class Schedule(Generic[In, Out]):
    """A pure recurrence policy. See the module docstring for the contract.

    Build one with the constructors (``Schedule.exponential(1.0)``...) and combine with the
    operators and methods below; step it with :meth:`step` or :meth:`driver`.
    """

    initial: Any
    _step: StepFn = attrs.field(alias="step")

    def step(self, now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
        """Advance one recurrence: returns ``(new_state, output, Continue(at) | DONE)``."""
        return self._step(now, input, state)

    def driver(self) -> "ScheduleDriver":
        """A mutable cursor over this schedule, for drivers that feed it inputs one by one."""
        return ScheduleDriver(self)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def unfold(cls, initial: Any, f: Callable[[Any], Any]) -> "Schedule[Any, Any]":
        """Recur at once forever; outputs ``initial, f(initial), f(f(initial)), ...``."""

        def step(now: float, _input: Any, state: Any) -> tuple[Any, Any, Decision]:
            return f(state), state, Continue(now)

        return cls(initial, step)

    @classmethod
    def forever(cls) -> "Schedule[Any, int]":
        """Recur at once forever; outputs the count of recurrences so far: 0, 1, 2, ..."""
        return cls.unfold(0, lambda n: n + 1)

    @classmethod
    def identity(cls) -> "Schedule[Any, Any]":
        """Recur at once forever; outputs its input."""

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            return state, input, Continue(now)

        return cls(None, step)

    @classmethod
    def from_function(cls, f: Callable[[Any], Any]) -> "Schedule[Any, Any]":
        """Recur at once forever; outputs ``f(input)``."""
        return cls.identity().map(f)

    @classmethod
    def recurs(cls, n: int) -> "Schedule[Any, int]":
        """Continue exactly ``n`` times, at once; outputs the count so far (0, 1, ..., n).

        The step that outputs ``n`` is the one that says ``DONE``.
        """
        if n < 0:
            raise ValueError(f"recurs(n) needs n >= 0, got {n}")
        return cls.forever().while_output(lambda count: count < n)

    @classmethod
    def once(cls) -> "Schedule[Any, None]":
        """Continue once, at once; outputs ``None``."""
        return cls.recurs(1).map(lambda _: None)

    @classmethod
    def stop(cls) -> "Schedule[Any, None]":
        """Never continue; outputs ``None``."""
        return cls.recurs(0).map(lambda _: None)

    @classmethod
    def spaced(cls, duration: Seconds) -> "Schedule[Any, int]":
        """Continue forever, each run ``duration`` after the previous ended: ``at = now + d``.

        Outputs the count of recurrences so far.
        """
        d = to_seconds(duration)
        return cls.forever().add_delay(lambda _: d)

    @classmethod
    def fixed(cls, interval: Seconds) -> "Schedule[Any, int]":
        """Continue forever on boundaries aligned to the first step: ``start + k * interval``.

        Outputs the count of recurrences so far. If the last run took longer than one
        interval (``now > previous_at + interval``) the next run is at once (``at = now``);
        the missed boundaries are not replayed, so runs never pile up. Otherwise the next
        run is at the first boundary strictly after ``now``.
        """
        d = to_seconds(interval)

        def step(now: float, _input: Any, state: Any) -> tuple[Any, Any, Decision]:
            anchor, n = state
            if anchor is None:
                at = now + d
                return ((now, at), n + 1), n, Continue(at)
            start, last_run = anchor
            if d == 0.0 or now > last_run + d:
                at = now
            else:
                k = math.floor((now - start) / d + _BOUNDARY_EPS) + 1
                at = start + k * d
            return ((start, at), n + 1), n, Continue(at)

        return cls((None, 0), step)

    @classmethod
    def exponential(cls, base: Seconds, factor: float = 2.0) -> "Schedule[Any, float]":
        """Delays ``base * factor**n`` for n = 0, 1, 2, ... (b, 2b, 4b, ... by default).

        Outputs the delay in seconds. Continues forever; limit it with ``& recurs(n)``.
        """
        b = to_seconds(base)
        if factor < 0:
            raise ValueError(f"exponential factor must be >= 0, got {factor}")
        return cls.forever().map(lambda n: b * factor**n)._delayed()

    @classmethod
    def fibonacci(cls, one: Seconds) -> "Schedule[Any, float]":
        """Delays ``one * F(n)`` with F = 1, 1, 2, 3, 5, 8, ...; outputs the delay in seconds."""
        unit = to_seconds(one)
        pairs = cls.unfold((unit, unit), lambda pair: (pair[1], pair[0] + pair[1]))
        return pairs.map(lambda pair: pair[0])._delayed()

    @classmethod
    def linear(cls, base: Seconds) -> "Schedule[Any, float]":
        """Delays ``base * (n + 1)`` for n = 0, 1, 2, ... (b, 2b, 3b, ...); outputs the delay."""
        b = to_seconds(base)
        return cls.forever().map(lambda n: b * (n + 1))._delayed()

    @classmethod
    def duration(cls, duration: Seconds) -> "Schedule[Any, float]":
        """Continue once, after ``duration``; outputs ``duration`` then ``0.0`` (when done)."""
        d = to_seconds(duration)

        def step(now: float, _input: Any, first: bool) -> tuple[Any, Any, Decision]:
            if first:
                return False, d, Continue(now + d)
            return False, 0.0, DONE

        return cls(True, step)

    @classmethod
    def elapsed(cls) -> "Schedule[Any, float]":
        """Recur at once forever; outputs the seconds elapsed since the first step (0.0 first)."""

        def step(now: float, _input: Any, start: float | None) -> tuple[Any, Any, Decision]:
            if start is None:
                return now, 0.0, Continue(now)
            return start, now - start, Continue(now)

        return cls(None, step)

    @classmethod
    def recur_while(cls, predicate: Callable[[Any], bool]) -> "Schedule[Any, Any]":
        """Recur at once while ``predicate(input)`` holds; outputs the input."""
        return cls.identity().while_input(predicate)

    @classmethod
    def recur_until(cls, predicate: Callable[[Any], bool]) -> "Schedule[Any, Any]":
        """Recur at once until ``predicate(input)`` holds; outputs the input."""
        return cls.identity().until_input(predicate)

    def _up_to_constructor(cls, duration: Seconds) -> "Schedule[Any, float]":  # type: ignore[misc]
        """``Schedule.up_to(d)``: recur at once while elapsed time since the first step < d.

        Outputs the elapsed seconds (``elapsed().while_output(lambda e: e < d)``).
        """
        d = to_seconds(duration)
        return cls.elapsed().while_output(lambda elapsed: elapsed < d)

    def _up_to_method(self, duration: Seconds) -> "Schedule[Any, Any]":
        """``s.up_to(d)``: ``s`` limited to ``d`` seconds since its first step
        (``s.zip_left(Schedule.up_to(d))``); outputs what ``s`` outputs."""
        return self.zip_left(Schedule.up_to(duration))

    up_to = _dualmethod(_up_to_constructor, _up_to_method)
    del _up_to_constructor, _up_to_method

    def _collect_all_constructor(cls) -> "Schedule[Any, tuple]":  # type: ignore[misc]
        """``Schedule.collect_all()``: recur at once forever; outputs the tuple of all inputs
        so far, the current one included."""
        return cls.identity().collect_all()

    def _collect_all_method(self) -> "Schedule[Any, tuple]":
        """``s.collect_all()``: ``s`` whose output is the tuple of all its outputs so far."""
        return self.fold((), lambda acc, out: acc + (out,))

    collect_all = _dualmethod(_collect_all_constructor, _collect_all_method)
    del _collect_all_constructor, _collect_all_method

    # ------------------------------------------------------------------ combinators

    def _delayed(self) -> "Schedule[In, Out]":
        """Use each output (seconds) as the delay: ``at = now + output``."""
        return self.add_delay(lambda out: out)

    def map(self, f: Callable[[Out], Any]) -> "Schedule[In, Any]":
        """Same decisions; outputs ``f(output)``."""
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            state, out, decision = inner(now, input, state)
            return state, f(out), decision

        return Schedule(self.initial, step)

    def contramap(self, f: Callable[[Any], In]) -> "Schedule[Any, Out]":
        """Feed ``f(input)`` to this schedule instead of ``input``."""
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            return inner(now, f(input), state)

        return Schedule(self.initial, step)

    def check(self, predicate: Callable[[Any, Any], bool]) -> "Schedule[In, Out]":
        """Continue only while this one continues and ``predicate(input, output)`` holds."""
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            state, out, decision = inner(now, input, state)
            if isinstance(decision, Continue) and not predicate(input, out):
                return state, out, DONE
            return state, out, decision

        return Schedule(self.initial, step)

    def while_input(self, predicate: Callable[[Any], bool]) -> "Schedule[In, Out]":
        """Continue while this one continues and ``predicate(input)`` holds."""
        return self.check(lambda input, _out: predicate(input))

    def until_input(self, predicate: Callable[[Any], bool]) -> "Schedule[In, Out]":
        """Continue while this one continues and ``predicate(input)`` does not hold."""
        return self.check(lambda input, _out: not predicate(input))

    def while_output(self, predicate: Callable[[Any], bool]) -> "Schedule[In, Out]":
        """Continue while this one continues and ``predicate(output)`` holds."""
        return self.check(lambda _input, out: predicate(out))

    def until_output(self, predicate: Callable[[Any], bool]) -> "Schedule[In, Out]":
        """Continue while this one continues and ``predicate(output)`` does not hold."""
        return self.check(lambda _input, out: not predicate(out))

    def modify_delay(self, f: Callable[[Any, float], Seconds]) -> "Schedule[In, Out]":
        """Replace each delay: ``at' = now + f(output, delay)`` where ``delay = max(0, at - now)``.

        ``DONE`` is left alone.
        """
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            state, out, decision = inner(now, input, state)
            if isinstance(decision, Continue):
                new_delay = to_seconds(f(out, delay_of(now, decision)))
                return state, out, Continue(now + new_delay)
            return state, out, decision

        return Schedule(self.initial, step)

    def add_delay(self, f: Callable[[Any], Seconds]) -> "Schedule[In, Out]":
        """Lengthen each delay: ``delay' = delay + f(output)``."""
        return self.modify_delay(lambda out, delay: delay + to_seconds(f(out)))

    def jittered(
        self,
        min: float = 0.8,
        max: float = 1.2,
        *,
        random: int | _random.Random | Callable[[], float] | None = None,
    ) -> "Schedule[In, Out]":
        """Scale each delay by a random factor: ``delay' = delay * (min*(1-u) + max*u)``,
        ``u`` uniform in ``[0, 1)``, so ``min*delay <= delay' <= max*delay``.

        Args:
            min: the smallest factor (>= 0).
            max: the largest factor (>= ``min``).
            random: the source of ``u``. ``None``: the ``random`` module. A ``random.Random``
                or a zero-argument callable returning ``[0, 1)``: called once per step (the
                step is then impure). An ``int`` seed: ``u`` is derived from the seed and the
                step count kept in the state, so the schedule stays pure and replayable.

        Raises:
            ValueError: if ``not 0 <= min <= max``.
        """
        if not 0 <= min <= max:
            raise ValueError(f"jittered needs 0 <= min <= max, got min={min}, max={max}")
        low, high = min, max
        inner = self._step

        if isinstance(random, int) and not isinstance(random, bool):
            seed = random

            def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
                inner_state, n = state
                inner_state, out, decision = inner(now, input, inner_state)
                if isinstance(decision, Continue):
                    u = _random.Random(f"{seed}/{n}").random()
                    decision = Continue(now + delay_of(now, decision) * _scale(low, high, u))
                return (inner_state, n + 1), out, decision

            return Schedule((self.initial, 0), step)

        if random is None:
            draw: Callable[[], float] = _random.random
        elif isinstance(random, _random.Random):
            draw = random.random
        elif callable(random):
            draw = random
        else:
            raise TypeError(f"random must be None, an int seed, a Random or a callable: {random!r}")
        return self.modify_delay(lambda _out, delay: delay * _scale(low, high, draw()))

    def delays(self) -> "Schedule[In, float]":
        """Same decisions; outputs each step's delay in seconds (``0.0`` when ``DONE``)."""
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            state, _out, decision = inner(now, input, state)
            return state, delay_of(now, decision), decision

        return Schedule(self.initial, step)

    def fold(self, zero: Any, f: Callable[[Any, Any], Any]) -> "Schedule[In, Any]":
        """Same decisions; outputs the running fold ``f(...f(zero, out1)..., out_n)``.

        The output at each step already includes that step's output (ZIO >= 2.1 behaviour).
        """
        inner = self._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            inner_state, acc = state
            inner_state, out, decision = inner(now, input, inner_state)
            acc = f(acc, out)
            return (inner_state, acc), acc, decision

        return Schedule((self.initial, zero), step)

    def intersect(self, other: "Schedule[Any, Any]") -> "Schedule[Any, tuple]":
        """``self & other``: continue while both continue, at the later of the two times.

        Both sides see every input; outputs ``(self_output, other_output)``.
        """
        left, right = self._step, other._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            l_state, l_out, l_dec = left(now, input, state[0])
            r_state, r_out, r_dec = right(now, input, state[1])
            if isinstance(l_dec, Continue) and isinstance(r_dec, Continue):
                decision: Decision = Continue(_max(l_dec.at, r_dec.at))
            else:
                decision = DONE
            return (l_state, r_state), (l_out, r_out), decision

        return Schedule((self.initial, other.initial), step)

    def union(self, other: "Schedule[Any, Any]") -> "Schedule[Any, tuple]":
        """``self | other``: continue while either continues, at the earlier continuing time.

        Both sides see every input (a finished side keeps being stepped and keeps saying
        ``DONE``); outputs ``(self_output, other_output)``.
        """
        left, right = self._step, other._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            l_state, l_out, l_dec = left(now, input, state[0])
            r_state, r_out, r_dec = right(now, input, state[1])
            if isinstance(l_dec, Continue) and isinstance(r_dec, Continue):
                decision: Decision = Continue(_min(l_dec.at, r_dec.at))
            elif isinstance(l_dec, Continue):
                decision = l_dec
            elif isinstance(r_dec, Continue):
                decision = r_dec
            else:
                decision = DONE
            return (l_state, r_state), (l_out, r_out), decision

        return Schedule((self.initial, other.initial), step)

    __and__ = intersect
    __or__ = union

    def zip_left(self, other: "Schedule[Any, Any]") -> "Schedule[Any, Out]":
        """``self & other``, keeping only this schedule's output (ZIO's ``<*``)."""
        return self.intersect(other).map(lambda pair: pair[0])

    def zip_right(self, other: "Schedule[Any, Any]") -> "Schedule[Any, Any]":
        """``self & other``, keeping only the other schedule's output (ZIO's ``*>``)."""
        return self.intersect(other).map(lambda pair: pair[1])

    def and_then(self, other: "Schedule[Any, Any]") -> "Schedule[Any, Any]":
        """Run this schedule to its end, then ``other``; outputs whichever is running.

        The input of the step on which this schedule says ``DONE`` is fed at once to
        ``other`` (its first step), so no recurrence is lost or doubled.
        """
        first, second = self._step, other._step

        def step(now: float, input: Any, state: Any) -> tuple[Any, Any, Decision]:
            l_state, r_state, on_first = state
            if on_first:
                l_state, out, decision = first(now, input, l_state)
                if isinstance(decision, Continue):
                    return (l_state, r_state, True), out, decision
            r_state, out, decision = second(now, input, r_state)
            return (l_state, r_state, False), out, decision

        return Schedule((self.initial, other.initial, True), step)


def _scale(low: float, high: float, u: float) -> float:
    return low * (1 - u) + high * u


def _max(a: float, b: float) -> float:
    return a if a >= b else b


def _min(a: float, b: float) -> float:
    return a if a <= b else b


@attrs.define
class ScheduleDriver:
    """Holds a schedule's state between steps. Not thread-safe; one per driver loop.

    ``next(input, now=...)`` steps the schedule and returns the decision; ``last_output`` is the
    output of the most recent step; ``reset()`` starts over from the initial state. The driver
    itself never sleeps or reads a clock: the caller passes ``now`` and sleeps until ``at``.
    """

    schedule: Schedule
    _state: Any = attrs.field(init=False)
    last_output: Any = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._state = self.schedule.initial

    @property
    def state(self) -> Any:
        """The schedule state after the most recent step (the initial state before any)."""
        return self._state

    def next(self, input: Any, *, now: float) -> Decision:
        """Step with ``input`` at time ``now``; returns ``Continue(at)`` or ``DONE``."""
        self._state, self.last_output, decision = self.schedule.step(now, input, self._state)
        return decision

    def reset(self) -> None:
        """Start over from the initial state; ``last_output`` goes back to ``None``."""
        self._state = self.schedule.initial
        self.last_output = None
