"""Actors, their refs, and one incarnation's message loop.

Invariants:
- An incarnation (one run of one actor object) owns a bounded ``trio`` memory channel: it alone
  holds the receive end; the child's slot holds the one send end, and every :class:`ActorRef`
  reaches that send end through the slot. A ref therefore stays valid across restarts: each
  restart puts a new incarnation (new actor, new mailbox) into the same slot.
- Messages are handled one at a time, in arrival order. ``receive``'s return value answers an
  ask; an exception listed in ``reply_errors`` answers the ask (or is dropped for a tell) and
  the actor keeps going; any other ``Exception`` crashes the incarnation. An actor whose
  ``batch_limit`` is above 1 may be handed several messages at once (``receive_batch``): only
  messages that were already waiting when the first was taken, in arrival order, answered each
  on its own once the batch is done; a crash answers every one of them with the crash.
- Nothing hangs. When an incarnation ends for any reason (crash, kill, outside cancellation)
  it first *shuts* its mailbox (closes the send end, so new and blocked senders get an error at
  once) and then answers, synchronously, the ask it was handling and every ask still queued,
  with an error saying why (:class:`ActorCrashedError` with the crash as ``__cause__``,
  :class:`ActorUnavailableError` or :class:`ActorStoppedError`). Tells still queued are
  dropped. Only then does it run ``on_stop``.
- An orderly end (the supervisor's ``stop`` or the actor's own :meth:`Actor.stop`) also shuts
  the mailbox first, but then keeps handling what is already queued until the mailbox is
  empty; then ``on_stop`` runs.
- ``on_stop`` runs only if ``on_start`` completed. After a crash or a kill it runs shielded,
  for at most ``shutdown_timeout`` seconds; its own errors are logged and ignored.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import attrs
import outcome
import trio

from ._errors import (
    ActorCrashedError,
    ActorError,
    ActorStoppedError,
    ActorUnavailableError,
    AskTimeoutError,
)
from ._spec import ChildState

__all__ = ["Actor", "ActorRef"]

logger = logging.getLogger("anvil_trio.actors")

#: Builds a fresh error each time it is called (an exception object is raised at one caller).
ErrorFactory = Callable[[], ActorError]

_SEND_FAILED = (trio.ClosedResourceError, trio.BrokenResourceError)


def error_factory(
    cls: type[ActorError], message: str, *, actor: str, cause: BaseException | None = None
) -> ErrorFactory:
    """A factory of ``cls(message, actor=actor)`` errors whose ``__cause__`` is ``cause``."""

    def make() -> ActorError:
        error = cls(message, actor=actor)
        error.__cause__ = cause
        return error

    return make


class Actor:
    """Behaviour of an actor; subclass it. One instance per incarnation.

    A supervisor builds a new instance from its :class:`ChildSpec` factory for every start and
    restart, so whatever the instance holds is private state that a restart throws away. The
    runtime calls ``on_start`` once, then ``receive`` (and ``after_reply``) for each message in
    order, then ``on_stop``; never two of them at once.

    Attributes:
        reply_errors: exception types that :meth:`receive` may raise *as an answer*: the
            exception is sent back to the asker (dropped for a tell) and the actor keeps
            running. Any other ``Exception`` crashes the actor. List ``Exception`` subclasses
            only.
        batch_limit: the most messages the runtime hands to :meth:`receive_batch` at once.
            With the default 1 every message goes to :meth:`receive`; above 1, when more than
            one message is already waiting, up to this many go to ``receive_batch`` together.
    """

    reply_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    batch_limit: ClassVar[int] = 1

    async def on_start(self) -> None:
        """Prepare before the first message (open files, connect to databases).

        An exception here is a crash of the child (and ``on_stop`` is not called). Messages
        sent meanwhile wait in the mailbox. Does nothing by default.
        """

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ask (ignored for a tell).

        Raises:
            TypeError: by default, for every message: a subclass must override this, and an
                actor that does not handle a message crashes (unless it lists ``TypeError``
                in ``reply_errors``).
        """
        raise TypeError(f"{type(self).__name__} does not handle the message {message!r}")

    async def receive_batch(self, messages: Sequence[Any]) -> list[outcome.Outcome]:
        """Handle several messages that were waiting together (see ``batch_limit``), in order,
        e.g. to write them in one transaction. Their replies are sent once it returns.

        Returns:
            One ``outcome.Value(reply)`` or ``outcome.Error(exc)`` per message, in order; an
            ``Error`` must hold a ``reply_errors`` instance (it answers that message).

        Raises:
            Anything: a crash, which answers every message of the batch with the crash. By
            default each message goes to :meth:`receive` in turn.
        """
        results: list[outcome.Outcome] = []
        for message in messages:
            try:
                results.append(outcome.Value(await self.receive(message)))
            except self.reply_errors as exc:
                results.append(outcome.Error(exc))
        return results

    async def after_reply(self) -> None:
        """Follow-up work for the message just handled, done after its reply was sent.

        Runs once after every message (after a batch: once, after all its replies), before
        the next one is taken, so it is ordered with the messages like ``receive`` is, but no
        asker waits for it (use it for cleanup that need not delay the answer). An exception
        here crashes the actor. Does nothing by default (and is then not called at all).
        """

    async def on_stop(self) -> None:
        """Clean up; runs on an orderly stop and, best effort, after a crash or a kill.

        Runs only if ``on_start`` completed. After a crash or kill it is shielded from
        cancellation but limited to the supervisor's ``shutdown_timeout``; exceptions are
        logged and ignored. Does nothing by default.
        """

    def stop(self) -> None:
        """Ask to end this incarnation normally once the current message is handled.

        Call it from :meth:`receive`. The mailbox stops taking new messages at once (senders
        get :class:`ActorStoppedError`, or :class:`ActorUnavailableError` for a permanent
        child, which the supervisor restarts); messages already queued are still handled,
        then ``on_stop`` runs and the incarnation exits normally. For the supervisor a normal
        exit restarts a ``PERMANENT`` child and ends a ``TRANSIENT`` or ``TEMPORARY`` one.
        """
        self.__dict__["_anvil_stop_requested"] = True

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called on this instance."""
        return bool(self.__dict__.get("_anvil_stop_requested", False))


@attrs.frozen
class _Reply:
    """The answer to one ask: a value, or an exception to raise at the asker."""

    value: Any = None
    error: BaseException | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@attrs.define(eq=False)
class _Envelope:
    """A message in a mailbox; ``reply`` is the one-shot reply channel of an ask (``None``
    for a tell). :meth:`answer` sends at most one reply and never blocks."""

    message: Any
    reply: trio.MemorySendChannel[_Reply] | None

    def answer(self, reply: _Reply) -> None:
        channel, self.reply = self.reply, None
        if channel is None:
            return
        try:
            channel.send_nowait(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            logger.debug("dropped a reply: the asker is gone (timed out or cancelled)")
        channel.close()


@attrs.define(eq=False)
class _Slot:
    """The stable address of a child: what refs point at. Mutated by its supervisor and by
    the running incarnation (statistics); read by refs."""

    name: str
    mailbox_size: int
    incarnation: "_Incarnation | None" = None
    refusal: ErrorFactory = attrs.field()
    state: ChildState = ChildState.NOT_STARTED
    restarts: int = 0
    crashes: int = 0
    processed: int = 0
    batches: int = 0
    max_depth: int = 0
    last_crash: str | None = None

    @refusal.default
    def _not_started(self) -> ErrorFactory:
        return error_factory(
            ActorUnavailableError, f"actor {self.name!r} is not started yet", actor=self.name
        )

    def accepting(self) -> "_Incarnation":
        """The incarnation whose mailbox takes messages now; raises the refusal if none."""
        incarnation = self.incarnation
        if incarnation is None:
            raise self.refusal()
        return incarnation

    def note_sent(self, incarnation: "_Incarnation") -> None:
        depth = incarnation.send.statistics().current_buffer_used
        if depth > self.max_depth:
            self.max_depth = depth

    def depth(self) -> int:
        incarnation = self.incarnation
        if incarnation is None:
            return 0
        return incarnation.receive.statistics().current_buffer_used


@attrs.frozen(repr=False)
class ActorRef:
    """A handle to a supervised child; get one with ``Supervisor.ref(name)``.

    Valid before the supervisor starts, across restarts and after the end: it always talks to
    the child's current incarnation, and says clearly (an :class:`ActorError`) when there is
    none. Refs to the same child compare equal.
    """

    _slot: _Slot = attrs.field(alias="slot")

    def __repr__(self) -> str:
        return f"<ActorRef {self._slot.name!r} {self._slot.state.value}>"

    @property
    def name(self) -> str:
        """The child's name."""
        return self._slot.name

    async def tell(self, message: Any) -> None:
        """Send ``message`` without waiting for it to be handled (fire and forget).

        Waits while the mailbox is full (backpressure).

        Raises:
            ActorUnavailableError: the child is not running (not started yet, or down and
                waiting to restart); retryable. :class:`ActorCrashedError` if it crashed
                while this call waited for mailbox space.
            ActorStoppedError: the child is stopping or gone for good.
        """
        incarnation = self._slot.accepting()
        try:
            await incarnation.send.send(_Envelope(message, None))
        except _SEND_FAILED:
            raise incarnation.rejected() from None
        self._slot.note_sent(incarnation)

    def tell_nowait(self, message: Any) -> None:
        """Like :meth:`tell`, but never waits.

        Raises:
            trio.WouldBlock: the mailbox is full.
            ActorUnavailableError: as for :meth:`tell`.
            ActorStoppedError: as for :meth:`tell`.
        """
        incarnation = self._slot.accepting()
        try:
            incarnation.send.send_nowait(_Envelope(message, None))
        except _SEND_FAILED:
            raise incarnation.rejected() from None
        self._slot.note_sent(incarnation)

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``message`` and wait for the reply (over a one-shot channel).

        Args:
            message: any object (prefer ``attrs.frozen`` values).
            timeout: seconds to wait in all, for mailbox space and for the reply; ``None``
                waits as long as the actor takes (it still never waits for a dead actor).

        Returns:
            What the actor's ``receive`` returned.

        Raises:
            BaseException: the exception ``receive`` raised, if its type is in the actor's
                ``reply_errors`` (raised as raised).
            AskTimeoutError: no reply within ``timeout``. The message may still be handled
                later; its reply is dropped.
            ActorCrashedError: the actor crashed while handling this message or before it
                got to it (``__cause__`` is the crash); fails at once, retryable.
            ActorUnavailableError: the child is down or restarting; retryable.
            ActorStoppedError: the child is stopping or gone for good; not retryable.
        """
        incarnation = self._slot.accepting()
        reply_send, reply_receive = trio.open_memory_channel[_Reply](1)
        envelope = _Envelope(message, reply_send)
        with reply_receive:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                try:
                    await incarnation.send.send(envelope)
                except _SEND_FAILED:
                    reply_send.close()
                else:
                    self._slot.note_sent(incarnation)
                    reply = await reply_receive.receive()
                    return reply.unwrap()
                raise incarnation.rejected()
        reply_send.close()
        raise AskTimeoutError(
            f"actor {self.name!r} did not answer within {timeout} seconds", actor=self.name
        )


class ExitKind(enum.Enum):
    """How an incarnation ended."""

    NORMAL = "normal"  # drained its mailbox after a stop (the supervisor's or its own)
    CRASHED = "crashed"  # factory, on_start or receive raised
    KILLED = "killed"  # cancelled by its supervisor


@attrs.frozen
class Exit:
    """How an incarnation ended, and the exception if it crashed."""

    kind: ExitKind
    error: BaseException | None = None


@attrs.define(eq=False)
class _Incarnation:
    """One run of one actor object in a slot: its mailbox, cancel scope and message loop."""

    slot: _Slot
    factory: Callable[[], Actor]
    shutdown_timeout: float
    #: rejection for senders once the actor stopped itself (depends on the restart type)
    on_self_stop: ErrorFactory
    send: trio.MemorySendChannel[_Envelope] = attrs.field(init=False)
    receive: trio.MemoryReceiveChannel[_Envelope] = attrs.field(init=False)
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: what senders get once the mailbox is shut (set once, before the send end closes)
    rejection: ErrorFactory | None = None
    #: what pending asks get if the incarnation is cancelled
    kill_reason: ErrorFactory = attrs.field()
    #: the messages being handled (one, or a batch)
    current: list[_Envelope] = attrs.Factory(list)
    #: ``on_start`` completed
    started: bool = False
    #: ``on_stop`` was called (it is called at most once)
    stopping: bool = False

    @kill_reason.default
    def _gone(self) -> ErrorFactory:
        return error_factory(
            ActorStoppedError,
            f"actor {self.slot.name!r} was cancelled with its supervisor",
            actor=self.slot.name,
        )

    def __attrs_post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[_Envelope](self.slot.mailbox_size)

    def rejected(self) -> ActorError:
        """The error for a sender whose message this (shut) mailbox refused."""
        if self.rejection is None:  # only a bug could get here; say so instead of hanging
            return ActorUnavailableError(f"actor {self.slot.name!r} refused the message")
        return self.rejection()

    def shut(self, rejection: ErrorFactory) -> None:
        """Stop taking messages: senders (new and blocked) get ``rejection``'s error. The
        first rejection set wins. Messages already queued stay queued."""
        if self.rejection is None:
            self.rejection = rejection
        self.send.close()

    def kill(self, reason: ErrorFactory) -> None:
        """Shut the mailbox and cancel the incarnation; pending asks get ``reason``'s error."""
        self.shut(reason)
        self.kill_reason = reason
        self.cancel_scope.cancel()

    def fail_pending(self, reason: ErrorFactory) -> None:
        """Shut, then answer the current ask and every queued ask with ``reason``'s error,
        and close the mailbox. Synchronous, so it completes even under cancellation."""
        self.shut(reason)
        current, self.current = self.current, []
        for envelope in current:
            envelope.answer(_Reply(error=reason()))
        while True:
            try:
                envelope = self.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            envelope.answer(_Reply(error=reason()))
        self.receive.close()

    async def run(self, *, on_ready: Callable[[], None]) -> Exit:
        """Run this incarnation to its end; ``on_ready()`` is called once ``on_start`` is done.

        Returns:
            How it ended. Only an outside cancellation (or a ``BaseException`` that is not an
            ``Exception``) propagates; even then every pending ask is answered first.
        """
        actor: Actor | None = None
        exit: Exit | None = None
        try:
            with self.cancel_scope:
                try:
                    actor = self.factory()
                    await actor.on_start()
                    self.started = True
                    on_ready()
                    await self._loop(actor)
                except Exception as exc:
                    exit = self._crashed(exc)
                else:
                    self.stopping = True
                    await self._call_on_stop(actor)
                    exit = Exit(ExitKind.NORMAL)
            if exit is None:
                exit = Exit(ExitKind.KILLED)
            return exit
        finally:
            self.fail_pending(self.kill_reason)
            if actor is not None and self.started and not self.stopping:
                self.stopping = True
                deadline = trio.current_time() + self.shutdown_timeout
                with trio.CancelScope(shield=True, deadline=deadline) as scope:
                    await self._call_on_stop(actor)
                if scope.cancelled_caught:
                    logger.warning("actor %r: on_stop timed out", self.slot.name)

    async def _loop(self, actor: Actor) -> None:
        reply_errors = tuple(actor.reply_errors)
        follow_up = actor.after_reply if type(actor).after_reply is not Actor.after_reply else None
        limit = max(1, actor.batch_limit)
        slot = self.slot
        while True:
            try:
                envelope = await self.receive.receive()
            except trio.EndOfChannel:
                return  # shut and drained
            batch = [envelope]
            while len(batch) < limit:
                try:
                    batch.append(self.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self.current = batch
            if len(batch) == 1:
                try:
                    replies = [_Reply(value=await actor.receive(envelope.message))]
                except reply_errors as exc:
                    replies = [_Reply(error=exc)]
            else:
                replies = self._replies(
                    await actor.receive_batch([e.message for e in batch]), len(batch),
                    reply_errors,
                )
            self.current = []
            slot.processed += len(batch)
            slot.batches += 1
            for envelope, reply in zip(batch, replies):
                if envelope.reply is None and reply.error is not None:
                    logger.debug("actor %r: dropped %r raised for a tell", slot.name, reply.error)
                envelope.answer(reply)
            if follow_up is not None:
                await follow_up()
            if actor.stop_requested:
                self.shut(self.on_self_stop)

    @staticmethod
    def _replies(
        results: Sequence[outcome.Outcome], count: int, reply_errors: tuple[type, ...]
    ) -> list[_Reply]:
        """The replies for a batch's outcomes; a wrong count or an error that is not a reply
        error is raised (a crash)."""
        if len(results) != count:
            raise RuntimeError(f"receive_batch returned {len(results)} outcomes for {count}")
        replies = []
        for result in results:
            if isinstance(result, outcome.Error):
                if not isinstance(result.error, reply_errors):
                    raise result.error
                replies.append(_Reply(error=result.error))
            else:
                replies.append(_Reply(value=result.unwrap()))
        return replies

    def _crashed(self, exc: Exception) -> Exit:
        slot = self.slot
        slot.crashes += 1
        slot.last_crash = repr(exc)
        logger.warning("actor %r crashed: %r", slot.name, exc, exc_info=exc)
        self.fail_pending(
            error_factory(
                ActorCrashedError,
                f"actor {slot.name!r} crashed ({exc!r}) before answering",
                actor=slot.name,
                cause=exc,
            )
        )
        return Exit(ExitKind.CRASHED, exc)

    async def _call_on_stop(self, actor: Actor) -> None:
        try:
            await actor.on_stop()
        except Exception as exc:
            logger.warning("actor %r: on_stop raised %r (ignored)", self.slot.name, exc)
