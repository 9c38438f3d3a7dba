"""The ``anvil-trio`` command line: ``serve`` a data dir, or ``admin`` its tenants and apps.

Invariants:

* The CLI only parses arguments. ``serve`` builds one frozen :class:`Config` (from ``--config``
  if given, else the defaults) and applies each flag given as an ``attrs.evolve`` override;
  ``admin`` calls the operations of :mod:`anvil_trio._admin`.
* Exit codes: 0 success (including a server that drained after SIGINT/SIGTERM); 1 the
  operation failed (unknown tenant or app, a duplicate, a server that crashed); 2 bad input
  (arguments, configuration, a scope or name that does not validate), and nothing was changed.
  Expected errors print one line ``anvil-trio: error: ...`` on stderr, never a traceback.
* ``serve`` prints exactly one line on stdout, once it listens and storage is ready:
  ``anvil-trio listening on HOST:PORT (data dir DIR)``, and flushes it; the server's log
  messages go to stderr. The first SIGINT or SIGTERM cancels the server, which drains
  gracefully; a second one while it drains exits at once with status 128 + the signal number.
* Machine-readable output (``--json``) is one JSON object on one line of stdout; notes for
  humans go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

import attrs
import trio

from . import _admin
from ._config import Config, ConfigError, parse_listen
from ._server import ServerError, serve
from .storage._backends import redact_url
from .auth import InvalidScopeError
from .storage import (
    AlreadyExistsError,
    AppInfo,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
    TenantInfo,
)

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "config_from_args", "main"]

PROG = "anvil-trio"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Expected errors and the exit code each gets; the first matching row wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (InvalidScopeError, EXIT_USAGE),
    (InvalidArgumentError, EXIT_USAGE),
    (NotFoundError, EXIT_FAILURE),
    (AlreadyExistsError, EXIT_FAILURE),
    (StorageError, EXIT_FAILURE),
    (ServerError, EXIT_FAILURE),
    (ValueError, EXIT_USAGE),
    (OSError, EXIT_FAILURE),
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors carry the ``anvil-trio: error:`` prefix."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``anvil-trio`` (``serve`` and ``admin`` sub-commands)."""
    parser = _Parser(prog=PROG, description="A Trio-native object and blob store with a gRPC API.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the server on a data dir")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--data-dir", metavar="DIR", help="data dir (default ./anvil-data)")
    serve.add_argument("--metadata-url", metavar="URL",
                       help="postgresql://USER@HOST:PORT/DB: metadata in PostgreSQL "
                            "(default: SQLite under the data dir)")
    serve.add_argument("--blob-url", metavar="URL",
                       help="s3://BUCKET[/PREFIX]: bytes in an S3-compatible store "
                            "(default: files under the data dir)")
    serve.add_argument("--s3-endpoint", metavar="URL",
                       help="S3 endpoint URL, e.g. http://127.0.0.1:8333 (default: AWS)")
    serve.add_argument("--s3-region", metavar="REGION", help="S3 region (default us-east-1)")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:50051; port 0: any free)")
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (turns TLS on)")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", metavar="FILE",
                       help="PEM bundle; clients must present a certificate it signed (mTLS)")
    serve.add_argument("--dev", action="store_true",
                       help="development mode: exception details in INTERNAL errors")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                       help="server log messages on stderr at this level and above "
                       "(default info)")
    serve.set_defaults(handler=_cmd_serve)

    admin = commands.add_parser("admin", help="manage tenants, apps and policies")
    admin.add_argument("--data-dir", metavar="DIR",
                       help="data dir (default: the --config file's, else ./anvil-data)")
    admin.add_argument("--metadata-url", metavar="URL",
                       help="postgresql://USER@HOST:PORT/DB: manage the PostgreSQL metadata "
                            "store that scale-out nodes share (instead of a data dir)")
    admin.add_argument("--config", metavar="FILE",
                       help="take the data dir (or metadata_url) from this TOML file")
    areas = admin.add_subparsers(dest="area", required=True, metavar="AREA",
                                 parser_class=_Parser)

    tenant = areas.add_parser("tenant", help="tenants").add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    create = tenant.add_parser("create", help="create a tenant")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--quota-bytes", type=_non_negative_int, metavar="N",
                        help="bytes its objects and blobs may use (default: unlimited)")
    create.set_defaults(handler=_cmd_tenant_create)
    quota = tenant.add_parser("set-quota", help="change a tenant's quota")
    quota.add_argument("name", metavar="NAME")
    limit = quota.add_mutually_exclusive_group(required=True)
    limit.add_argument("--quota-bytes", type=_non_negative_int, metavar="N")
    limit.add_argument("--unlimited", action="store_true")
    quota.set_defaults(handler=_cmd_tenant_set_quota)

    app = areas.add_parser("app", help="apps (API clients)").add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    create = app.add_parser("create", help="register an app; prints its client id and secret")
    create.add_argument("--tenant", required=True, metavar="NAME")
    create.add_argument("--name", required=True, metavar="APP")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(handler=_cmd_app_create)
    rotate = app.add_parser("rotate-secret", help="replace an app's secret; prints the new one")
    rotate.add_argument("--app", required=True, metavar="CLIENT_ID")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    rotate.set_defaults(handler=_cmd_app_rotate)
    show = app.add_parser("show", help="an app's tenant, name and granted scopes")
    show.add_argument("--app", required=True, metavar="CLIENT_ID")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_cmd_app_show)

    policy = areas.add_parser("policy", help="scopes granted to apps").add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    for name, verb in (("grant", "grant scopes to"), ("revoke", "revoke scopes from")):
        change = policy.add_parser(name, help=f"{verb} an app")
        change.add_argument("--app", required=True, metavar="CLIENT_ID")
        change.add_argument("scopes", nargs="+", metavar="SCOPE", help="ACTION:RESOURCE")
        change.set_defaults(handler=_cmd_policy, grant=name == "grant")

    keys = areas.add_parser("keys", help="JWT signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    rotate = keys.add_parser("rotate", help="add a fresh signing key; the old one retires")
    rotate.add_argument("--retire-after", type=float, metavar="SECONDS", default=3600.0,
                        help="how long the old key still verifies tokens (default 3600; must "
                        "exceed the token lifetime plus leeway)")
    rotate.set_defaults(handler=_cmd_keys_rotate)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The server config: ``--config`` (or the defaults), then each flag given as an override.

    Raises:
        ConfigError: the file cannot be read or validated, an override is invalid (e.g. a
            bad ``--listen``, ``--tls-cert`` without ``--tls-key``), or a TLS file is missing.
    """
    config = Config.from_toml(args.config) if args.config else Config()
    changes: dict[str, Any] = {}
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    for name in ("metadata_url", "blob_url", "s3_endpoint", "s3_region"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.listen is not None:
        changes["host"], changes["port"] = parse_listen(args.listen)
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.dev:
        changes["dev_mode"] = True
    try:
        config = attrs.evolve(config, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{name.replace('_', '-')} file not found: {path}")
    return config


def _admin_data_dir(args: argparse.Namespace) -> os.PathLike[str] | str:
    """Where the admin commands work: ``--metadata-url`` (or the TOML file's
    ``metadata_url``), else the data dir."""
    if args.metadata_url:
        return Config(metadata_url=args.metadata_url).metadata_url
    if args.data_dir is not None:
        return Config(data_dir=args.data_dir).data_dir
    if args.config:
        config = Config.from_toml(args.config)
        return config.metadata_url or config.data_dir
    return Config().data_dir


# --------------------------------------------------------------------------------- serve


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _force_exit(signum: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(128 + signum)


async def _watch_signals(
    signals: AsyncIterator[int], serve_scope: trio.CancelScope, *, err: TextIO,
    force: Callable[[int], None],
) -> None:
    """First signal: cancel ``serve_scope`` (the server drains). Second: ``force(signum)``."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not serve_scope.cancel_called:
            print(f"{PROG}: {name} received, draining (send it again to stop at once)",
                  file=err, flush=True)
            serve_scope.cancel()
        else:
            print(f"{PROG}: {name} received again, stopping at once", file=err, flush=True)
            force(signum)
            return


class _StartedRelay:
    """Passes ``started(value)`` on and remembers that it happened."""

    def __init__(self, task_status: trio.TaskStatus[Any]) -> None:
        self._task_status = task_status
        self.called = False

    def started(self, value: object = None) -> None:
        self.called = True
        self._task_status.started(value)


async def _serve_in_scope(
    config: Config, serve_scope: trio.CancelScope, watcher_scope: trio.CancelScope, *,
    task_status: trio.TaskStatus[int | None],
) -> None:
    relay = _StartedRelay(task_status)
    try:
        with serve_scope:
            await serve(config, task_status=relay)
    finally:
        watcher_scope.cancel()
    if not relay.called:
        # Cancelled by a signal before it listened; report "not started" as None.
        task_status.started(None)


async def serve_until_signalled(
    config: Config, *, out: TextIO | None = None, err: TextIO | None = None,
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
    force: Callable[[int], None] = _force_exit,
) -> int:
    """Run :func:`anvil_trio.serve` with ``config`` until a signal makes it drain.

    Prints the "listening" line on ``out`` once it listens. The first of ``signals``
    cancels the server (it drains and returns); another one calls ``force(signum)``
    (default: exit the process at once with 128 + signum).

    Returns:
        ``EXIT_OK`` after the server drained (or was stopped before it listened).

    Raises:
        Whatever ``serve`` raises (in an ExceptionGroup from the nursery).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    serve_scope = trio.CancelScope()
    with trio.open_signal_receiver(*signals) as receiver:
        async with trio.open_nursery() as nursery:
            watcher_scope = trio.CancelScope()

            async def watch() -> None:
                with watcher_scope:
                    await _watch_signals(receiver, serve_scope, err=err, force=force)

            nursery.start_soon(watch)
            port = await nursery.start(_serve_in_scope, config, serve_scope, watcher_scope)
            if port is not None:
                address = _format_address(config.host, port)
                tls = ", TLS" if config.tls else ""
                print(f"{PROG} listening on {address} ({_where(config)}{tls})",
                      file=out, flush=True)
    return EXIT_OK


def _where(config: Config) -> str:
    """Where the server keeps its data, for the start line (no password)."""
    parts = []
    if config.metadata_url:
        parts.append(f"metadata {redact_url(config.metadata_url)}")
    if config.blob_url:
        parts.append(f"bytes {config.blob_url}")
    if not (config.metadata_url and config.blob_url):
        parts.insert(0, f"data dir {config.data_dir}")
    return ", ".join(parts)


def _cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # boto3/botocore (the S3 byte store) log routine chatter at INFO.
    for name in ("boto3", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    return trio.run(serve_until_signalled, config)


# --------------------------------------------------------------------------------- admin


def _quota_text(quota: int | None) -> str:
    return "unlimited" if quota is None else f"{quota} bytes"


def _print_tenant(verb: str, tenant: TenantInfo) -> None:
    print(f"{verb} tenant {tenant.name!r} (quota: {_quota_text(tenant.quota_bytes)}, "
          f"used: {tenant.used_bytes} bytes)")


def _print_credentials(creds: _admin.AppCredentials, *, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps(creds.as_json()), flush=True)
    else:
        print(f"client_id: {creds.client_id}")
        print(f"client_secret: {creds.client_secret}", flush=True)
    print(f"{PROG}: {verb} app {creds.name!r} in tenant {creds.tenant!r}; the client secret "
          "is shown only this once", file=sys.stderr)


def _print_app(app: AppInfo, *, as_json: bool = False) -> None:
    scopes = sorted(app.scopes)
    if as_json:
        print(json.dumps({"client_id": app.client_id, "tenant": app.tenant,
                          "name": app.name, "scopes": scopes}))
        return
    print(f"app {app.client_id} ({app.name!r} in tenant {app.tenant!r})")
    print("scopes: " + (" ".join(scopes) if scopes else "(none)"))


def _cmd_tenant_create(args: argparse.Namespace) -> int:
    tenant = trio.run(lambda: _admin.create_tenant_at(
        _admin_data_dir(args), args.name, quota_bytes=args.quota_bytes))
    _print_tenant("created", tenant)
    return EXIT_OK


def _cmd_tenant_set_quota(args: argparse.Namespace) -> int:
    quota = None if args.unlimited else args.quota_bytes
    tenant = trio.run(_admin.set_tenant_quota_at, _admin_data_dir(args), args.name, quota)
    _print_tenant("updated", tenant)
    return EXIT_OK


def _cmd_app_create(args: argparse.Namespace) -> int:
    creds = trio.run(lambda: _admin.create_app_at(
        _admin_data_dir(args), tenant=args.tenant, name=args.name))
    _print_credentials(creds, as_json=args.json, verb="created")
    return EXIT_OK


def _cmd_app_rotate(args: argparse.Namespace) -> int:
    creds = trio.run(_admin.rotate_secret_at, _admin_data_dir(args), args.app)
    _print_credentials(creds, as_json=args.json, verb="new secret for")
    return EXIT_OK


def _cmd_app_show(args: argparse.Namespace) -> int:
    app = trio.run(_admin.get_app_at, _admin_data_dir(args), args.app)
    _print_app(app, as_json=args.json)
    return EXIT_OK


def _cmd_policy(args: argparse.Namespace) -> int:
    scopes = _admin.validate_scopes(args.scopes)
    change = _admin.grant_scopes_at if args.grant else _admin.revoke_scopes_at
    app = trio.run(change, _admin_data_dir(args), args.app, scopes)
    verb = "granted" if args.grant else "revoked"
    print(f"{verb} {len(scopes)} scope(s) for {app.client_id}")
    _print_app(app)
    return EXIT_OK


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    ring = trio.run(lambda: _admin.rotate_signing_key_at(
        _admin_data_dir(args), retire_after=args.retire_after))
    print(f"new signing key {ring.signing_key.kid} ({len(ring.keys)} key(s) in the ring)")
    return EXIT_OK


# ---------------------------------------------------------------------------------- main


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_code_for(exc: BaseException) -> int | None:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return None


def _report(exc: Exception) -> int:
    """Print an expected error as one line per cause and pick the exit code; re-raise the
    unexpected (a bug deserves its traceback)."""
    leaves = _leaves(exc)
    codes = [_exit_code_for(leaf) for leaf in leaves]
    if any(code is None for code in codes):
        raise exc
    for leaf in leaves:
        cause = f" ({leaf.__cause__})" if isinstance(leaf, ServerError) and leaf.__cause__ else ""
        print(f"{PROG}: error: {leaf}{cause}", file=sys.stderr, flush=True)
    return max(code for code in codes if code is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``anvil-trio`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status (see the module docstring); also for usage errors and ``--help``,
        which argparse would otherwise signal with SystemExit.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except Exception as exc:
        return _report(exc)


if __name__ == "__main__":
    sys.exit(main())
