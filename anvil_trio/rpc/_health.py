"""The standard ``grpc.health.v1.Health`` service, with a status the server controls.

Invariants:

* The overall status (service name ``""``) starts ``NOT_SERVING``; the server sets it
  ``SERVING`` once storage is ready.
* Once :meth:`HealthState.mark_draining` ran, every known service reports ``NOT_SERVING`` for
  good: later ``set`` calls are ignored, and open ``Watch`` streams send ``NOT_SERVING`` and end.
* ``Check`` of an unknown service is ``NOT_FOUND``; ``Watch`` of one streams ``SERVICE_UNKNOWN``
  (and follows it if it becomes known), as the health protocol specifies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import attrs
import trio
from purerpc.grpclib.exceptions import NotFoundError

from .._proto.grpc.health.v1 import health_grpc, health_pb2

__all__ = ["HealthServicer", "HealthState", "ServingStatus"]

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@attrs.define(eq=False)
class HealthState:
    """Serving status per service name; ``""`` is the server as a whole.

    Args:
        services: service names to know besides ``""``; all start ``NOT_SERVING``.
    """

    _statuses: dict[str, int] = attrs.field(init=False, factory=dict)
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    draining: bool = attrs.field(init=False, default=False)

    def __init__(self, services: Iterable[str] = ()) -> None:
        self.__attrs_init__()
        for name in ("", *services):
            self._statuses[name] = _NOT_SERVING

    def get(self, service: str = "") -> int | None:
        """The status of ``service``, or ``None`` if it is unknown."""
        return self._statuses.get(service)

    def set(self, service: str, status: int) -> None:
        """Set the status of ``service`` (adding it if new); ignored once draining.

        Args:
            service: the service name (``""`` for the whole server).
            status: a ``ServingStatus`` value.
        """
        if self.draining:
            return
        if self._statuses.get(service) != status:
            self._statuses[service] = status
            self._notify()

    def set_serving(self, serving: bool = True) -> None:
        """Mark every known service ``SERVING`` (or ``NOT_SERVING``); ignored once draining."""
        for name in list(self._statuses):
            self.set(name, _SERVING if serving else _NOT_SERVING)

    def mark_draining(self) -> None:
        """Report ``NOT_SERVING`` for every service from now on, and end open watches."""
        for name in self._statuses:
            self._statuses[name] = _NOT_SERVING
        self.draining = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of any status."""
        await self._changed.wait()


class HealthServicer(health_grpc.HealthServicer):
    """purerpc servicer for ``grpc.health.v1.Health`` reading a :class:`HealthState`.

    Args:
        state: the status store the server controls.
    """

    def __init__(self, state: HealthState) -> None:
        self.state = state

    async def Check(self, input_message):  # noqa: N802 - gRPC method name
        status = self.state.get(input_message.service)
        if status is None:
            raise NotFoundError(f"unknown service {input_message.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, input_message) -> AsyncIterator:  # noqa: N802 - gRPC method name
        last = None
        while True:
            status = self.state.get(input_message.service)
            status = _SERVICE_UNKNOWN if status is None else status
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self.state.draining:
                return
            await self.state.wait_changed()
