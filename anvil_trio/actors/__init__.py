"""Actors and supervisors on Trio (layer 2 of anvil_trio).

An actor is a task that owns private state and a bounded memory-channel mailbox; callers
hold :class:`ActorRef` handles and ``tell`` (fire and forget, with backpressure) or ``ask``
(request and reply, with a deadline). A :class:`Supervisor` runs its children in its own
nursery, restarts them Erlang-style (one-for-one or one-for-all; permanent, transient,
temporary; at most ``intensity`` restarts in ``period`` seconds, with a backoff ``Schedule``
between restarts) and escalates with :class:`SupervisorEscalationError` when the limit is
hit. A caller whose actor is down gets a clear error at once, never a hang.

This layer imports only from the effects layer (``anvil_trio._schedule``).
"""

from ._actor import Actor, ActorRef
from ._errors import (
    ActorCrashedError,
    ActorError,
    ActorStoppedError,
    ActorUnavailableError,
    AskTimeoutError,
    SupervisorEscalationError,
)
from ._policy import Restart, RestartWindow, Strategy, should_restart
from ._spec import ActorStats, ChildSpec, ChildState, SupervisorState, SupervisorStats
from ._supervisor import DEFAULT_BACKOFF, Supervisor, default_backoff

__all__ = [
    "DEFAULT_BACKOFF",
    "Actor",
    "ActorCrashedError",
    "ActorError",
    "ActorRef",
    "ActorStats",
    "ActorStoppedError",
    "ActorUnavailableError",
    "AskTimeoutError",
    "ChildSpec",
    "ChildState",
    "Restart",
    "RestartWindow",
    "Strategy",
    "Supervisor",
    "SupervisorEscalationError",
    "SupervisorState",
    "SupervisorStats",
    "default_backoff",
    "should_restart",
]
