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
"""

from __future__ import annotations

import functools

import attrs

from .._effects import retry
from .._proto.anvil.v1 import auth_grpc, auth_pb2
from .._schedule import Schedule
from ..auth import AppRecord
from ..storage import NotFoundError, Storage, StorageUnavailableError
from ._calls import CallContext
from ._common import ServiceContext, default_retry_schedule

__all__ = ["AuthService", "StorageAppStore"]


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
        """
        issued = await self._ctx.auth.issue_token(
            input_message.client_id, input_message.client_secret, tuple(input_message.scopes)
        )
        return auth_pb2.GetAccessTokenResponse(
            access_token=issued.access_token,
            token_type=issued.token_type,
            expires_in=issued.expires_in,
            scopes=list(issued.scopes),
        )
