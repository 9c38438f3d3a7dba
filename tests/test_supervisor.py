"""Supervisor: restart policy core, strategies, restart types, intensity, backoff, stop."""

from __future__ import annotations

from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given, settings

from anvil_trio import Schedule
from anvil_trio.actors import (
    DEFAULT_BACKOFF,
    Actor,
    ActorCrashedError,
    ActorStoppedError,
    ActorUnavailableError,
    ChildSpec,
    ChildState,
    Restart,
    RestartWindow,
    Strategy,
    Supervisor,
    SupervisorEscalationError,
    SupervisorState,
    should_restart,
)

# ---------------------------------------------------------------------- pure core


def test_window_allows_intensity_restarts_then_refuses() -> None:
    """Within one period the window allows `intensity` restarts and refuses the next."""
    window = RestartWindow(3, 5.0)
    allowed = []
    for now in (0.0, 1.0, 2.0, 3.0):
        window, ok = window.record(now)
        allowed.append(ok)
    assert allowed == [True, True, True, False]


def test_window_forgets_restarts_one_period_old() -> None:
    """A restart at exactly now - period no longer counts (Erlang's strict window)."""
    window = RestartWindow(1, 5.0)
    window, ok = window.record(0.0)
    assert ok
    window, ok = window.record(4.9)
    assert not ok
    window, ok = window.record(10.0)  # 0.0 and 4.9 are <= 10 - 5: forgotten
    assert ok and window.times == (10.0,)
    window, ok = window.record(15.0)
    assert ok and window.count(15.0) == 1


def test_window_is_a_value() -> None:
    """record returns a new window and leaves the old one unchanged; intensity 0 never allows."""
    window = RestartWindow(0, 1.0)
    new, ok = window.record(0.0)
    assert not ok and window.times == () and new.times == (0.0,)
    assert window.quiet_since(None, 0.0)
    assert window.quiet_since(1.0, 2.0) and not window.quiet_since(1.5, 2.0)


@pytest.mark.parametrize(
    ("intensity", "period"), [(-1, 1.0), (1, 0.0), (1, float("nan")), (True, 1)]
)
def test_window_rejects_bad_limits(intensity: Any, period: Any) -> None:
    """Negative intensity and non-positive or NaN periods are refused."""
    with pytest.raises(ValueError):
        RestartWindow(intensity, period)


@settings(max_examples=100, deadline=None)
@given(
    intensity=st.integers(0, 5),
    period=st.floats(0.5, 10.0),
    gaps=st.lists(st.floats(0.0, 5.0), max_size=30),
)
def test_window_matches_sliding_count(intensity: int, period: float, gaps: list[float]) -> None:
    """record(now) allows iff restarts in (now - period, now], this one included, <= intensity."""
    window = RestartWindow(intensity, period)
    history: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        history.append(now)
        window, ok = window.record(now)
        assert ok == (sum(1 for t in history if t > now - period) <= intensity)


def test_should_restart_follows_erlang() -> None:
    """Permanent always restarts, transient only after a crash, temporary never."""
    table = {
        (r, crashed): should_restart(r, crashed=crashed)
        for r in Restart
        for crashed in (False, True)
    }
    assert table == {
        (Restart.PERMANENT, False): True,
        (Restart.PERMANENT, True): True,
        (Restart.TRANSIENT, False): False,
        (Restart.TRANSIENT, True): True,
        (Restart.TEMPORARY, False): False,
        (Restart.TEMPORARY, True): False,
    }


# ---------------------------------------------------------------------- actors for the tests


@attrs.frozen
class Bump:
    pass


@attrs.frozen
class Count:
    pass


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Finish:
    pass


@attrs.frozen
class Hold:
    """Handle slowly: wait ``seconds``, then record and answer."""

    seconds: float
    tag: str


@attrs.define
class Log:
    entries: list[str] = attrs.Factory(list)


class Worker(Actor):
    def __init__(self, name: str = "w", log: Log | None = None) -> None:
        self.name = name
        self.count = 0
        self.log = log if log is not None else Log()

    async def on_start(self) -> None:
        self.log.entries.append(f"start {self.name}")

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Bump):
            self.count += 1
            return self.count
        if isinstance(message, Count):
            return self.count
        if isinstance(message, Crash):
            raise RuntimeError(f"{self.name} crashed")
        if isinstance(message, Finish):
            self.stop()
            return None
        if isinstance(message, Hold):
            await trio.sleep(message.seconds)
            self.log.entries.append(f"done {message.tag}")
            return message.tag
        return await super().receive(message)

    async def on_stop(self) -> None:
        self.log.entries.append(f"stop {self.name}")


class BrokenStart(Actor):
    async def on_start(self) -> None:
        raise OSError("cannot open the database")


# ---------------------------------------------------------------------- intensity and backoff


async def test_crash_loop_escalates_at_backoff_time(autojump_clock: Any) -> None:
    """A child that always fails to start escalates at 0.05+0.1+0.2 s with the default backoff."""
    sup = Supervisor([ChildSpec("db", BrokenStart)], intensity=3, period=5.0)
    start = trio.current_time()
    with pytest.raises(SupervisorEscalationError) as info:
        await sup.run()
    assert trio.current_time() - start == pytest.approx(0.35)
    # the same time, computed from the schedule itself
    driver, at = DEFAULT_BACKOFF.driver(), start
    for _ in range(3):
        at = driver.next(None, now=at).at  # type: ignore[union-attr]
    assert trio.current_time() == at
    assert isinstance(info.value.__cause__, OSError)
    assert (info.value.supervisor, info.value.actor) == ("supervisor", "db")
    stats = sup.statistics()
    assert stats.state is SupervisorState.FAILED
    assert (stats.child("db").crashes, stats.child("db").restarts) == (4, 3)
    with pytest.raises(ActorStoppedError):
        await sup.ref("db").ask(Count())


async def test_escalation_reaches_parent_nursery(autojump_clock: Any) -> None:
    """A crash loop after start makes run() raise into the parent, and cancels the siblings."""
    log = Log()
    sup = Supervisor(
        [ChildSpec("a", lambda: Worker("a", log)), ChildSpec("b", lambda: Worker("b", log))],
        intensity=1,
        period=10.0,
        backoff=Schedule.spaced(2.0),
    )
    a = sup.ref("a")
    with pytest.RaisesGroup(SupervisorEscalationError):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            start = trio.current_time()
            with pytest.raises(ActorCrashedError):
                await a.ask(Crash())
            await trio.sleep(2.5)
            with pytest.raises(ActorCrashedError):
                await a.ask(Crash())
            await trio.sleep(100)
    assert trio.current_time() == start + 2.5  # the second crash: 2 restarts > intensity 1
    assert log.entries.count("stop b") == 1  # the sibling's on_stop ran when it was cancelled


async def test_backoff_done_escalates(autojump_clock: Any) -> None:
    """A backoff schedule that says DONE escalates even below the intensity."""
    sup = Supervisor(
        [ChildSpec("db", BrokenStart)],
        intensity=100,
        backoff=Schedule.spaced(0.5) & Schedule.recurs(2),
    )
    start = trio.current_time()
    with pytest.raises(SupervisorEscalationError, match="backoff schedule is done"):
        await sup.run()
    assert trio.current_time() == start + 1.0


async def test_restarts_spread_out_do_not_escalate_and_reset_backoff(autojump_clock: Any) -> None:
    """Restarts a period apart stay within intensity 1, and each waits the first backoff step."""
    sup = Supervisor(
        [ChildSpec("w", Worker)], intensity=1, period=3.0, backoff=Schedule.exponential(1.0)
    )
    ref = sup.ref("w")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(3):
            crashed_at = trio.current_time()
            with pytest.raises(ActorCrashedError):
                await ref.ask(Crash())
            await trio.sleep(0.5)
            with pytest.raises(ActorUnavailableError):
                await ref.ask(Count())
            await trio.sleep(0.6)  # restarted at crashed_at + 1.0: the schedule started over
            assert await ref.ask(Count()) == 0
            await trio.sleep_until(crashed_at + 3.0)
        stats = sup.statistics()
        assert (stats.restarts, stats.child("w").restarts) == (3, 3)
        await sup.stop()


async def test_unavailable_during_backoff(autojump_clock: Any) -> None:
    """While the child waits out its backoff, messages get ActorUnavailableError with the cause."""
    sup = Supervisor([ChildSpec("w", Worker)], backoff=Schedule.spaced(1.0))
    ref = sup.ref("w")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ActorCrashedError):
            await ref.ask(Crash())
        await trio.sleep(0.5)
        with pytest.raises(ActorUnavailableError) as info:
            await ref.ask(Count())
        assert not isinstance(info.value, ActorCrashedError)
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(ActorUnavailableError):
            ref.tell_nowait(Bump())
        stats = sup.statistics()
        assert stats.state is SupervisorState.RESTARTING
        assert stats.child("w").state is ChildState.RESTARTING
        await trio.sleep(0.6)
        assert await ref.ask(Bump()) == 1
        assert sup.statistics().state is SupervisorState.RUNNING
        await sup.stop()


# ---------------------------------------------------------------------- strategies


async def test_one_for_all_restarts_siblings_with_fresh_state(autojump_clock: Any) -> None:
    """One crash restarts every sibling from its factory; their queued asks fail retryably."""
    log = Log()
    sup = Supervisor(
        [ChildSpec("a", lambda: Worker("a", log)), ChildSpec("b", lambda: Worker("b", log))],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=Schedule.spaced(1.0),
    )
    a, b = sup.ref("a"), sup.ref("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await b.ask(Bump())
        assert await b.ask(Bump()) == 2
        sibling_error: list[BaseException] = []

        async def slow_ask() -> None:
            try:
                await b.ask(Hold(10, "slow"))
            except ActorUnavailableError as exc:
                sibling_error.append(exc)

        nursery.start_soon(slow_ask)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ActorCrashedError):
            await a.ask(Crash())
        await trio.testing.wait_all_tasks_blocked()
        assert len(sibling_error) == 1 and not isinstance(sibling_error[0], ActorCrashedError)
        with pytest.raises(ActorUnavailableError):
            await b.ask(Count())
        await trio.sleep(1.01)
        assert await b.ask(Count()) == 0  # fresh state
        assert await a.ask(Count()) == 0
        stats = sup.statistics()
        assert stats.restarts == 1
        assert [c.restarts for c in stats.children] == [1, 1]
        assert log.entries == ["start a", "start b", "stop a", "stop b", "start a", "start b"]
        await sup.stop()


async def test_one_for_one_leaves_siblings_alone(autojump_clock: Any) -> None:
    """One-for-one restarts only the crashed child; the sibling keeps its state."""
    sup = Supervisor(
        [ChildSpec("a", Worker), ChildSpec("b", Worker)], backoff=Schedule.spaced(1.0)
    )
    a, b = sup.ref("a"), sup.ref("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await b.ask(Bump())
        await a.ask(Bump())
        with pytest.raises(ActorCrashedError):
            await a.ask(Crash())
        assert await b.ask(Count()) == 1
        await trio.sleep(1.01)
        assert (await a.ask(Count()), await b.ask(Count())) == (0, 1)
        assert [c.restarts for c in sup.statistics().children] == [1, 0]
        await sup.stop()


async def test_one_for_all_does_not_restart_temporary_sibling(autojump_clock: Any) -> None:
    """A temporary sibling ended by a one-for-all restart stays stopped."""
    sup = Supervisor(
        [ChildSpec("a", Worker), ChildSpec("t", Worker, restart=Restart.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=Schedule.spaced(1.0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ActorCrashedError):
            await sup.ref("a").ask(Crash())
        await trio.sleep(1.01)
        assert await sup.ref("a").ask(Count()) == 0
        with pytest.raises(ActorStoppedError):
            await sup.ref("t").ask(Count())
        await sup.stop()


async def test_refs_stay_valid_across_restarts(autojump_clock: Any) -> None:
    """A ref taken before start reaches every later incarnation."""
    sup = Supervisor([ChildSpec("w", Worker)], intensity=10, backoff=Schedule.spaced(0.1))
    ref = sup.ref("w")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(4):
            assert await ref.ask(Bump()) == 1
            with pytest.raises(ActorCrashedError):
                await ref.ask(Crash())
            await trio.sleep(0.11)
        assert await ref.ask(Bump()) == 1
        assert sup.statistics().child("w").restarts == 4
        await sup.stop()


# ---------------------------------------------------------------------- restart types


async def test_transient_child(autojump_clock: Any) -> None:
    """A transient child is restarted after a crash but not after a normal exit."""
    sup = Supervisor(
        [ChildSpec("t", Worker, restart=Restart.TRANSIENT)], backoff=Schedule.spaced(0.5)
    )
    ref = sup.ref("t")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ActorCrashedError):
            await ref.ask(Crash())
        await trio.sleep(0.51)
        assert await ref.ask(Bump()) == 1
        await ref.ask(Finish())
        await trio.sleep(10)
        with pytest.raises(ActorStoppedError):
            await ref.ask(Count())
        stats = sup.statistics().child("t")
        assert (stats.state, stats.restarts) == (ChildState.STOPPED, 1)
        await sup.stop()


async def test_temporary_child_never_restarts_and_does_not_count(autojump_clock: Any) -> None:
    """A temporary child's crash ends it for good and uses no restart intensity."""
    sup = Supervisor(
        [ChildSpec("t", Worker, restart=Restart.TEMPORARY), ChildSpec("p", Worker)],
        intensity=0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ActorCrashedError):
            await sup.ref("t").ask(Crash())
        await trio.sleep(10)
        with pytest.raises(ActorStoppedError) as info:
            await sup.ref("t").ask(Count())
        assert isinstance(info.value.__cause__, RuntimeError)
        assert await sup.ref("p").ask(Bump()) == 1
        assert sup.statistics().state is SupervisorState.RUNNING
        await sup.stop()


async def test_permanent_child_restarts_after_normal_exit(autojump_clock: Any) -> None:
    """A permanent child that stops itself is restarted, and refusals meanwhile are retryable."""
    sup = Supervisor([ChildSpec("p", Worker)], backoff=Schedule.spaced(0.5))
    ref = sup.ref("p")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await ref.ask(Bump())
        await ref.ask(Finish())
        with pytest.raises(ActorUnavailableError):
            await ref.ask(Count())
        await trio.sleep(0.51)
        assert await ref.ask(Count()) == 0
        assert sup.statistics().child("p").crashes == 0
        await sup.stop()


# ---------------------------------------------------------------------- start and stop


async def test_children_start_in_order_and_started_waits_for_all(autojump_clock: Any) -> None:
    """Children start one by one in spec order; started() comes after a failed start recovers."""
    log = Log()
    attempts = {"b": 0}

    class FlakyStart(Worker):
        async def on_start(self) -> None:
            attempts["b"] += 1
            if attempts["b"] == 1:
                raise OSError("not yet")
            await super().on_start()

    sup = Supervisor(
        [
            ChildSpec("a", lambda: Worker("a", log)),
            ChildSpec("b", lambda: FlakyStart("b", log)),
            ChildSpec("c", lambda: Worker("c", log)),
        ]
    )
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(sup.run)
        assert trio.current_time() == start + 0.05
        assert log.entries == ["start a", "start b", "start c"]
        assert sup.statistics().state is SupervisorState.RUNNING
        await sup.stop()


async def test_stop_drains_queued_messages(autojump_clock: Any) -> None:
    """stop refuses new messages at once but handles those already queued, then on_stop."""
    log = Log()
    sup = Supervisor([ChildSpec("w", lambda: Worker("w", log))])
    ref = sup.ref("w")
    replies: list[str] = []

    async def ask(tag: str) -> None:
        replies.append(await ref.ask(Hold(1.0, tag), timeout=None))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for tag in "xyz":
            nursery.start_soon(ask, tag)
            await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        async with trio.open_nursery() as stopper:
            stopper.start_soon(sup.stop)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ActorStoppedError):
                await ref.tell(Bump())
            assert sup.statistics().state is SupervisorState.STOPPING
        assert trio.current_time() == start + 3.0
    assert replies == ["x", "y", "z"]
    assert log.entries == ["start w", "done x", "done y", "done z", "stop w"]
    assert sup.statistics().child("w").state is ChildState.STOPPED
    assert sup.statistics().state is SupervisorState.STOPPED


async def test_stop_cancels_after_grace(autojump_clock: Any) -> None:
    """After the grace period the rest is cancelled and unserved asks get ActorStoppedError."""
    log = Log()
    sup = Supervisor([ChildSpec("w", lambda: Worker("w", log))])
    ref = sup.ref("w")
    outcomes: list[str] = []

    async def ask(tag: str) -> None:
        try:
            outcomes.append(await ref.ask(Hold(2.0, tag), timeout=None))
        except ActorStoppedError:
            outcomes.append(f"stopped {tag} at {trio.current_time() - start}")

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(sup.run)
        for tag in "xyz":
            nursery.start_soon(ask, tag)
            await trio.testing.wait_all_tasks_blocked()
        await sup.stop(grace=3.0)
        assert trio.current_time() == start + 3.0
    assert sorted(outcomes) == ["stopped y at 3.0", "stopped z at 3.0", "x"]
    assert log.entries == ["start w", "done x", "stop w"]  # on_stop still ran, best effort


async def test_stop_before_run_and_run_once(autojump_clock: Any) -> None:
    """Stopping a supervisor that never ran makes refs stopped and run() refuse to run."""
    sup = Supervisor([ChildSpec("w", Worker)])
    await sup.stop()
    with pytest.raises(ActorStoppedError):
        await sup.ref("w").ask(Count())
    with pytest.raises(RuntimeError, match="runs once"):
        await sup.run()


async def test_stop_during_backoff(autojump_clock: Any) -> None:
    """stop while a child waits out its backoff returns at once and the child stays down."""
    sup = Supervisor([ChildSpec("w", Worker)], backoff=Schedule.spaced(10.0))
    ref = sup.ref("w")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ActorCrashedError):
            await ref.ask(Crash())
        start = trio.current_time()
        await sup.stop()
        assert trio.current_time() == start
    with pytest.raises(ActorStoppedError):
        await ref.ask(Count())
    await sup.stop()  # stopping again is a no-op


async def test_cancelling_the_parent_fails_pending_asks(autojump_clock: Any) -> None:
    """Cancelling run() from outside answers pending asks with ActorStoppedError; no hang."""
    sup = Supervisor([ChildSpec("w", Worker)])
    ref = sup.ref("w")
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await ref.ask(Hold(100, "never"), timeout=None)
        except ActorStoppedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as inner:
            await inner.start(sup.run)
            outer.start_soon(ask)  # being handled
            outer.start_soon(ask)  # queued behind it
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()
    assert len(errors) == 2
    assert sup.statistics().state is SupervisorState.STOPPED


def test_supervisor_rejects_bad_configuration() -> None:
    """Duplicate names, bad intensity and a non-Schedule backoff are refused."""
    with pytest.raises(ValueError):
        Supervisor([ChildSpec("a", Worker), ChildSpec("a", Worker)])
    with pytest.raises(ValueError):
        Supervisor([ChildSpec("a", Worker)], intensity=-1)
    with pytest.raises(TypeError):
        Supervisor([ChildSpec("a", Worker)], backoff=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChildSpec("a", Worker, mailbox_size=-1)


async def test_stop_during_start_cancels_after_grace(autojump_clock: Any) -> None:
    """A stop while on_start hangs cancels it after the grace; nursery.start still returns."""
    never = trio.Event()

    class Hung(Worker):
        async def on_start(self) -> None:
            await never.wait()

    sup = Supervisor([ChildSpec("h", Hung)])

    async def stop_later() -> None:
        await trio.sleep(1.0)
        await sup.stop(grace=2.0)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_later)
        await nursery.start(sup.run)
        assert trio.current_time() == start + 3.0
    assert sup.statistics().state is SupervisorState.STOPPED


async def test_factory_error_counts_as_crash(autojump_clock: Any) -> None:
    """An exception from the child factory is a crash: restarted, then escalated with it."""
    calls = []

    def factory() -> Actor:
        calls.append(trio.current_time())
        raise ValueError("bad configuration")

    sup = Supervisor([ChildSpec("x", factory)], intensity=1, backoff=Schedule.spaced(1.0))
    start = trio.current_time()
    with pytest.raises(SupervisorEscalationError) as info:
        await sup.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == [start, start + 1.0]
