"""Supervisor: runs children in its own nursery and restarts them (the thin driver around
``_policy``).

Invariants:
- One task, the supervisor's main loop, decides every transition; child tasks and timers only
  *report* (``_Ready``, ``_Exited``, ``_RestartDue``, ``_GraceExpired``) over an unbounded
  internal channel, so decisions never interleave.
- Children start one at a time, in spec order: the next starts once the previous finished
  ``on_start``. ``run`` calls ``task_status.started()`` once every child is running (or
  finished for good). A child that crashes while starting is restarted like any other, and
  the children after it wait.
- A child that exits is restarted per ``should_restart`` (Erlang: permanent always, transient
  after a crash, temporary never). Every restart decision is recorded in the ``RestartWindow``;
  past ``intensity`` restarts within ``period`` seconds, or when the backoff schedule says
  ``DONE``, the supervisor escalates: it kills every child, and ``run`` raises
  ``SupervisorEscalationError`` (``__cause__`` = the last crash) outside its nursery.
- Backoff: the restart happens at ``decision.at`` of the unit's backoff driver, stepped at the
  exit time with the crash as input; a timer task waits with ``trio.sleep_until(at)``. The
  unit is the child (one-for-one) or the whole group (one-for-all). A unit whose last restart
  is at least ``period`` old starts its schedule over.
- While a child is down, its slot has no incarnation: ``tell``/``ask`` raise
  ``ActorUnavailableError`` (retryable) at once, with the crash as ``__cause__``.
- One-for-all: the crashed child's siblings are killed (their pending asks get
  ``ActorUnavailableError``), and once all are gone the group restarts, in spec order, from
  fresh factories. Temporary siblings killed this way are not restarted (Erlang semantics).
- Orderly stop: every mailbox is shut at once (new messages get ``ActorStoppedError``), each
  child handles what is already queued, runs ``on_stop`` and exits; after ``grace`` seconds the
  rest are cancelled and their unserved asks get ``ActorStoppedError``. No restarts happen
  while stopping. A supervisor runs once; ``STOPPED`` and ``FAILED`` are final.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs
import trio

from .._schedule import Continue, Schedule, ScheduleDriver
from ._actor import (
    ActorRef,
    ErrorFactory,
    Exit,
    ExitKind,
    _Incarnation,
    _Slot,
    error_factory,
)
from ._errors import ActorStoppedError, ActorUnavailableError, SupervisorEscalationError
from ._policy import Restart, RestartWindow, Strategy, should_restart
from ._spec import (
    ActorStats,
    ChildSpec,
    ChildState,
    SupervisorState,
    SupervisorStats,
)

__all__ = ["DEFAULT_BACKOFF", "Supervisor", "default_backoff"]


def default_backoff() -> Schedule:
    """The default backoff between restarts: ``Schedule.exponential(0.05) | Schedule.spaced(1.0)``.

    The n-th consecutive restart of a unit (n = 0, 1, ...) waits ``min(0.05 * 2**n, 1.0)``
    seconds: 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, ... It never says ``DONE``; the restart
    intensity is what bounds a crash loop.
    """
    return Schedule.exponential(0.05) | Schedule.spaced(1.0)


#: :func:`default_backoff`'s schedule (a frozen value: each supervisor steps its own drivers).
DEFAULT_BACKOFF: Schedule = default_backoff()


@attrs.frozen
class _Ready:
    child: "_Child"
    incarnation: _Incarnation


@attrs.frozen
class _Exited:
    child: "_Child"
    incarnation: _Incarnation
    exit: Exit


@attrs.frozen
class _RestartDue:
    children: tuple["_Child", ...]
    timer: trio.CancelScope


@attrs.frozen
class _StopRequested:
    grace: float


@attrs.frozen
class _GraceExpired:
    """Marks that a stop's grace period ran out (children still running are cancelled)."""


@attrs.define(eq=False)
class _Child:
    """The supervisor's private record of one child."""

    index: int
    spec: ChildSpec
    slot: _Slot
    backoff: ScheduleDriver
    live: _Incarnation | None = None  # the incarnation whose task has not reported its exit
    started_once: bool = False
    last_restart_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class Supervisor:
    """Runs child actors in its own nursery and restarts them when they exit.

    Refs from :meth:`ref` stay valid across restarts. While a child is down (waiting out the
    backoff, or taken down by a one-for-all restart) its refs raise ``ActorUnavailableError``
    at once (retryable; ``__cause__`` is the crash) rather than queueing for the next
    incarnation: a caller never waits on a dead actor, and the new incarnation starts with an
    empty mailbox as well as fresh state. A crash fails the ask being handled and every ask
    still queued with ``ActorCrashedError``. See :meth:`stop` for what an orderly stop drains.

    Args:
        children: the child specs, started in this order; names must be unique.
        strategy: ``Strategy.ONE_FOR_ONE`` (restart only the child that exited) or
            ``Strategy.ONE_FOR_ALL`` (stop the siblings too and restart them all).
        intensity: at most this many restarts within ``period`` seconds; one more and the
            supervisor escalates (``0``: escalate on the first exit that needs a restart).
        period: the intensity window, in seconds.
        backoff: the ``Schedule`` stepped with the crash exception (``None`` for the normal
            exit of a permanent child) at each restart; the restart happens at its
            ``Continue(at)``; ``DONE`` escalates. Default ``DEFAULT_BACKOFF``
            (:func:`default_backoff`):
            ``min(0.05 * 2**n, 1.0)`` seconds before the n-th consecutive restart. Restarts
            of a unit (the child, or the group for one-for-all) at least ``period`` apart
            start the schedule over.
        name: for errors, statistics and task names.
        shutdown_timeout: how long ``on_stop`` may run after a crash or a kill (shielded).

    Raises:
        ValueError: duplicate child names, ``intensity < 0`` or ``period <= 0``.
        TypeError: ``strategy`` is not a ``Strategy`` or ``backoff`` not a ``Schedule``.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        backoff: Schedule = DEFAULT_BACKOFF,
        name: str = "supervisor",
        shutdown_timeout: float = 1.0,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy, got {strategy!r}")
        if math.isnan(shutdown_timeout) or shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {shutdown_timeout!r}")
        self.name = name
        self.strategy = strategy
        self.shutdown_timeout = float(shutdown_timeout)
        self._window = RestartWindow(intensity, period)
        if not isinstance(backoff, Schedule):
            raise TypeError(f"backoff must be a Schedule, got {backoff!r}")
        self._backoff = backoff
        self._children = [
            _Child(i, spec, _Slot(spec.name, spec.mailbox_size), self._backoff.driver())
            for i, spec in enumerate(children)
        ]
        self._by_name = {child.name: child for child in self._children}
        self._group_backoff = self._backoff.driver()
        self._group_last_restart_at: float | None = None
        self._events_send, self._events_receive = trio.open_memory_channel[Any](math.inf)
        self._state = SupervisorState.NOT_STARTED
        self._restart_count = 0
        self._queue: list[_Child] = []  # waiting to be started, in spec order
        self._starting: _Child | None = None
        self._backing_off: set[_Child] = set()
        self._timers: set[trio.CancelScope] = set()
        self._wave: set[_Child] = set()  # one-for-all: siblings being killed
        self._wave_restart: tuple[tuple[_Child, ...], float] | None = None
        self._stop_requested = False
        self._started_reported = False
        self._escalation: SupervisorEscalationError | None = None
        self._done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED

    # ------------------------------------------------------------------ public API

    def ref(self, name: str) -> ActorRef:
        """A ref to the child ``name``; valid before start, across restarts and after the end.

        Raises:
            KeyError: there is no child of that name.
        """
        return ActorRef(slot=self._by_name[name].slot)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the children until :meth:`stop` (use ``await nursery.start(sup.run)``).

        ``task_status.started()`` is called once every child's ``on_start`` finished (or, if
        :meth:`stop` came first, when the stop is done).

        Raises:
            SupervisorEscalationError: too many restarts within ``period`` or the backoff is
                done; every child has been cancelled; ``__cause__`` is the last crash.
            RuntimeError: the supervisor already ran (or was stopped before it ran).
        """
        if self._state is not SupervisorState.NOT_STARTED:
            raise RuntimeError(f"supervisor {self.name!r} already ran; a supervisor runs once")
        self._state = SupervisorState.STARTING
        self._task_status = task_status
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._queue = list(self._children)
                self._start_next()
                await self._main_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._finish()
        if self._escalation is not None:
            raise self._escalation
        if not self._started_reported:
            self._started_reported = True
            task_status.started()

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop in order and wait until ``run`` is done.

        New messages are refused at once (``ActorStoppedError``); each child handles the
        messages already in its mailbox, runs ``on_stop`` and exits. Children still busy
        after ``grace`` seconds are cancelled; their unserved asks get ``ActorStoppedError``.
        Stopping a supervisor that never ran marks it stopped (``run`` then refuses to run);
        stopping a stopped or failed one returns at once.

        Args:
            grace: seconds the children get to drain their mailboxes (``math.inf``: no limit).
        """
        if self._state is SupervisorState.NOT_STARTED:
            self._finish()
            return
        if not self._done.is_set() and not self._stop_requested:
            self._stop_requested = True
            self._events_send.send_nowait(_StopRequested(grace))
        await self._done.wait()

    def statistics(self) -> SupervisorStats:
        """A frozen snapshot: state, restart counts, and per child its state, restarts,
        mailbox depth (current and deepest) and messages processed."""
        try:
            recent = self._window.count(trio.current_time())
        except RuntimeError:  # outside trio.run: no clock to window with
            recent = len(self._window.times)
        state = self._state
        if state is SupervisorState.RUNNING and (
            self._backing_off or self._queue or self._wave or self._starting is not None
        ):
            state = SupervisorState.RESTARTING
        return SupervisorStats(
            name=self.name,
            state=state,
            strategy=self.strategy,
            restarts=self._restart_count,
            recent_restarts=recent,
            intensity=self._window.intensity,
            period=self._window.period,
            children=tuple(self._child_stats(child) for child in self._children),
        )

    # ------------------------------------------------------------------ main loop

    async def _main_loop(self) -> None:
        async for event in self._events_receive:
            if isinstance(event, _Ready):
                self._on_ready(event.child, event.incarnation)
            elif isinstance(event, _Exited):
                self._on_exited(event.child, event.incarnation, event.exit)
            elif isinstance(event, _RestartDue):
                self._on_restart_due(event.children, event.timer)
            elif isinstance(event, _StopRequested):
                self._on_stop_requested(event.grace)
            else:
                self._on_grace_expired()
            if self._escalation is not None:
                return
            if self._state is SupervisorState.STOPPING and not any(
                child.live for child in self._children
            ):
                return

    def _on_ready(self, child: _Child, incarnation: _Incarnation) -> None:
        if child.live is not incarnation:
            return
        if child.slot.state is ChildState.STARTING:
            child.slot.state = ChildState.RUNNING
        if self._starting is child:
            self._starting = None
            self._start_next()

    def _on_exited(self, child: _Child, incarnation: _Incarnation, exit: Exit) -> None:
        if child.live is not incarnation:
            return
        child.live = None
        slot = child.slot
        if slot.incarnation is incarnation:
            slot.incarnation = None
        if self._starting is child:
            self._starting = None
        if self._state is SupervisorState.STOPPING:
            slot.state = ChildState.STOPPED
            slot.refusal = self._stopped_error(child)
            return
        if child in self._wave:
            self._wave.discard(child)
            if not self._wave and self._wave_restart is not None:
                children, at = self._wave_restart
                self._wave_restart = None
                self._start_timer(children, at)
            return
        crashed = exit.kind is ExitKind.CRASHED
        if should_restart(child.spec.restart, crashed=crashed):
            self._restart(child, exit.error)
            return
        slot.state = ChildState.STOPPED
        if crashed:
            message = f"{child.spec.restart.value} child {child.name!r} crashed; not restarted"
        else:
            message = f"{child.spec.restart.value} child {child.name!r} finished"
        slot.refusal = error_factory(
            ActorStoppedError, message, actor=child.name, cause=exit.error
        )
        self._start_next()

    def _on_restart_due(self, children: tuple[_Child, ...], timer: trio.CancelScope) -> None:
        if timer not in self._timers:
            return  # cancelled after it fired
        self._timers.discard(timer)
        for child in children:
            self._backing_off.discard(child)
            if child.slot.state is ChildState.RESTARTING and child not in self._queue:
                self._queue.append(child)
        self._queue.sort(key=lambda c: c.index)
        self._start_next()

    def _on_stop_requested(self, grace: float) -> None:
        self._state = SupervisorState.STOPPING
        self._cancel_timers()
        self._queue.clear()
        self._backing_off.clear()
        self._wave_restart = None
        for child in self._children:
            stopped = self._stopped_error(child)
            if child.live is not None:
                if child not in self._wave:
                    child.slot.state = ChildState.STOPPING
                child.live.shut(stopped)
            else:
                child.slot.state = ChildState.STOPPED
                child.slot.incarnation = None
                child.slot.refusal = stopped
        if not math.isinf(grace):
            assert self._nursery is not None
            self._nursery.start_soon(self._grace_timer, trio.current_time() + grace)

    def _on_grace_expired(self) -> None:
        for child in self._children:
            if child.live is not None:
                child.live.kill(
                    error_factory(
                        ActorStoppedError,
                        f"actor {child.name!r} was stopped before it answered "
                        f"(supervisor {self.name!r}: stop grace expired)",
                        actor=child.name,
                    )
                )

    # ------------------------------------------------------------------ decisions

    def _start_next(self) -> None:
        if self._starting is not None or self._state is SupervisorState.STOPPING:
            return
        if self._queue:
            head = self._queue[0]
            if any(c.index < head.index for c in self._backing_off):
                return  # an earlier child is waiting out its backoff: keep spec order
            self._spawn(self._queue.pop(0))
            return
        if self._state is SupervisorState.STARTING and not self._backing_off and not self._wave:
            self._state = SupervisorState.RUNNING
            self._started_reported = True
            self._task_status.started()

    def _spawn(self, child: _Child) -> None:
        slot = child.slot
        if child.started_once:
            slot.restarts += 1
        child.started_once = True
        incarnation = _Incarnation(
            slot,
            child.spec.factory,
            self.shutdown_timeout,
            on_self_stop=self._self_stop_error(child),
        )
        slot.incarnation = incarnation
        slot.state = ChildState.STARTING
        child.live = incarnation
        self._starting = child
        assert self._nursery is not None
        self._nursery.start_soon(
            self._run_child, child, incarnation, name=f"{self.name}/{child.name}"
        )

    def _restart(self, child: _Child, cause: BaseException | None) -> None:
        now = trio.current_time()
        previous = self._window
        self._window, allowed = previous.record(now)
        if not allowed:
            self._escalate(
                child,
                cause,
                f"more than {previous.intensity} restarts within {previous.period} seconds",
            )
            return
        if self.strategy is Strategy.ONE_FOR_ONE:
            driver, last = child.backoff, child.last_restart_at
            child.last_restart_at = now
        else:
            driver, last = self._group_backoff, self._group_last_restart_at
            self._group_last_restart_at = now
        if previous.quiet_since(last, now):
            driver.reset()
        decision = driver.next(cause, now=now)
        if not isinstance(decision, Continue):
            self._escalate(child, cause, "the backoff schedule is done")
            return
        self._restart_count += 1
        down = error_factory(
            ActorUnavailableError,
            f"actor {child.name!r} is down after {self._describe(cause)}; restarting",
            actor=child.name,
            cause=cause,
        )
        if self.strategy is Strategy.ONE_FOR_ONE:
            child.slot.state = ChildState.RESTARTING
            child.slot.refusal = down
            self._backing_off.add(child)
            self._start_timer((child,), decision.at)
            self._start_next()
            return
        self._restart_all(child, cause, decision.at)

    def _restart_all(self, crashed: _Child, cause: BaseException | None, at: float) -> None:
        self._cancel_timers()
        self._queue.clear()
        self._starting = None
        group: list[_Child] = []
        for child in self._children:
            slot = child.slot
            if child is not crashed and slot.state is ChildState.STOPPED:
                continue
            if child is not crashed and child.spec.restart is Restart.TEMPORARY:
                slot.state = ChildState.STOPPED
                slot.refusal = error_factory(
                    ActorStoppedError,
                    f"temporary child {child.name!r} was ended by a one-for-all restart",
                    actor=child.name,
                    cause=cause,
                )
            else:
                slot.state = ChildState.RESTARTING
                slot.refusal = error_factory(
                    ActorUnavailableError,
                    f"actor {child.name!r} is restarting (one-for-all) after "
                    f"{crashed.name!r} exited: {self._describe(cause)}",
                    actor=child.name,
                    cause=cause,
                )
                group.append(child)
            slot.incarnation = None
            if child.live is not None:
                self._wave.add(child)
                child.live.kill(slot.refusal)
        self._backing_off.update(group)
        if self._wave:
            self._wave_restart = (tuple(group), at)
        else:
            self._start_timer(tuple(group), at)

    def _escalate(self, child: _Child, cause: BaseException | None, why: str) -> None:
        error = SupervisorEscalationError(
            f"supervisor {self.name!r} gave up after {child.name!r} exited "
            f"({self._describe(cause)}): {why}",
            supervisor=self.name,
            actor=child.name,
        )
        error.__cause__ = cause
        self._escalation = error
        self._state = SupervisorState.FAILED
        self._cancel_timers()
        for other in self._children:
            reason = error_factory(
                ActorStoppedError,
                f"actor {other.name!r} is gone: supervisor {self.name!r} failed ({why})",
                actor=other.name,
                cause=error,
            )
            other.slot.state = ChildState.STOPPED
            other.slot.incarnation = None
            other.slot.refusal = reason
            if other.live is not None:
                other.live.kill(reason)

    # ------------------------------------------------------------------ tasks and helpers

    async def _run_child(self, child: _Child, incarnation: _Incarnation) -> None:
        def ready() -> None:
            self._events_send.send_nowait(_Ready(child, incarnation))

        exit = await incarnation.run(on_ready=ready)
        self._events_send.send_nowait(_Exited(child, incarnation, exit))

    def _start_timer(self, children: tuple[_Child, ...], at: float) -> None:
        timer = trio.CancelScope()
        self._timers.add(timer)
        assert self._nursery is not None
        self._nursery.start_soon(self._restart_timer, children, at, timer)

    async def _restart_timer(
        self, children: tuple[_Child, ...], at: float, timer: trio.CancelScope
    ) -> None:
        with timer:
            await trio.sleep_until(at)
            self._events_send.send_nowait(_RestartDue(children, timer))

    async def _grace_timer(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        self._events_send.send_nowait(_GraceExpired())

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _finish(self) -> None:
        if self._state is not SupervisorState.FAILED:
            self._state = SupervisorState.STOPPED
        for child in self._children:
            slot = child.slot
            if slot.state is not ChildState.STOPPED:
                slot.state = ChildState.STOPPED
                slot.refusal = self._stopped_error(child)
            slot.incarnation = None
        self._done.set()

    def _stopped_error(self, child: _Child) -> ErrorFactory:
        return error_factory(
            ActorStoppedError,
            f"actor {child.name!r} is stopped (supervisor {self.name!r} stopped)",
            actor=child.name,
        )

    def _self_stop_error(self, child: _Child) -> ErrorFactory:
        if child.spec.restart is Restart.PERMANENT:
            return error_factory(
                ActorUnavailableError,
                f"actor {child.name!r} stopped itself and will be restarted",
                actor=child.name,
            )
        return error_factory(
            ActorStoppedError, f"actor {child.name!r} stopped itself", actor=child.name
        )

    @staticmethod
    def _describe(cause: BaseException | None) -> str:
        return "a normal exit" if cause is None else f"a crash: {cause!r}"

    def _child_stats(self, child: _Child) -> ActorStats:
        slot = child.slot
        return ActorStats(
            name=child.name,
            state=slot.state,
            restart=child.spec.restart,
            restarts=slot.restarts,
            crashes=slot.crashes,
            mailbox_depth=slot.depth(),
            mailbox_max_depth=slot.max_depth,
            mailbox_size=slot.mailbox_size,
            messages_processed=slot.processed,
            batches_processed=slot.batches,
            last_crash=slot.last_crash,
        )
