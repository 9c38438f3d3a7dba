"""The effect/actor toolkit in one page: a schedule, a retry, and a supervised actor.

Run it: ``python examples/toolkit.py`` (it finishes in about a second of real time).
"""

import trio

from anvil_trio import Actor, ChildSpec, Schedule, Supervisor, retry


# A schedule is a value: exponential backoff 0.1 s, 0.2 s, 0.4 s ..., at most 4 retries.
BACKOFF = Schedule.exponential(0.1) & Schedule.recurs(4)


class Counter(Actor):
    """Owns a count; crashes on "boom" (and is restarted with a fresh count)."""

    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message):
        if message == "boom":
            raise RuntimeError("boom")
        self.count += 1
        return self.count


async def main() -> None:
    # retry: a flaky call that fails twice, then succeeds after sleeping 0.1 s and 0.2 s.
    failures = iter([ConnectionError("down"), ConnectionError("still down")])

    async def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "connected"

    start = trio.current_time()
    print(await retry(BACKOFF, flaky, on=ConnectionError),
          f"after {trio.current_time() - start:.1f}s")

    # A supervised actor: refs stay valid across restarts.
    supervisor = Supervisor([ChildSpec("counter", Counter)], intensity=3, period=5.0,
                            backoff=Schedule.spaced(0.05))
    counter = supervisor.ref("counter")
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        print("count", await counter.ask("tick", timeout=1.0),
              await counter.ask("tick", timeout=1.0))
        try:
            await counter.ask("boom", timeout=1.0)
        except Exception as exc:  # ActorCrashedError: the actor crashed handling this ask
            print("crashed:", type(exc).__name__)
        await trio.sleep(0.1)  # the supervisor restarts it after the 0.05 s backoff
        print("after restart, count", await counter.ask("tick", timeout=1.0))
        await supervisor.stop()


if __name__ == "__main__":
    trio.run(main)
