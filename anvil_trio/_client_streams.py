"""Client stream helpers: resumable downloads, a sender beside a receiver, and one error out
of a group.

Invariants:
- A :class:`ByteStream` yields each byte of the requested range once, in order; a retryable
  failure mid-stream closes the broken call and reopens at ``offset`` (the next byte), giving
  up after ``MAX_STALLED_RESUMES`` reopenings in a row that brought no byte.
- :func:`with_sender` never leaves a task behind and never raises an exception group.
- :func:`collapse` returns the one exception a caller should see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._client_sources import ByteSource
from ._client_types import AnvilError, InternalError
from ._client_wire import Call, is_transient

__all__ = ["MAX_STALLED_RESUMES", "ByteStream", "collapse", "replay_guard", "with_sender"]

#: A resumed download that makes no progress this many times in a row gives up.
MAX_STALLED_RESUMES = 5


def replay_guard(src: ByteSource) -> Callable[[BaseException], bool]:
    """The retry predicate for a call that streams ``src``: transient, and replayable or unread."""

    def on(exc: BaseException) -> bool:
        return is_transient(exc) and (src.replayable or not src.started)

    return on


async def with_sender(send: Callable[[], Awaitable[None]], receive: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``send()`` beside ``receive()``; return what ``receive`` returns.

    The first to fail cancels the other. The server's status (``receive``'s error) wins over a
    send-side error, since it says why the stream stopped; a send-side error (e.g. from the
    caller's source) is raised as itself. Never raises an exception group.
    """
    outcome: dict[str, Any] = {}

    async def sender(scope: trio.CancelScope) -> None:
        try:
            await send()
        except Exception as exc:
            outcome["send_error"] = exc
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, nursery.cancel_scope)
        try:
            outcome["result"] = await receive()
        except Exception as exc:
            outcome["receive_error"] = exc
        nursery.cancel_scope.cancel()
    if "receive_error" in outcome and not (
        "send_error" in outcome and not isinstance(outcome["receive_error"], AnvilError)
    ):
        raise outcome["receive_error"]
    if "send_error" in outcome:
        raise outcome["send_error"]
    if "result" not in outcome:
        raise InternalError("the call ended without a result")
    return outcome["result"]


class ByteStream:
    """The bytes of a ``GetObject``/``GetBlob`` response, as an async iterator of chunks.

    A retryable failure mid-stream reopens the read at the next byte (at most
    ``MAX_STALLED_RESUMES`` times in a row without progress). Read it to the end, or close it
    with ``aclose()`` / ``async with``; closing early cancels the call on the server.

    Attributes:
        offset: the absolute position of the next byte.
        resumes: how many times the read was reopened.
    """

    def __init__(self, call: Call, reopen, data: Callable[[Any], bytes], *, offset: int,
                 pending: Any = None) -> None:
        self._call: Call | None = call
        self.reopen = reopen
        self._data = data
        self.offset = offset
        self.pending = pending
        self.resumes = 0
        self._stalled = 0

    def __aiter__(self) -> "ByteStream":
        return self

    async def __aenter__(self) -> "ByteStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; cancels the call if it has not ended."""
        call, self._call = self._call, None
        if call is not None:
            with trio.CancelScope(shield=True):
                await call.finish()

    async def __anext__(self) -> bytes:
        while True:
            if self._call is None:
                raise StopAsyncIteration
            try:
                if self.pending is not None:
                    message, self.pending = self.pending, None
                else:
                    message = await self._call.receive()
            except AnvilError as exc:
                await self.aclose()
                if not exc.retryable or self.reopen is None or self._stalled >= MAX_STALLED_RESUMES:
                    raise
                self._stalled += 1
                self.resumes += 1
                self._call = await self.reopen(self.offset)
                continue
            except BaseException:
                await self.aclose()
                raise
            if message is None:
                await self.aclose()
                raise StopAsyncIteration
            chunk = self._data(message)
            if hasattr(message, "offset") and message.offset != self.offset:
                await self.aclose()
                raise InternalError(f"chunk at offset {message.offset}, expected {self.offset}")
            if chunk:
                self.offset += len(chunk)
                self._stalled = 0
                return chunk


def collapse(group: BaseExceptionGroup) -> BaseException:
    """The one exception a caller should see from a group the client's nursery raised."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real and leaves:
        return leaves[0]
    return group
