"""The one place where exceptions become gRPC status codes.

Invariants:

* Every call ends with exactly one :class:`purerpc.Status`; :func:`status_for_exception` is the
  only function that turns an exception into one, and it never answers ``CANCELLED`` and never
  puts a ``repr()`` or traceback into the message (except in explicit dev mode).
* Known exceptions are looked up by type in a :class:`StatusTable`: the most specific class in
  the exception's MRO that the table names wins. Their ``str()`` is the client-visible message,
  so domain errors must carry messages that are safe to show to the requesting client.
* ``purerpc`` ``RpcFailedError``\\ s carry their own status and pass through unchanged.
* Anything else is ``INTERNAL`` whose message holds only a correlation id; the full exception
  with traceback is logged under that id.
* An exception group is unwrapped to the leaf that matters: the leaf whose status ranks first in
  :data:`STATUS_PRIORITY` (the order of API.md), ``INTERNAL`` only if no leaf is known.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio
from google.protobuf.message import DecodeError
from purerpc import Status, StatusCode
from purerpc.grpclib.exceptions import ProtocolError, RpcFailedError

from ..auth._errors import (
    InvalidResourceError,
    InvalidScopeError,
    PermissionDeniedError,
    TooManyAttemptsError,
    UnauthenticatedError,
)
from ..storage._errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ObjectTooLargeError,
    OutOfRangeError,
    QuotaExceededError,
    StorageFullError,
    StorageIOError,
    StorageUnavailableError,
)
from ._stream import StreamStalledError

__all__ = [
    "DEFAULT_STATUS_TABLE",
    "STATUS_PRIORITY",
    "StatusMapper",
    "StatusTable",
    "status_for_exception",
]

log = logging.getLogger("anvil_trio.rpc")

#: A pluggable mapper: the status for a known exception, or ``None`` for "unexpected".
StatusMapper = Callable[[BaseException], "Status | None"]

#: When several leaves of an exception group map to statuses, the first in this order wins.
STATUS_PRIORITY: tuple[StatusCode, ...] = (
    StatusCode.UNAUTHENTICATED,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.PERMISSION_DENIED,
    StatusCode.NOT_FOUND,
    StatusCode.ALREADY_EXISTS,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.OUT_OF_RANGE,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.UNIMPLEMENTED,
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.ABORTED,
    StatusCode.DATA_LOSS,
    StatusCode.UNKNOWN,
    StatusCode.CANCELLED,
    StatusCode.INTERNAL,
)


def _message_of(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


@attrs.frozen
class StatusTable:
    """Exception type -> status code, plus fixed messages for types whose text is not for clients.

    Args:
        codes: the table; a lookup walks the exception's MRO and takes the first hit.
        fixed_messages: types whose client message is this text instead of ``str(exc)``.
    """

    codes: Mapping[type[BaseException], StatusCode] = attrs.field(converter=dict)
    fixed_messages: Mapping[type[BaseException], str] = attrs.field(converter=dict, factory=dict)

    def lookup(self, exc: BaseException) -> Status | None:
        """Return the status for ``exc``, or ``None`` when no class in its MRO is in the table."""
        for klass in type(exc).__mro__:
            code = self.codes.get(klass)
            if code is not None:
                message = self.fixed_messages.get(klass)
                return Status(code, message if message is not None else _message_of(exc))
        return None

    def with_entries(
        self,
        codes: Mapping[type[BaseException], StatusCode],
        *,
        fixed_messages: Mapping[type[BaseException], str] | None = None,
    ) -> StatusTable:
        """Return a new table with ``codes`` (and ``fixed_messages``) added or replaced."""
        return StatusTable(
            {**self.codes, **codes}, {**self.fixed_messages, **(fixed_messages or {})}
        )

    __call__ = lookup


#: The table of the whole server: auth errors (see ``anvil_trio.auth._errors``), storage errors
#: (see ``anvil_trio.storage._errors``) and the wire-level errors the edge itself meets.
DEFAULT_STATUS_TABLE = StatusTable(
    {
        UnauthenticatedError: StatusCode.UNAUTHENTICATED,
        PermissionDeniedError: StatusCode.PERMISSION_DENIED,
        TooManyAttemptsError: StatusCode.RESOURCE_EXHAUSTED,
        InvalidScopeError: StatusCode.INVALID_ARGUMENT,
        InvalidResourceError: StatusCode.INVALID_ARGUMENT,
        NotFoundError: StatusCode.NOT_FOUND,
        AlreadyExistsError: StatusCode.ALREADY_EXISTS,
        FailedPreconditionError: StatusCode.FAILED_PRECONDITION,
        InvalidArgumentError: StatusCode.INVALID_ARGUMENT,
        ChecksumMismatchError: StatusCode.INVALID_ARGUMENT,
        OutOfRangeError: StatusCode.OUT_OF_RANGE,
        QuotaExceededError: StatusCode.RESOURCE_EXHAUSTED,
        ObjectTooLargeError: StatusCode.RESOURCE_EXHAUSTED,
        StorageFullError: StatusCode.RESOURCE_EXHAUSTED,
        StorageUnavailableError: StatusCode.UNAVAILABLE,
        # StorageIOError is deliberately INTERNAL with a correlation id: its text may name
        # paths; it is matched here so the lookup is explicit, and the message replaced.
        StorageIOError: StatusCode.INTERNAL,
        # A request message that does not decode.
        DecodeError: StatusCode.INVALID_ARGUMENT,
        # purerpc: "Expected one message, got zero/multiple" on a unary request stream.
        ProtocolError: StatusCode.INVALID_ARGUMENT,
        # A generated servicer method left as it was generated (it raises this), as other
        # gRPC servers answer it.
        NotImplementedError: StatusCode.UNIMPLEMENTED,
        # The peer let the call wait past stream_stall_timeout (no window, no data, no reads).
        StreamStalledError: StatusCode.DEADLINE_EXCEEDED,
    },
    {
        DecodeError: "request message does not decode as the method's request type",
        NotImplementedError: "method is not implemented",
    },
)


def exception_leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, exception groups unwrapped to their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc


def _known_status(exc: BaseException, mapper: StatusMapper) -> Status | None:
    if isinstance(exc, RpcFailedError):
        status = exc.status
        if status.status_code == StatusCode.CANCELLED:
            return None
        return status
    status = mapper(exc)
    if status is not None and status.status_code == StatusCode.INTERNAL:
        return None
    return status


def status_for_exception(
    exc: BaseException,
    *,
    mapper: StatusMapper = DEFAULT_STATUS_TABLE,
    dev_mode: bool = False,
    where: str = "",
    logger: logging.Logger = log,
) -> Status:
    """The status a call that raised ``exc`` ends with.

    Args:
        exc: what the handler raised (may be an exception group).
        mapper: known exception -> status; ``None`` means unexpected.
        dev_mode: put the exception type, text and traceback into INTERNAL messages.
        where: names the call (``/pkg.Service/Method``) in the log line.
        logger: where unexpected errors are logged with traceback.

    Returns:
        A non-OK status; never ``CANCELLED``; ``INTERNAL`` with a correlation id for anything
        unexpected (which is logged at ERROR with the traceback and the same id).
    """
    best: Status | None = None
    for leaf in exception_leaves(exc):
        if isinstance(leaf, trio.Cancelled):
            continue
        status = _known_status(leaf, mapper)
        if status is None:
            continue
        if best is None or STATUS_PRIORITY.index(status.status_code) < STATUS_PRIORITY.index(
            best.status_code
        ):
            best = status
    if best is not None:
        return best
    correlation_id = uuid.uuid4().hex[:16]
    logger.error(
        "internal error in %s [correlation id %s]",
        where or "call",
        correlation_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    message = f"internal error (correlation id {correlation_id})"
    if dev_mode:
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        message = f"{message}\n{detail}"
    return Status(StatusCode.INTERNAL, message)
