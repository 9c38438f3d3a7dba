"""``anvil.v1.AuthService``: client credentials in, a bearer token out.

Invariants:

* ``GetAccessToken`` is the one RPC that needs no bearer token; it only translates between the
  wire and :meth:`Authenticator.issue_token`, which checks in API.md's order: credentials
  (UNAUTHENTICATED), then the requested scopes' syntax (INVALID_ARGUMENT), then the narrowing
  (PERMISSION_DENIED).
* Apps are read from storage on every request (:class:`StorageAppStore`), so new apps, grants,
  revocations and rotated secrets — also those written by the admin CLI into the same data dir —
  take effect at the next ``GetAccessToken``. Tokens already issued are not touched.
* An unknown client id and a wrong secret are indistinguishable on the wire (same status, same
  message, same scrypt work).
* Failed sign-ins back off per client id and per peer address (rules in ``auth._throttle``).
  A refused attempt costs no scrypt and ends at once with RESOURCE_EXHAUSTED ("retry after a
  delay" in API.md); its message gives the retry time, and a ``retry-after-ms`` trailer the
  same in milliseconds (the edge reserves the ``grpc-`` prefix, so not
  ``grpc-retry-pushback-ms``). Refusing at once, rather than holding the call and answering
  UNAUTHENTICATED after the delay, keeps an attacker from tying up call slots and tells an
  honest client exactly when to come back.
"""

from __future__ import annotations

import functools
import math

import attrs

from .._effects import retry
from .._proto.anvil.v1 import auth_grpc, auth_pb2
from .._schedule import Schedule
from ..auth import AppRecord, TooManyAttemptsError
from ..storage import NotFoundError, Storage, StorageUnavailableError
from ._calls import CallContext
from ._common import ServiceContext, default_retry_schedule

__all__ = ["RETRY_AFTER_TRAILER", "AuthService", "StorageAppStore"]

#: Trailer of a throttled ``GetAccessToken``: milliseconds until a new attempt is checked.
RETRY_AFTER_TRAILER = "retry-after-ms"


@attrs.frozen
class StorageAppStore:
    """The authenticator's :class:`~anvil_trio.auth.AppStore`, reading apps from storage.

    Args:
        storage: the storage façade.
        retry_schedule: how a lookup retries while storage is unavailable (default: as for
            every storage call, see :func:`~._common.default_retry_schedule`).
    """

    storage: Storage
    retry_schedule: Schedule = attrs.field(factory=default_retry_schedule, kw_only=True)

    async def get_app(self, client_id: str) -> AppRecord | None:
        """The app with this client id, or ``None`` if storage knows none.

        Raises:
            StorageUnavailableError: storage stayed unavailable for the whole retry schedule.
        """
        try:
            app = await retry(
                self.retry_schedule,
                functools.partial(self.storage.get_app, client_id),
                on=StorageUnavailableError,
            )
        except NotFoundError:
            return None
        return AppRecord(app.tenant, app.secret_hash, tuple(sorted(app.scopes)))


class AuthService(auth_grpc.AuthServiceServicer):
    """Serves ``GetAccessToken``.

    Args:
        ctx: the shared service context (only its authenticator is used).
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def GetAccessToken(  # noqa: N802 - gRPC method name
        self, input_message: auth_pb2.GetAccessTokenRequest, request: CallContext
    ) -> auth_pb2.GetAccessTokenResponse:
        """Issue a token for the app's credentials and the requested scopes.

        Raises:
            UnauthenticatedError: unknown client id or wrong secret.
            InvalidScopeError: a requested scope does not parse.
            PermissionDeniedError: none of the requested scopes is granted.
            StorageUnavailableError: apps could not be read.
            TooManyAttemptsError: the attempt was throttled (RESOURCE_EXHAUSTED; see the
                module docstring).
        """
        try:
            issued = await self._ctx.auth.issue_token(
                input_message.client_id, input_message.client_secret,
                tuple(input_message.scopes), peer=request.peer,
            )
        except TooManyAttemptsError as exc:
            if exc.retry_after > 0:
                pushback_ms = math.ceil(exc.retry_after * 1000)
                request.trailing_metadata.append((RETRY_AFTER_TRAILER, str(pushback_ms)))
            raise  # RESOURCE_EXHAUSTED (the status table), with the trailer above
        return auth_pb2.GetAccessTokenResponse(
            access_token=issued.access_token,
            token_type=issued.token_type,
            expires_in=issued.expires_in,
            scopes=list(issued.scopes),
        )
