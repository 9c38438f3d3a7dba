"""Values of the actor layer: child specs, lifecycle states and statistics records.

Invariants:
- Everything here is a frozen value (``attrs.frozen``); the mutable runtime state lives in the
  supervisor and its actors and is only ever *reported* through these records.
- A child's lifecycle (``ChildState``):
  ``NOT_STARTED -> STARTING -> RUNNING``; a crash or exit goes to ``RESTARTING`` (will be
  started again after the backoff) or to ``STOPPED`` (not restarted); an orderly stop goes
  through ``STOPPING`` to ``STOPPED``. ``STOPPED`` is final.
- A supervisor's lifecycle (``SupervisorState``):
  ``NOT_STARTED -> STARTING -> RUNNING <-> RESTARTING -> STOPPING -> STOPPED``, or ``FAILED``
  once it escalated. ``STOPPED`` and ``FAILED`` are final; a supervisor runs once.
- Statistics are snapshots: taking one never blocks and never changes anything.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

import attrs

from ._policy import Restart, Strategy

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = ["ChildSpec", "ChildState", "SupervisorState", "ActorStats", "SupervisorStats"]


def _check_name(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a child name must be a non-empty str, got {value!r}")


def _check_mailbox_size(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"mailbox_size must be an int >= 0 (a bounded mailbox), got {value!r}")


@attrs.frozen
class ChildSpec:
    """How a supervisor runs one child.

    Args:
        name: unique among the supervisor's children; ``Supervisor.ref(name)`` finds it.
        factory: called with no arguments for every incarnation (first start and each restart)
            and must return a *new* :class:`Actor`, so a restarted child starts from fresh
            state. An exception from the factory counts as a crash of the child.
        restart: :class:`Restart` type (default ``PERMANENT``).
        mailbox_size: capacity of the bounded mailbox (``trio.open_memory_channel``); ``tell``
            waits and ``tell_nowait`` raises ``trio.WouldBlock`` while it is full. ``0`` makes
            every send a rendezvous with the actor.

    Raises:
        ValueError: for an empty name or a negative mailbox size.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Callable[[], "Actor"]
    restart: Restart = attrs.field(default=Restart.PERMANENT, kw_only=True)
    mailbox_size: int = attrs.field(default=64, kw_only=True, validator=_check_mailbox_size)


class ChildState(enum.Enum):
    """Where a child is in its lifecycle (see the module docstring)."""

    NOT_STARTED = "not_started"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class SupervisorState(enum.Enum):
    """Where a supervisor is in its lifecycle (see the module docstring)."""

    NOT_STARTED = "not_started"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen
class ActorStats:
    """A snapshot of one child.

    Attributes:
        name: the child's name.
        state: its :class:`ChildState`.
        restart: its :class:`Restart` type.
        restarts: how many times it was started again after its first start (every new
            incarnation after the first; one-for-all restarts count for every sibling).
        crashes: how many of its incarnations ended by raising (including ``on_start`` and
            factory failures).
        mailbox_depth: messages waiting in the current mailbox (0 while down).
        mailbox_max_depth: the deepest the mailbox has been, over all incarnations.
        mailbox_size: the mailbox capacity.
        messages_processed: messages whose ``receive`` finished (returned, or raised one of the
            actor's ``reply_errors``), over all incarnations.
        batches_processed: how many ``receive`` or ``receive_batch`` calls handled them (fewer
            than the messages when waiting messages were handled together).
        last_crash: ``repr`` of the last exception that crashed it, or ``None``.
    """

    name: str
    state: ChildState
    restart: Restart
    restarts: int
    crashes: int
    mailbox_depth: int
    mailbox_max_depth: int
    mailbox_size: int
    messages_processed: int
    batches_processed: int
    last_crash: str | None


@attrs.frozen
class SupervisorStats:
    """A snapshot of a supervisor and its children.

    Attributes:
        name: the supervisor's name.
        state: its :class:`SupervisorState` (``RESTARTING`` while any restart is pending).
        strategy: its :class:`Strategy`.
        restarts: restart decisions taken so far (a one-for-all restart counts once).
        recent_restarts: restarts inside the current intensity window.
        intensity: the most restarts allowed within ``period``.
        period: the intensity window, in seconds.
        children: one :class:`ActorStats` per child, in spec order.
    """

    name: str
    state: SupervisorState
    strategy: Strategy
    restarts: int
    recent_restarts: int
    intensity: int
    period: float
    children: tuple[ActorStats, ...]

    def child(self, name: str) -> ActorStats:
        """The statistics of the child called ``name``.

        Raises:
            KeyError: if there is no such child.
        """
        for stats in self.children:
            if stats.name == name:
                return stats
        raise KeyError(name)
