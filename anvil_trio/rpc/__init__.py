"""RPC layer (layer 5): the gRPC edge and, later, the service handlers.

The edge (``_edge``, ``_wire``, ``_calls``) serves purerpc servicers on one address with the
behaviour any gRPC client expects: the client's deadline is enforced, errors map to status codes
through one table (``_status``), oversized or compressed request messages fail only their own
call, concurrent calls are limited, and the server drains gracefully. ``_health`` is the
standard ``grpc.health.v1.Health`` service whose status the server controls; ``_reflection``
serves ``grpc.reflection.v1`` / ``v1alpha`` (for ``grpcurl`` and other generic clients).

Generated message and service modules live in ``anvil_trio._proto`` (regenerate with
``python -m anvil_trio._codegen``).
"""

from ._calls import CallContext
from ._edge import EdgeConfig, EdgeServer, EdgeStateError, EdgeStats, TLSConfig
from ._health import HealthServicer, HealthState, ServingStatus
from ._reflection import (
    REFLECTION_SERVICES,
    ReflectionIndex,
    ReflectionV1AlphaServicer,
    ReflectionV1Servicer,
)
from ._status import (
    DEFAULT_STATUS_TABLE,
    STATUS_PRIORITY,
    StatusMapper,
    StatusTable,
    status_for_exception,
)

__all__ = [
    "DEFAULT_STATUS_TABLE",
    "REFLECTION_SERVICES",
    "STATUS_PRIORITY",
    "CallContext",
    "EdgeConfig",
    "EdgeServer",
    "EdgeStateError",
    "EdgeStats",
    "HealthServicer",
    "HealthState",
    "ReflectionIndex",
    "ReflectionV1AlphaServicer",
    "ReflectionV1Servicer",
    "ServingStatus",
    "StatusMapper",
    "StatusTable",
    "status_for_exception",
]
