"""Pure tests of anvil_trio's Schedule: every schedule is stepped directly with chosen `now`
values, no clock and no I/O. Hypothesis properties pin the ZIO 2 semantics."""

from __future__ import annotations

import datetime
import math
import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anvil_trio import DONE, Continue, Done, Schedule, ScheduleDriver, delay_of, to_seconds

PROPS = settings(max_examples=120, deadline=None)


def drive(schedule, *, inputs=None, start=0.0, gaps=None, limit=50):
    """Step `schedule` like a driver: the next `now` is the previous `at` plus a gap.

    Returns a list of (now, output, decision) up to and including the first DONE.
    """
    state = schedule.initial
    now = start
    trace = []
    for i in range(limit):
        value = inputs[i] if inputs is not None and i < len(inputs) else None
        state, out, decision = schedule.step(now, value, state)
        trace.append((now, out, decision))
        if isinstance(decision, Done):
            break
        gap = gaps[i] if gaps is not None and i < len(gaps) else 0.0
        now = decision.at + gap
    return trace


def delays(trace):
    return [delay_of(now, decision) for now, _out, decision in trace if decision != DONE]


# ---------------------------------------------------------------- constructors


def test_forever_counts_and_recurs_at_once():
    """forever() outputs 0, 1, 2, ... and always continues at `now`."""
    trace = drive(Schedule.forever(), start=5.0, limit=4)
    assert [out for _now, out, _d in trace] == [0, 1, 2, 3]
    assert [d for _now, _out, d in trace] == [Continue(5.0)] * 4


def test_recurs_continues_exactly_n_times_and_outputs_the_count():
    """recurs(3) continues three times, then says DONE with output 3."""
    trace = drive(Schedule.recurs(3))
    assert [out for _n, out, _d in trace] == [0, 1, 2, 3]
    assert [isinstance(d, Continue) for _n, _o, d in trace] == [True, True, True, False]


def test_recurs_zero_and_stop_never_continue():
    """recurs(0) and stop() are DONE on their first step; once() continues exactly once."""
    assert drive(Schedule.recurs(0))[0][2] == DONE
    assert drive(Schedule.stop()) == [(0.0, None, DONE)]
    assert [d for _n, _o, d in drive(Schedule.once())] == [Continue(0.0), DONE]


def test_recurs_rejects_negative():
    """recurs(-1) is a ValueError."""
    with pytest.raises(ValueError):
        Schedule.recurs(-1)


def test_finished_schedule_keeps_saying_done():
    """Stepping recurs(1) past its end keeps answering DONE."""
    s = Schedule.recurs(1)
    state = s.initial
    decisions = []
    for _ in range(4):
        state, _out, decision = s.step(0.0, None, state)
        decisions.append(decision)
    assert decisions == [Continue(0.0), DONE, DONE, DONE]


def test_spaced_is_now_plus_d_and_accepts_timedelta():
    """spaced(d) continues at now + d, whatever now is; a timedelta means the same seconds."""
    s = Schedule.spaced(datetime.timedelta(milliseconds=1500))
    state = s.initial
    for now in (0.0, 7.25, 100.0):
        state, _out, decision = s.step(now, None, state)
        assert decision == Continue(now + 1.5)


def test_exponential_delays_double():
    """exponential(0.5) delays 0.5, 1, 2, 4 and outputs each delay."""
    trace = drive(Schedule.exponential(0.5), limit=4)
    assert delays(trace) == [0.5, 1.0, 2.0, 4.0]
    assert [out for _n, out, _d in trace] == [0.5, 1.0, 2.0, 4.0]


def test_exponential_custom_factor():
    """exponential(1, factor=3) delays 1, 3, 9, 27."""
    assert delays(drive(Schedule.exponential(1.0, factor=3.0), limit=4)) == [1, 3, 9, 27]


def test_fibonacci_delays():
    """fibonacci(one) delays one, one, 2one, 3one, 5one, 8one."""
    assert delays(drive(Schedule.fibonacci(2.0), limit=6)) == [2, 2, 4, 6, 10, 16]


def test_linear_delays():
    """linear(base) delays base, 2base, 3base, 4base."""
    assert delays(drive(Schedule.linear(1.5), limit=4)) == [1.5, 3.0, 4.5, 6.0]


def test_fixed_aligns_to_first_step():
    """fixed(5) started at 10 recurs on 10 + 5k: an early or late (under one interval) step
    waits for the next boundary."""
    s = Schedule.fixed(5.0)
    state = s.initial
    expected = [(10.0, 15.0), (15.0, 20.0), (17.0, 20.0), (20.0, 25.0), (29.0, 30.0)]
    for now, at in expected:
        state, _out, decision = s.step(now, None, state)
        assert decision == Continue(at)


def test_fixed_overrun_runs_at_once_without_piling_up():
    """fixed(5): a run that overran past several boundaries is followed by exactly one
    immediate run, then by the next aligned boundary."""
    s = Schedule.fixed(5.0)
    state = s.initial
    state, _o, decision = s.step(0.0, None, state)
    assert decision == Continue(5.0)
    state, _o, decision = s.step(18.0, None, state)  # ran 5.0 -> 18.0, missed 10 and 15
    assert decision == Continue(18.0)
    state, _o, decision = s.step(18.5, None, state)  # a short run: wait for the boundary
    assert decision == Continue(20.0)


def test_duration_continues_once_after_d():
    """duration(3) continues once at now + 3, then is DONE."""
    trace = drive(Schedule.duration(3.0), start=1.0)
    assert [(now, d) for now, _o, d in trace] == [(1.0, Continue(4.0)), (4.0, DONE)]


def test_elapsed_and_up_to_constructor():
    """elapsed() outputs seconds since the first step; Schedule.up_to(d) stops once elapsed
    reaches d."""
    e = Schedule.elapsed()
    state = e.initial
    outs = []
    for now in (10.0, 12.0, 15.5):
        state, out, decision = e.step(now, None, state)
        outs.append(out)
        assert decision == Continue(now)
    assert outs == [0.0, 2.0, 5.5]
    u = Schedule.up_to(5.0)
    state = u.initial
    decisions = []
    for now in (10.0, 14.9, 15.0):
        state, _out, decision = u.step(now, None, state)
        decisions.append(decision)
    assert decisions == [Continue(10.0), Continue(14.9), DONE]


def test_up_to_method_keeps_output_of_the_schedule():
    """spaced(2).up_to(5) outputs spaced's count and stops at the first step >= 5 s."""
    trace = drive(Schedule.spaced(2.0).up_to(5.0))
    assert [(now, out) for now, out, _d in trace] == [(0.0, 0), (2.0, 1), (4.0, 2), (6.0, 3)]
    assert trace[-1][2] == DONE


def test_identity_unfold_and_from_function():
    """identity() echoes its input, unfold iterates f, from_function maps the input."""
    assert [o for _n, o, _d in drive(Schedule.identity(), inputs=["a", "b"], limit=2)] == [
        "a",
        "b",
    ]
    assert [o for _n, o, _d in drive(Schedule.unfold(1, lambda x: x * 3), limit=4)] == [
        1,
        3,
        9,
        27,
    ]
    assert [o for _n, o, _d in drive(Schedule.from_function(len), inputs=["ab"], limit=1)] == [2]


def test_recur_while_and_recur_until():
    """recur_while continues while the input matches; recur_until until it matches."""
    w = drive(Schedule.recur_while(lambda x: x < 3), inputs=[1, 2, 3, 4])
    assert [(o, isinstance(d, Continue)) for _n, o, d in w] == [(1, True), (2, True), (3, False)]
    u = drive(Schedule.recur_until(lambda x: x == "ok"), inputs=["no", "ok"])
    assert [isinstance(d, Continue) for _n, _o, d in u] == [True, False]


def test_collect_all_constructor_and_method():
    """collect_all() gathers every input so far; s.collect_all() gathers s's outputs."""
    trace = drive(Schedule.collect_all(), inputs=[1, 2, 3], limit=3)
    assert [o for _n, o, _d in trace] == [(1,), (1, 2), (1, 2, 3)]
    trace = drive(Schedule.recurs(2).collect_all())
    assert [o for _n, o, _d in trace] == [(0,), (0, 1), (0, 1, 2)]
    assert trace[-1][2] == DONE


# ---------------------------------------------------------------- combinators


def test_map_contramap_and_fold():
    """map changes outputs only, contramap changes inputs, fold accumulates outputs."""
    mapped = drive(Schedule.recurs(2).map(lambda n: n * 10))
    assert [o for _n, o, _d in mapped] == [0, 10, 20]
    contra = drive(Schedule.recur_while(lambda n: n < 2).contramap(len), inputs=["a", "bb"])
    assert [isinstance(d, Continue) for _n, _o, d in contra] == [True, False]
    folded = drive(Schedule.recurs(3).fold(100, lambda acc, n: acc + n))
    assert [o for _n, o, _d in folded] == [100, 101, 103, 106]


def test_input_and_output_checks():
    """while_/until_ input/output stop on the first step whose value fails the test."""
    ident = Schedule.identity()
    assert len(drive(ident.while_input(lambda x: x > 0), inputs=[3, 2, 0, 5])) == 3
    assert len(drive(ident.until_input(lambda x: x == 0), inputs=[3, 0, 5])) == 2
    counter = Schedule.forever()
    assert drive(counter.while_output(lambda n: n < 2))[-1][1] == 2
    assert drive(counter.until_output(lambda n: n == 4))[-1][1] == 4


def test_modify_delay_and_add_delay():
    """modify_delay sees (output, delay) and sets the delay; add_delay adds to it."""
    seen = []

    def twice(out, delay):
        seen.append((out, delay))
        return delay * 2

    trace = drive(Schedule.linear(1.0).modify_delay(twice), limit=3)
    assert delays(trace) == [2.0, 4.0, 6.0]
    assert seen == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    trace = drive(Schedule.spaced(1.0).add_delay(lambda n: n * 0.5), limit=3)
    assert delays(trace) == [1.0, 1.5, 2.0]


def test_delays_outputs_the_delay_and_zero_when_done():
    """delays() outputs each step's delay, 0.0 on the DONE step."""
    trace = drive((Schedule.exponential(1.0) & Schedule.recurs(3)).delays())
    assert [o for _n, o, _d in trace] == [1.0, 2.0, 4.0, 0.0]


def test_intersection_outputs_pair_and_union_keeps_going():
    """& pairs the outputs and stops with the shorter; | pairs them and stops with the longer."""
    both = drive(Schedule.recurs(1) & Schedule.recurs(3))
    assert [o for _n, o, _d in both] == [(0, 0), (1, 1)]
    either = drive(Schedule.recurs(1) | Schedule.recurs(3))
    assert [o for _n, o, _d in either] == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_and_then_outputs_whichever_runs():
    """recurs(1).and_then(spaced(2)) recurs once at once, then every 2 s with spaced's count."""
    trace = drive(Schedule.recurs(1).and_then(Schedule.spaced(2.0)), limit=4)
    assert [(now, o, d) for now, o, d in trace] == [
        (0.0, 0, Continue(0.0)),
        (0.0, 0, Continue(2.0)),
        (2.0, 1, Continue(4.0)),
        (4.0, 2, Continue(6.0)),
    ]


def test_jittered_seed_is_pure_and_replayable():
    """jittered(random=<int>) gives the same decision for the same (now, input, state)."""
    s = Schedule.spaced(10.0).jittered(random=42)
    first = drive(s, limit=5)
    again = drive(s, limit=5)
    assert first == again
    assert len(set(delays(first))) > 1


def test_jittered_accepts_random_instance_and_callable():
    """jittered uses a random.Random's .random() or a callable as the uniform source."""
    by_callable = drive(Schedule.spaced(10.0).jittered(0.5, 1.5, random=lambda: 0.0), limit=2)
    assert delays(by_callable) == [5.0, 5.0]
    rng = random.Random(7)
    expected = random.Random(7)
    trace = drive(Schedule.spaced(10.0).jittered(random=rng), limit=3)
    for d in delays(trace):
        assert d == pytest.approx(10.0 * (0.8 + 0.4 * expected.random()))


def test_bad_arguments_are_rejected():
    """Negative durations, non-durations and inverted jitter bounds raise."""
    with pytest.raises(ValueError):
        Schedule.spaced(-1.0)
    with pytest.raises(ValueError):
        to_seconds(math.inf)
    with pytest.raises(TypeError):
        Schedule.spaced("1s")
    with pytest.raises(ValueError):
        Schedule.forever().jittered(1.5, 1.0)
    with pytest.raises(TypeError):
        Schedule.forever().jittered(random="seed")


def test_driver_tracks_state_output_and_resets():
    """ScheduleDriver steps, remembers the last output, and reset() starts over."""
    driver = Schedule.recurs(2).driver()
    assert isinstance(driver, ScheduleDriver)
    assert driver.next("x", now=0.0) == Continue(0.0)
    assert driver.next("x", now=1.0) == Continue(1.0)
    assert driver.next("x", now=2.0) == DONE
    assert driver.last_output == 2
    driver.reset()
    assert driver.last_output is None and driver.state == 0
    assert driver.next("x", now=3.0) == Continue(3.0)


def test_schedules_are_frozen_values():
    """A Schedule cannot be mutated."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Schedule.forever().initial = 3  # type: ignore[misc]


# ---------------------------------------------------------------- properties

durations = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
positive = st.floats(min_value=0.01, max_value=50.0, allow_nan=False)
gap_lists = st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=0, max_size=40)


@st.composite
def schedules(draw):
    """A schedule among the delay/stop shapes that matter for & and |."""
    kinds = ["recurs", "spaced", "exponential", "fibonacci", "linear", "fixed", "up_to"]
    kind = draw(st.sampled_from([*kinds, "spaced_recurs", "duration"]))
    n = draw(st.integers(min_value=0, max_value=8))
    d = draw(positive)
    if kind == "recurs":
        return Schedule.recurs(n)
    if kind == "spaced":
        return Schedule.spaced(d)
    if kind == "exponential":
        return Schedule.exponential(d)
    if kind == "fibonacci":
        return Schedule.fibonacci(d)
    if kind == "linear":
        return Schedule.linear(d)
    if kind == "fixed":
        return Schedule.fixed(d)
    if kind == "up_to":
        return Schedule.up_to(d * 3)
    if kind == "duration":
        return Schedule.duration(d)
    return Schedule.spaced(d) & Schedule.recurs(n)


@PROPS
@given(base=positive, n=st.integers(min_value=0, max_value=12), start=durations, gaps=gap_lists)
def test_exponential_and_recurs_gives_exactly_n_doubling_delays(base, n, start, gaps):
    """exponential(b) & recurs(n) continues exactly n times with delays b * 2**i."""
    trace = drive(Schedule.exponential(base) & Schedule.recurs(n), start=start, gaps=gaps)
    assert trace[-1][2] == DONE
    assert delays(trace) == pytest.approx([base * 2**i for i in range(n)])


def _side_by_side(left, right, combined, nows):
    ls, rs, cs = left.initial, right.initial, combined.initial
    for now in nows:
        ls, _lo, ld = left.step(now, None, ls)
        rs, _ro, rd = right.step(now, None, rs)
        cs, _co, cd = combined.step(now, None, cs)
        yield ld, rd, cd


increasing_nows = st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=30).map(
    lambda steps: [sum(steps[: i + 1]) for i in range(len(steps))]
)


@PROPS
@given(left=schedules(), right=schedules(), nows=increasing_nows)
def test_intersection_stops_with_either_and_takes_the_larger_delay(left, right, nows):
    """s1 & s2 continues only while both continue, at the later of their two times."""
    for ld, rd, cd in _side_by_side(left, right, left & right, nows):
        if isinstance(ld, Continue) and isinstance(rd, Continue):
            assert cd == Continue(max(ld.at, rd.at))
        else:
            assert cd == DONE


@PROPS
@given(left=schedules(), right=schedules(), nows=increasing_nows)
def test_union_continues_with_either_and_takes_the_smaller_delay(left, right, nows):
    """s1 | s2 continues while either continues, at the earliest continuing time."""
    for ld, rd, cd in _side_by_side(left, right, left | right, nows):
        going = [d.at for d in (ld, rd) if isinstance(d, Continue)]
        assert cd == (Continue(min(going)) if going else DONE)


@PROPS
@given(left=schedules(), right=schedules(), start=durations, gaps=gap_lists)
def test_intersection_never_outlives_either_side_when_driven(left, right, start, gaps):
    """Driven to its end, s1 & s2 recurs no more often than either side driven alone."""
    both = drive(left & right, start=start, gaps=gaps, limit=60)
    runs = len(both) - (1 if both[-1][2] == DONE else 0)
    for side in (left, right):
        alone = drive(side, start=start, gaps=gaps, limit=60)
        if alone[-1][2] == DONE:
            assert runs <= len(alone) - 1


@PROPS
@given(
    n=st.integers(min_value=0, max_value=6),
    m=st.integers(min_value=0, max_value=6),
    d=positive,
    start=durations,
)
def test_and_then_runs_first_to_its_end_then_second(n, m, d, start):
    """recurs(n).and_then(spaced(d) & recurs(m)): n immediate recurrences, then m spaced ones."""
    second = (Schedule.spaced(d) & Schedule.recurs(m)).map(lambda pair: ("second", pair[1]))
    first = Schedule.recurs(n).map(lambda k: ("first", k))
    trace = drive(first.and_then(second), start=start)
    assert trace[-1][2] == DONE
    assert len(trace) == n + m + 1
    assert [o for _now, o, _d in trace] == (
        [("first", k) for k in range(n)] + [("second", k) for k in range(m + 1)]
    )
    assert delays(trace) == pytest.approx([0.0] * n + [d] * m)


@PROPS
@given(
    d=positive,
    low=st.floats(min_value=0.0, max_value=1.0),
    spread=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
    nows=increasing_nows,
)
def test_jitter_stays_within_bounds(d, low, spread, seed, nows):
    """jittered(min, max) keeps every delay within [min * d, max * d]."""
    high = low + spread
    s = Schedule.spaced(d).jittered(low, high, random=seed)
    state = s.initial
    for now in nows:
        state, _out, decision = s.step(now, None, state)
        delay = delay_of(now, decision)
        assert low * d - 1e-9 <= delay <= high * d + 1e-9


@PROPS
@given(
    d=st.floats(min_value=0.1, max_value=10.0),
    start=durations,
    runs=st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=1, max_size=30),
)
def test_fixed_never_piles_up(d, start, runs):
    """fixed(d): each next run is either at once after a run that overran an interval, or on
    the first start + k*d boundary after now; never a past time, never a catch-up burst."""
    s = Schedule.fixed(d)
    state, _out, decision = s.step(start, None, s.initial)
    assert decision == Continue(start + d)
    last_at = decision.at
    for run in runs:
        now = last_at + run
        state, _out, decision = s.step(now, None, state)
        at = decision.at
        assert at >= now
        if now > last_at + d:
            assert at == now
        else:
            k = (at - start) / d
            assert k == pytest.approx(round(k), abs=1e-6)
            assert 0 < at - now <= d * (1 + 1e-6)
        last_at = at


def test_done_is_a_singleton_value():
    """DONE is the Done() value, so decisions compare by value."""
    assert DONE == Done() and isinstance(DONE, Done)
