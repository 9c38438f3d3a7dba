"""Actors, refs and mailboxes: tell/ask, reply errors, crashes, backpressure, timeouts."""

from __future__ import annotations

from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing

from anvil_trio import Schedule
from anvil_trio.actors import (
    Actor,
    ActorCrashedError,
    ActorRef,
    ActorStoppedError,
    ActorUnavailableError,
    AskTimeoutError,
    ChildSpec,
    ChildState,
    Restart,
    Supervisor,
)


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Get:
    pass


@attrs.frozen
class Fail:
    """Crash the actor."""


@attrs.frozen
class Refuse:
    """Answer with a reply error."""


@attrs.frozen
class Block:
    """Wait until the event is set, then crash if ``crash``."""

    event: trio.Event
    crash: bool = False


@attrs.frozen
class Finish:
    """Stop the actor normally after this message."""


class Refused(ValueError):
    pass


@attrs.define
class Journal:
    """What the actors of one test did, shared across incarnations."""

    events: list[str] = attrs.Factory(list)


class Counter(Actor):
    reply_errors = (Refused,)

    def __init__(self, journal: Journal | None = None) -> None:
        self.total = 0
        self.journal = journal if journal is not None else Journal()

    async def on_start(self) -> None:
        self.journal.events.append("start")

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Add):
            self.total += message.amount
            return self.total
        if isinstance(message, Get):
            return self.total
        if isinstance(message, Refuse):
            raise Refused("no")
        if isinstance(message, Block):
            await message.event.wait()
            if message.crash:
                raise RuntimeError("crashed after blocking")
            return "unblocked"
        if isinstance(message, Fail):
            raise RuntimeError("boom")
        if isinstance(message, Finish):
            self.stop()
            return "finishing"
        return await super().receive(message)

    async def on_stop(self) -> None:
        self.journal.events.append("stop")


async def start(
    nursery: trio.Nursery, factory: Any = Counter, **spec: Any
) -> tuple[Supervisor, ActorRef]:
    sup = Supervisor([ChildSpec("c", factory, **spec)], backoff=_slow_backoff())
    await nursery.start(sup.run)
    return sup, sup.ref("c")


def _slow_backoff() -> Schedule:
    return Schedule.spaced(1.0)


async def test_ask_returns_reply_and_messages_are_handled_in_order(autojump_clock: Any) -> None:
    """Tells and asks are handled one at a time in arrival order; ask returns receive's value."""
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        await ref.tell(Add(2))
        ref.tell_nowait(Add(3))
        assert await ref.ask(Add(5)) == 10
        assert await ref.ask(Get()) == 10
        await sup.stop()


class FollowsUp(Counter):
    """Does slow follow-up work after each Add: waits for ``gate``, then may crash."""

    def __init__(self, gate: trio.Event, journal: Journal) -> None:
        super().__init__(journal)
        self.gate = gate
        self.pending: list[int] = []

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Add):
            self.pending.append(message.amount)
        return await super().receive(message)

    async def after_reply(self) -> None:
        pending, self.pending = self.pending, []
        for amount in pending:
            await self.gate.wait()
            if amount < 0:
                raise RuntimeError("follow-up failed")
            self.journal.events.append(f"followed up {amount}")


async def test_after_reply_runs_after_the_answer_and_before_the_next_message(
    autojump_clock: Any,
) -> None:
    """The asker has its reply while after_reply still works; the next message waits for it; a
    failure there crashes the actor (and the supervisor restarts it)."""
    gate, journal = trio.Event(), Journal()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, lambda: FollowsUp(gate, journal))
        assert await ref.ask(Add(4)) == 4
        assert "followed up 4" not in journal.events  # answered before the follow-up
        got: list[int] = []

        async def get() -> None:
            got.append(await ref.ask(Get(), timeout=100))

        nursery.start_soon(get)
        await trio.sleep(5)
        assert got == [] and sup.statistics().child("c").mailbox_depth == 1
        gate.set()
        await trio.sleep(0.1)
        assert got == [4] and journal.events[-1] == "followed up 4"
        assert await ref.ask(Add(-1)) == 3  # answered; then after_reply crashes
        await trio.sleep(2)  # past the 1 s backoff
        stats = sup.statistics().child("c")
        assert (stats.crashes, stats.restarts) == (1, 1)
        assert await ref.ask(Get()) == 0  # a fresh incarnation
        await sup.stop()


class Batching(Counter):
    """Takes up to 3 waiting messages at once; records each batch; crashes on a batch that
    holds Fail, and answers Refuse with a reply error inside the batch."""

    batch_limit = 3

    async def receive_batch(self, messages: Any) -> list[outcome.Outcome]:
        self.journal.events.append(f"batch {len(messages)}")
        if any(isinstance(message, Fail) for message in messages):
            raise RuntimeError("batch crashed")
        return await super().receive_batch(messages)

    async def after_reply(self) -> None:
        self.journal.events.append("after")


async def test_waiting_messages_are_handled_as_batches_in_order(autojump_clock: Any) -> None:
    """Messages already waiting go to receive_batch together (at most batch_limit), in order;
    each ask gets its own answer, a reply error answers only its message, and after_reply runs
    once per batch, after every answer of it."""
    journal = Journal()
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, lambda: Batching(journal))
        answers: dict[int, Any] = {}

        async def ask(index: int, message: Any) -> None:
            try:
                answers[index] = await ref.ask(message)
            except Refused as exc:
                answers[index] = exc

        nursery.start_soon(ask, 0, Block(gate))
        await trio.testing.wait_all_tasks_blocked()
        for index, message in enumerate([Add(1), Refuse(), Add(2), Add(3), Get()], start=1):
            nursery.start_soon(ask, index, message)
            await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait(Refuse())  # dropped for a tell, inside a batch too
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert answers[0] == "unblocked"
        assert (answers[1], answers[3], answers[4], answers[5]) == (1, 3, 6, 6)
        assert isinstance(answers[2], Refused)
        assert journal.events == ["start", "after", "batch 3", "after", "batch 3", "after"]
        stats = sup.statistics().child("c")
        assert (stats.messages_processed, stats.batches_processed) == (7, 3)
        await sup.stop()


async def test_a_crash_in_a_batch_answers_every_message_of_it(autojump_clock: Any) -> None:
    """A batch that crashes fails each of its asks with ActorCrashedError, and the restarted
    actor serves the next message alone."""
    journal = Journal()
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, lambda: Batching(journal))
        failures: list[type] = []

        async def ask(message: Any) -> None:
            try:
                await ref.ask(message)
            except ActorCrashedError as exc:
                failures.append(type(exc.__cause__))

        nursery.start_soon(ask, Block(gate))
        await trio.testing.wait_all_tasks_blocked()
        for message in (Add(1), Fail(), Add(2)):
            nursery.start_soon(ask, message)
            await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert failures == [RuntimeError] * 3
        await trio.sleep(2)  # past the 1 s backoff
        assert await ref.ask(Get()) == 0
        assert journal.events[-2:] == ["start", "after"]
        await sup.stop()


async def test_a_batch_with_a_wrong_outcome_crashes(autojump_clock: Any) -> None:
    """receive_batch must answer each message once, and only with reply errors: a short list
    or an Error that is not a reply error is a crash, not a hang."""

    class Wrong(Counter):
        batch_limit = 4

        def __init__(self, result: Any) -> None:
            super().__init__()
            self.result = result

        async def receive_batch(self, messages: Any) -> list[outcome.Outcome]:
            return self.result

    for result in ([outcome.Value(1)], [outcome.Error(KeyError("x")), outcome.Value(2)]):
        gate = trio.Event()
        async with trio.open_nursery() as nursery:
            sup, ref = await start(nursery, lambda result=result: Wrong(result))
            crashed: list[bool] = []

            async def ask(message: Any) -> None:
                try:
                    await ref.ask(message)
                except ActorCrashedError:
                    crashed.append(True)

            nursery.start_soon(ask, Block(gate))
            await trio.testing.wait_all_tasks_blocked()
            for message in (Add(1), Add(2)):
                nursery.start_soon(ask, message)
                await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert crashed == [True, True]
            assert sup.statistics().child("c").crashes == 1
            await sup.stop()


async def test_reply_error_reaches_asker_without_crash(autojump_clock: Any) -> None:
    """A reply_errors exception is raised at the asker and the actor keeps its state."""
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        await ref.ask(Add(7))
        with pytest.raises(Refused):
            await ref.ask(Refuse())
        await ref.tell(Refuse())  # dropped for a tell
        assert await ref.ask(Get()) == 7
        stats = sup.statistics().child("c")
        assert (stats.restarts, stats.crashes, stats.messages_processed) == (0, 0, 4)
        await sup.stop()


async def test_ask_to_crashing_actor_fails_at_once(autojump_clock: Any) -> None:
    """An ask whose handler crashes fails with ActorCrashedError at once, cause attached."""
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        before = trio.current_time()
        with pytest.raises(ActorCrashedError) as info:
            await ref.ask(Fail())
        assert trio.current_time() == before
        assert isinstance(info.value.__cause__, RuntimeError)
        assert isinstance(info.value, ActorUnavailableError)
        assert info.value.actor == "c"
        await sup.stop()


async def test_queued_asks_fail_at_once_when_actor_crashes(autojump_clock: Any) -> None:
    """Asks waiting in the mailbox fail with ActorCrashedError the moment the actor crashes."""
    release = trio.Event()
    outcomes: list[tuple[str, float]] = []

    async def asker(ref: ActorRef, message: Any) -> None:
        try:
            await ref.ask(message, timeout=100)
        except ActorCrashedError as exc:
            assert isinstance(exc.__cause__, RuntimeError)
            outcomes.append(("crashed", trio.current_time()))

    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        async with trio.open_nursery() as askers:
            askers.start_soon(asker, ref, Block(release, crash=True))
            await trio.testing.wait_all_tasks_blocked()
            for amount in range(3):
                askers.start_soon(asker, ref, Add(amount))
            await trio.testing.wait_all_tasks_blocked()
            assert sup.statistics().child("c").mailbox_depth == 3
            await trio.sleep(2)
            crash_time = trio.current_time()
            release.set()
        assert outcomes == [("crashed", crash_time)] * 4
        await sup.stop()


async def test_full_mailbox_applies_backpressure(autojump_clock: Any) -> None:
    """With a full mailbox tell waits and tell_nowait raises WouldBlock until space frees."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, mailbox_size=2)
        ref.tell_nowait(Block(release))
        await trio.testing.wait_all_tasks_blocked()  # the actor took it and is blocked
        ref.tell_nowait(Add(1))
        await ref.tell(Add(1))
        with pytest.raises(trio.WouldBlock):
            ref.tell_nowait(Add(1))
        with trio.move_on_after(10) as scope:
            await ref.tell(Add(1))
        assert scope.cancelled_caught
        stats = sup.statistics().child("c")
        assert (stats.mailbox_depth, stats.mailbox_max_depth, stats.mailbox_size) == (2, 2, 2)

        done = trio.Event()

        async def blocked_tell() -> None:
            await ref.tell(Add(10))
            done.set()

        nursery.start_soon(blocked_tell)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        release.set()
        await done.wait()
        assert await ref.ask(Get()) == 12
        await sup.stop()


async def test_blocked_tell_fails_when_actor_crashes(autojump_clock: Any) -> None:
    """A tell waiting for mailbox space gets ActorCrashedError when the actor crashes."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, mailbox_size=0)
        ref_task_error: list[BaseException] = []
        await ref.tell(Block(release, crash=True))  # rendezvous: the actor took it

        async def blocked_tell() -> None:
            try:
                await ref.tell(Add(1))
            except ActorCrashedError as exc:
                ref_task_error.append(exc)

        nursery.start_soon(blocked_tell)
        await trio.testing.wait_all_tasks_blocked()
        assert not ref_task_error
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ref_task_error) == 1
        await sup.stop()


async def test_ask_timeout(autojump_clock: Any) -> None:
    """An ask with no reply in time raises AskTimeoutError at exactly the timeout."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        before = trio.current_time()
        with pytest.raises(AskTimeoutError) as info:
            await ref.ask(Block(release), timeout=2.5)
        assert trio.current_time() == before + 2.5
        assert isinstance(info.value, TimeoutError)
        release.set()  # the late reply is dropped; the actor carries on
        assert await ref.ask(Add(1)) == 1
        assert sup.statistics().child("c").crashes == 0
        await sup.stop()


async def test_ask_timeout_covers_waiting_for_mailbox_space(autojump_clock: Any) -> None:
    """The ask timeout also bounds the wait for space in a full mailbox."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, mailbox_size=0)
        await ref.tell(Block(release))
        before = trio.current_time()
        with pytest.raises(AskTimeoutError):
            await ref.ask(Get(), timeout=1.0)
        assert trio.current_time() == before + 1.0
        release.set()
        await sup.stop()


async def test_cancelled_asker_does_not_disturb_actor(autojump_clock: Any) -> None:
    """An asker cancelled while waiting leaves the actor running and answering others."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        with trio.move_on_after(1):
            await ref.ask(Block(release), timeout=None)
        release.set()
        assert await ref.ask(Add(4)) == 4
        assert sup.statistics().child("c").crashes == 0
        await sup.stop()


async def test_ref_identity_and_errors_before_start() -> None:
    """Refs to one child are equal; before start they raise ActorUnavailableError."""
    sup = Supervisor([ChildSpec("c", Counter)])
    ref = sup.ref("c")
    assert ref == sup.ref("c") and hash(ref) == hash(sup.ref("c"))
    assert ref.name == "c"
    with pytest.raises(KeyError):
        sup.ref("nope")
    with pytest.raises(ActorUnavailableError):
        ref.tell_nowait(Add(1))
    with pytest.raises(ActorUnavailableError):
        await ref.ask(Get())


async def test_unhandled_message_crashes_actor(autojump_clock: Any) -> None:
    """The default receive raises TypeError, which crashes the actor."""
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery)
        with pytest.raises(ActorCrashedError) as info:
            await ref.ask("what is this")
        assert isinstance(info.value.__cause__, TypeError)
        await sup.stop()


async def test_lifecycle_hooks_and_messages_during_start(autojump_clock: Any) -> None:
    """on_start runs first, messages sent meanwhile wait, on_stop runs after crash and stop."""
    journal = Journal()
    gate = trio.Event()

    class Slow(Counter):
        async def on_start(self) -> None:
            await gate.wait()
            await super().on_start()

    sup = Supervisor([ChildSpec("c", lambda: Slow(journal))], backoff=_slow_backoff())
    ref = sup.ref("c")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        assert sup.statistics().child("c").state is ChildState.STARTING
        ref.tell_nowait(Add(1))  # accepted while on_start runs
        gate.set()
        assert await ref.ask(Get()) == 1
        with pytest.raises(ActorCrashedError):
            await ref.ask(Fail())
        await trio.sleep(1.5)  # the backoff is 1 s
        assert await ref.ask(Get()) == 0  # fresh state after the restart
        await sup.stop()
    assert journal.events == ["start", "stop", "start", "stop"]


async def test_self_stop_drains_queue_then_refuses(autojump_clock: Any) -> None:
    """Actor.stop() ends a transient actor after its queued messages; then ActorStoppedError."""
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(
            nursery, lambda: Counter(journal), restart=Restart.TRANSIENT, mailbox_size=4
        )
        release = trio.Event()
        await ref.tell(Block(release))
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(Finish())
        await ref.tell(Add(1))
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ActorStoppedError):
            await ref.ask(Get())
        stats = sup.statistics().child("c")
        assert stats.state is ChildState.STOPPED
        assert (stats.messages_processed, stats.restarts) == (3, 0)
        assert journal.events == ["start", "stop"]
        await sup.stop()


async def test_statistics_count_processed_and_max_depth(autojump_clock: Any) -> None:
    """Statistics report processed messages and the deepest the mailbox has been."""
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        sup, ref = await start(nursery, mailbox_size=8)
        await ref.tell(Block(release))
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(5):
            ref.tell_nowait(Add(1))
        assert sup.statistics().child("c").mailbox_depth == 5
        release.set()
        await trio.testing.wait_all_tasks_blocked()  # drained before the ask below
        assert await ref.ask(Get()) == 5
        stats = sup.statistics().child("c")
        assert (stats.mailbox_depth, stats.mailbox_max_depth) == (0, 5)
        assert stats.messages_processed == 7
        await sup.stop()
