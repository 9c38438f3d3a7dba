"""What every service handler shares: the context it is built with, authentication, and the
storage call wrapper that retries while a storage actor restarts.

Invariants:
- A handler only translates: ``principal(ctx, request)`` first (UNAUTHENTICATED wins over
  everything), then argument validation (INVALID_ARGUMENT), then
  ``principal.require_operation`` (PERMISSION_DENIED), then storage (NOT_FOUND and the rest) —
  the order API.md prescribes when several errors apply. On a server the edge authenticates
  earlier still, from the headers (``bearer_authenticator``), before a request message is
  decoded; ``principal`` then returns what it found.
- Errors are raised, never turned into statuses here: the edge maps them through the one table
  in ``_status``.
- ``call_storage`` retries only :class:`~anvil_trio.storage.StorageUnavailableError`, with
  ``ServiceContext.retry_schedule``; the edge cancels the handler at the client's deadline, so a
  retry never outlives the call. Calls that consume a stream (puts, upload chunks) are not
  retried: their input cannot be replayed.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, TypeVar

import attrs
import trio

from .._effects import retry
from .._schedule import Schedule
from ..auth import Authenticator, Principal
from ..storage import Storage, StorageUnavailableError
from ._calls import CallContext

__all__ = [
    "ServiceContext",
    "bearer_authenticator",
    "call_storage",
    "default_retry_schedule",
    "principal",
]

T = TypeVar("T")


def default_retry_schedule() -> Schedule:
    """Retry while storage is unavailable: delays 0.05·2^n seconds capped at 1 s
    (``exponential(0.05) | spaced(1)``), for at most 15 s (``& up_to(15)``)."""
    return (Schedule.exponential(0.05) | Schedule.spaced(1.0)).up_to(15.0)


@attrs.frozen
class ServiceContext:
    """What the servicers are built with (they hold refs, never the actors themselves).

    Attributes:
        storage: the storage façade.
        auth: verifies bearer tokens and issues them.
        upload_slots: bounds concurrent Upload streams (RESOURCE_EXHAUSTED past it).
        retry_schedule: how ``call_storage`` retries while storage is unavailable.
    """

    storage: Storage
    auth: Authenticator
    upload_slots: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(64))
    retry_schedule: Schedule = attrs.field(factory=default_retry_schedule)


def principal(ctx: ServiceContext, request: CallContext) -> Principal:
    """Who the call is: the principal the edge already authenticated it as (the dispatcher's
    ``authenticate`` hook, see :func:`bearer_authenticator`), else verified now from its
    ``authorization: Bearer <JWT>`` metadata.

    Raises:
        UnauthenticatedError: missing, malformed, expired or badly signed token.
    """
    if request.principal is not None:
        return request.principal
    return ctx.auth.verify(request.metadata("authorization"))


def bearer_authenticator(ctx: ServiceContext) -> Callable[[CallContext], Principal]:
    """The ``CallDispatcher.authenticate`` hook of a server: verify the call's bearer token
    from its headers alone (before any request message is decoded).

    The hook raises ``UnauthenticatedError`` for a missing, malformed, expired or badly signed
    token (UNAUTHENTICATED through the status table).
    """

    def authenticate(call: CallContext) -> Principal:
        return ctx.auth.verify(call.metadata("authorization"))

    return authenticate


async def call_storage(
    ctx: ServiceContext, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    """Await ``fn(*args, **kwargs)``, retrying on StorageUnavailableError per the context's
    schedule; when the schedule is done the last StorageUnavailableError propagates
    (UNAVAILABLE on the wire). Every other exception propagates at once."""
    return await retry(
        ctx.retry_schedule, functools.partial(fn, *args, **kwargs), on=StorageUnavailableError
    )
