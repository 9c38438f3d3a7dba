"""The byte side of one connection: the writer task with a bounded send buffer, and the trio
stream (TCP or TLS) presented the way purerpc's socket code expects.

Invariants:

* Senders wait (:meth:`EdgeSocketWriter.wait_for_room`) while ``max_outbound`` or more bytes
  of frames are queued or being written, so a peer that does not read holds at most that much
  of the server's memory in replies.
* The writer hands the connection's whole send buffer to the socket without copying it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc
import trio
from purerpc.grpc_socket import SocketWrapper

__all__ = ["EdgeSocketWriter", "TrioStreamAdapter"]


class EdgeSocketWriter(SocketWrapper):
    """purerpc's socket writer, telling senders when the send buffer has room again."""

    def __init__(self, grpc_connection, stream, *, max_outbound: int) -> None:
        super().__init__(grpc_connection, stream)
        self._max_outbound = max_outbound
        self._in_flight = 0
        self._room = trio.Event()
        self._flush_event = trio.Event()

    def outbound_bytes(self) -> int:
        """Bytes waiting in the send buffer plus those the writer is sending now."""
        return self._in_flight + self._grpc_connection.outbound_buffered()

    def has_room(self) -> bool:
        """Whether a sender may queue more now (or the writer has stopped)."""
        return not self._running or self.outbound_bytes() < self._max_outbound

    async def wait_for_room(self) -> None:
        """Wait until fewer than ``max_outbound`` bytes wait to be written."""
        while self._running and self.outbound_bytes() >= self._max_outbound:
            self._flush_event.set()
            await self._room.wait()

    async def wait_until_empty(self) -> None:
        """Wait until the send buffer is empty and nothing is being written."""
        while self._running and self.outbound_bytes():
            self._flush_event.set()
            await self._room.wait()

    def _wake_senders(self) -> None:
        self._room.set()
        self._room = trio.Event()

    async def _writer_thread(self):
        try:
            while True:
                data = self._grpc_connection.data_to_send()
                if data:
                    self._in_flight = len(data)
                    try:
                        await self._stream.send(data)
                    finally:
                        self._in_flight = 0
                    self._wake_senders()
                elif self._running:
                    await self._flush_event.wait()
                    self._flush_event = trio.Event()
                else:
                    return
        finally:
            self._running = False
            self._wake_senders()


class TrioStreamAdapter:
    """Presents a trio stream (TCP or TLS) with the subset of the anyio ``SocketStream`` API
    that purerpc uses: ``send``, ``receive``, ``extra(SocketAttribute.raw_socket)``, ``aclose``.

    Args:
        stream: a ``trio.SocketStream`` or a ``trio.SSLStream`` over one.
        raw_socket: the underlying trio socket (for purerpc's keep-alive options).
        on_receive: called with every chunk of received bytes, before purerpc sees it (the
            edge's liveness and preface tracking); ``None``: nothing is told.
    """

    def __init__(self, stream: trio.abc.Stream, raw_socket, *,
                 on_receive: Callable[[bytes], None] | None = None) -> None:
        self._stream = stream
        self._raw_socket = raw_socket
        self._on_receive = on_receive

    @property
    def is_tls(self) -> bool:
        """Whether the stream is TLS (not the plain TCP socket)."""
        return isinstance(self._stream, trio.SSLStream)

    def extra(self, attribute, default=None):
        if attribute is anyio.abc.SocketAttribute.raw_socket:
            return self._raw_socket
        if default is not None:
            return default
        raise anyio.TypedAttributeLookupError(attribute)

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        if self._on_receive is not None:
            self._on_receive(data)
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()
