"""Errors of the actor layer.

Invariants:
- Every error the actor layer raises at a caller is an :class:`ActorError` (a ``RuntimeError``);
  exceptions an actor raises on purpose (its ``reply_errors``) reach the asker unchanged.
- The hierarchy says what the caller can do about it:

  - :class:`ActorUnavailableError` -- the child is down or restarting; trying again later may
    work (*retryable*). :class:`ActorCrashedError` is the special case "the actor crashed while
    handling your message or before getting to it"; it is retryable too, since a supervisor
    restarts the child, and carries the crash as ``__cause__``.
  - :class:`ActorStoppedError` -- the actor is gone for good (orderly stop, a failed supervisor,
    a temporary/transient child that finished); retrying is pointless.
  - :class:`AskTimeoutError` -- no reply within the ask's timeout. The message may still be
    handled later; its reply is then dropped.
  - :class:`SupervisorEscalationError` -- raised by ``Supervisor.run`` when the restart intensity
    is exceeded or the backoff schedule is done; the last crash is its ``__cause__``.
- "You stopped it" (:class:`ActorStoppedError`) is distinct from "it broke"
  (:class:`ActorCrashedError`), as in trio's ``ClosedResourceError`` / ``BrokenResourceError``.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorUnavailableError",
    "ActorCrashedError",
    "ActorStoppedError",
    "AskTimeoutError",
    "SupervisorEscalationError",
]


class ActorError(RuntimeError):
    """Base of every error the actor layer raises at a caller.

    Attributes:
        actor: the name of the actor (child) concerned, or ``None`` when not about one actor.
    """

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor


class ActorUnavailableError(ActorError):
    """The actor is down or restarting and did not take the message. Retryable.

    Raised by ``tell``, ``tell_nowait`` and ``ask`` when the child is not running: before the
    supervisor started it, while it waits out the backoff after a crash, or while a one-for-all
    restart has taken it down. ``__cause__`` is the crash that took it down, when there was one.
    """


class ActorCrashedError(ActorUnavailableError):
    """The actor crashed while handling this message, or before it got to it. Retryable.

    ``__cause__`` is the exception the actor raised. Every ask still waiting in the crashed
    actor's mailbox fails with this error at the moment of the crash; nothing waits for a
    restart.
    """


class ActorStoppedError(ActorError):
    """The actor is gone for good; retrying will not help.

    Raised after an orderly ``Supervisor.stop`` (at once for new messages; for queued asks that
    could not be served within the grace period), after the supervisor failed or was cancelled,
    and for a temporary child that ended or a transient child that ended normally.
    """


class AskTimeoutError(ActorError, TimeoutError):
    """``ask`` got no reply within its timeout.

    The timeout covers both waiting for mailbox space and waiting for the reply. The message
    may already be queued and may still be handled; its reply is then discarded. Also a
    ``TimeoutError``, so generic timeout handling catches it.
    """


class SupervisorEscalationError(ActorError):
    """A supervisor gave up: too many restarts in its period, or its backoff schedule is done.

    ``Supervisor.run`` raises it (outside its own nursery, so the parent sees this error and
    not an exception group) after cancelling every child; ``__cause__`` is the last crash
    (``None`` when the last exit was a permanent child returning normally).

    Attributes:
        supervisor: the supervisor's name.
        actor: the child whose exit triggered the escalation.
    """

    def __init__(self, message: str, *, supervisor: str, actor: str | None = None) -> None:
        super().__init__(message, actor=actor)
        self.supervisor = supervisor
