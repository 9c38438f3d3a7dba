"""anvil_trio: a Trio-native object and blob store with a gRPC API, and the ZIO-style
effect/actor toolkit it is built from.

Public names are re-exported here; the code lives in private modules (``_schedule``,
``_effects``) and subpackages (``actors``, ``storage``, ``auth``, ``rpc``).
"""

# --- effects (layer 1) ---
from ._schedule import DONE, Continue, Done, Schedule, ScheduleDriver
from ._schedule import Decision, Seconds, delay_of, to_seconds
from ._effects import (
    EffectError,
    EffectsTesting,
    EffectTimeoutError,
    RaceFailedError,
    RetryDetails,
    add_retry_hook,
    clear_retry_hooks,
    current_effects_testing,
    effects_testing,
    ensuring,
    race,
    remove_retry_hook,
    repeat,
    reset_effects_testing,
    retry,
    retry_hook,
    timeout,
    zip_par,
)

# --- actors (layer 2) ---
from .actors import (
    Actor,
    ActorCrashedError,
    ActorError,
    ActorRef,
    ActorStats,
    ActorStoppedError,
    ActorUnavailableError,
    AskTimeoutError,
    ChildSpec,
    ChildState,
    Restart,
    RestartWindow,
    Strategy,
    Supervisor,
    SupervisorEscalationError,
    SupervisorState,
    SupervisorStats,
)

# --- server (layer 6) ---
from ._config import Config, ConfigError
from ._server import Server, ServerError, StorageFailedError, serve

# --- admin (CLI helper; the `anvil-trio` command is anvil_trio._cli:main) ---
from ._admin import Admin, AppCredentials, run_admin

# --- client (layer 6; everything else is in anvil_trio.client) ---
from ._client import AnvilClient
from ._client_types import AnvilError
