"""The servicers one server runs, built from one :class:`~._common.ServiceContext`.

Invariants:

* Every servicer is built from the same context, so all of them share one storage façade, one
  authenticator and one upload limiter; none of them holds an actor, only refs.
* The health service is not listed here: the edge adds it, backed by the server's
  :class:`~._health.HealthState`.
"""

from __future__ import annotations

from typing import Any

import purerpc

from ._auth_service import AuthService
from ._blob_service import BlobService
from ._bucket_service import BucketService
from ._common import ServiceContext
from ._object_service import ObjectService
from ._upload_service import DEFAULT_IDLE_TIMEOUT, UploadService

__all__ = ["build_servicers"]


def build_servicers(ctx: ServiceContext, config: Any = None) -> list[purerpc.Servicer]:
    """The servicers of every ``anvil.v1`` service, ready for :class:`~._edge.EdgeServer`.

    Args:
        ctx: what the servicers share (storage, authenticator, upload slots, retry schedule).
        config: the server's :class:`~anvil_trio.Config` (for servicers with knobs of their
            own: ``upload_idle_timeout``); may be None (the defaults).

    Returns:
        A new list of servicers, one per service.
    """
    servicers: list[purerpc.Servicer] = [
        AuthService(ctx),
        BucketService(ctx),
        ObjectService(ctx),
        BlobService(ctx),
        UploadService(
            ctx,
            idle_timeout=getattr(config, "upload_idle_timeout", DEFAULT_IDLE_TIMEOUT),
        ),
    ]
    return servicers
