"""The ``anvil-trio`` command line and the admin operations behind it.

In-process tests call ``main([...])`` (which runs its own ``trio.run``, so they are plain
functions) on a real data dir under ``tmp_path``; the subprocess tests run ``anvil-trio serve``
and ``examples/server.py`` on 127.0.0.1 with bounded waits, and always kill what they started.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

from anvil_trio import _admin
from anvil_trio._cli import _watch_signals, build_parser, config_from_args, main
from anvil_trio._config import ConfigError
from anvil_trio.auth import KEY_FILE_NAME, load_keyring, verify_secret
from anvil_trio.storage import NotFoundError, StorageConfig, run_storage

# ------------------------------------------------------------------------------- helpers


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with its exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def admin(data_dir: pathlib.Path, *argv: str) -> list[str]:
    return ["admin", "--data-dir", str(data_dir), *argv]


def stored_app(data_dir: pathlib.Path, client_id: str) -> Any:
    return trio.run(_admin.get_app_at, data_dir, client_id)


def make_app(capsys: pytest.CaptureFixture[str], data_dir: pathlib.Path) -> dict[str, str]:
    assert run_cli(capsys, *admin(data_dir, "tenant", "create", "t1"))[0] == 0
    code, out, _ = run_cli(capsys, *admin(data_dir, "app", "create", "--tenant", "t1",
                                          "--name", "web", "--json"))
    assert code == 0
    return json.loads(out)


def count_grants(data_dir: pathlib.Path) -> int:
    with sqlite3.connect(data_dir / "meta.sqlite3") as conn:
        return conn.execute("SELECT count(*) FROM grants").fetchone()[0]


# ------------------------------------------------------------------------- admin commands


def test_tenant_create_records_quota(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`tenant create --quota-bytes` exits 0 and the tenant exists with that quota."""
    code, out, err = run_cli(capsys, *admin(tmp_path, "tenant", "create", "acme",
                                            "--quota-bytes", "1000"))
    assert (code, err) == (0, "")
    assert "acme" in out and "1000 bytes" in out

    async def read() -> Any:
        return await _admin.run_admin(tmp_path, lambda a: a.get_tenant("acme"))

    tenant = trio.run(read)
    assert (tenant.quota_bytes, tenant.used_bytes) == (1000, 0)


def test_duplicate_tenant_exits_1_without_traceback(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Creating a tenant twice exits 1 with a one-line error, no traceback."""
    assert run_cli(capsys, *admin(tmp_path, "tenant", "create", "acme"))[0] == 0
    code, out, err = run_cli(capsys, *admin(tmp_path, "tenant", "create", "acme"))
    assert code == 1 and out == ""
    assert err.startswith("anvil-trio: error:") and "already exists" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_tenant_set_quota_and_unknown_tenant(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`tenant set-quota` changes the quota; for an unknown tenant it exits 1."""
    run_cli(capsys, *admin(tmp_path, "tenant", "create", "acme", "--quota-bytes", "5"))
    code, out, _ = run_cli(capsys, *admin(tmp_path, "tenant", "set-quota", "acme", "--unlimited"))
    assert code == 0 and "unlimited" in out
    code, _, err = run_cli(capsys, *admin(tmp_path, "tenant", "set-quota", "nope",
                                          "--quota-bytes", "1"))
    assert code == 1 and "does not exist" in err


def test_negative_quota_is_a_usage_error(tmp_path: pathlib.Path, capsys: Any) -> None:
    """A negative --quota-bytes exits 2 and creates nothing."""
    code, _, err = run_cli(capsys, *admin(tmp_path, "tenant", "create", "acme",
                                          "--quota-bytes", "-1"))
    assert code == 2 and "negative" in err
    assert not (tmp_path / "meta.sqlite3").exists()


def test_app_create_json_secret_verifies_against_stored_hash(
    tmp_path: pathlib.Path, capsys: Any
) -> None:
    """`app create --json` prints parseable credentials whose secret matches the stored hash."""
    creds = make_app(capsys, tmp_path)
    assert set(creds) == {"client_id", "client_secret"}
    app = stored_app(tmp_path, creds["client_id"])
    assert (app.tenant, app.name, app.scopes) == ("t1", "web", frozenset())
    assert app.secret_hash.startswith("scrypt$") and creds["client_secret"] not in app.secret_hash
    assert verify_secret(creds["client_secret"], app.secret_hash)
    assert not verify_secret(creds["client_secret"] + "x", app.secret_hash)


def test_app_create_text_output_and_errors(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Plain `app create` prints id and secret lines; unknown tenant or taken name exit 1."""
    run_cli(capsys, *admin(tmp_path, "tenant", "create", "t1"))
    code, out, err = run_cli(capsys, *admin(tmp_path, "app", "create", "--tenant", "t1",
                                            "--name", "web"))
    assert code == 0 and "shown only this once" in err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    app = stored_app(tmp_path, lines["client_id"])
    assert verify_secret(lines["client_secret"], app.secret_hash)
    code, _, err = run_cli(capsys, *admin(tmp_path, "app", "create", "--tenant", "t1",
                                          "--name", "web"))
    assert code == 1 and "already has an app" in err
    code, _, err = run_cli(capsys, *admin(tmp_path, "app", "create", "--tenant", "zz",
                                          "--name", "web"))
    assert code == 1 and "tenant 'zz' does not exist" in err


def test_policy_grant_and_revoke(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`policy grant` adds scopes (idempotently) and `policy revoke` removes them."""
    client_id = make_app(capsys, tmp_path)["client_id"]
    code, out, _ = run_cli(capsys, *admin(tmp_path, "policy", "grant", "--app", client_id,
                                          "read:bucket:photos/*", "list:bucket:photos",
                                          "read:bucket:photos/*"))
    assert code == 0 and "list:bucket:photos read:bucket:photos/*" in out
    assert stored_app(tmp_path, client_id).scopes == {"read:bucket:photos/*",
                                                      "list:bucket:photos"}
    code, _, _ = run_cli(capsys, *admin(tmp_path, "policy", "revoke", "--app", client_id,
                                        "read:bucket:photos/*", "write:blob:*"))
    assert code == 0
    assert stored_app(tmp_path, client_id).scopes == {"list:bucket:photos"}


def test_invalid_scope_exits_2_and_grants_nothing(tmp_path: pathlib.Path, capsys: Any) -> None:
    """One unparsable scope among valid ones exits 2 and none of them is granted."""
    client_id = make_app(capsys, tmp_path)["client_id"]
    code, out, err = run_cli(capsys, *admin(tmp_path, "policy", "grant", "--app", client_id,
                                            "read:bucket:photos/*", "fly:bucket:photos"))
    assert code == 2 and out == ""
    assert "fly" in err and "Traceback" not in err
    assert stored_app(tmp_path, client_id).scopes == frozenset()
    assert count_grants(tmp_path) == 0


def test_policy_for_unknown_app_exits_1(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Granting to a client id that does not exist exits 1."""
    make_app(capsys, tmp_path)
    code, _, err = run_cli(capsys, *admin(tmp_path, "policy", "grant", "--app", "app_nope",
                                          "*:*"))
    assert code == 1 and "app_nope" in err
    assert count_grants(tmp_path) == 0


def test_rotate_secret_changes_the_hash(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`app rotate-secret --json` stores a new hash: the new secret verifies, the old does not."""
    creds = make_app(capsys, tmp_path)
    before = stored_app(tmp_path, creds["client_id"]).secret_hash
    code, out, _ = run_cli(capsys, *admin(tmp_path, "app", "rotate-secret", "--app",
                                          creds["client_id"], "--json"))
    assert code == 0
    rotated = json.loads(out)
    assert rotated["client_id"] == creds["client_id"]
    assert rotated["client_secret"] != creds["client_secret"]
    after = stored_app(tmp_path, creds["client_id"]).secret_hash
    assert after != before
    assert verify_secret(rotated["client_secret"], after)
    assert not verify_secret(creds["client_secret"], after)
    code, _, err = run_cli(capsys, *admin(tmp_path, "app", "rotate-secret", "--app", "app_x"))
    assert code == 1 and "does not exist" in err


def test_app_show_lists_scopes(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`app show --json` reports tenant, name and scopes but no secret or hash."""
    client_id = make_app(capsys, tmp_path)["client_id"]
    run_cli(capsys, *admin(tmp_path, "policy", "grant", "--app", client_id, "*:*"))
    code, out, _ = run_cli(capsys, *admin(tmp_path, "app", "show", "--app", client_id, "--json"))
    assert code == 0
    assert json.loads(out) == {"client_id": client_id, "tenant": "t1", "name": "web",
                               "scopes": ["*:*"]}


def test_keys_rotate_adds_a_signing_key(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`keys rotate` twice leaves a key file (mode 0600) whose newest key is the one printed."""
    for expected in (2, 3):
        code, out, _ = run_cli(capsys, *admin(tmp_path, "keys", "rotate"))
        assert code == 0
        ring = load_keyring(tmp_path / KEY_FILE_NAME)
        assert len(ring.keys) == expected and ring.signing_key.kid in out
    assert (tmp_path / KEY_FILE_NAME).stat().st_mode & 0o077 == 0


def test_admin_takes_data_dir_from_config_file(tmp_path: pathlib.Path, capsys: Any) -> None:
    """`admin --config FILE` uses the file's data_dir (relative to the file)."""
    (tmp_path / "anvil.toml").write_text('[server]\ndata_dir = "store"\n')
    code, _, _ = run_cli(capsys, "admin", "--config", str(tmp_path / "anvil.toml"),
                         "tenant", "create", "acme")
    assert code == 0 and (tmp_path / "store" / "meta.sqlite3").exists()


def test_usage_errors_exit_2(capsys: Any) -> None:
    """No command, an unknown sub-command or a missing required flag exit 2."""
    assert run_cli(capsys)[0] == 2
    assert run_cli(capsys, "admin", "tenant", "drop", "x")[0] == 2
    assert run_cli(capsys, "admin", "app", "create", "--tenant", "t1")[0] == 2
    assert run_cli(capsys, "--help")[0] == 0


async def test_admin_writes_while_storage_runs_in_this_process(tmp_path: pathlib.Path) -> None:
    """Admin and storage write via two connections at once; every write lands and is seen."""
    async with trio.open_nursery() as nursery:
        storage = await nursery.start(run_storage, StorageConfig(data_dir=tmp_path, fsync=False))
        await _admin.create_tenant_at(tmp_path, "t1")
        creds = await _admin.create_app_at(tmp_path, tenant="t1", name="svc")
        await _admin.grant_scopes_at(tmp_path, creds.client_id, ["write:blob:*"])
        app = await storage.get_app(creds.client_id)
        assert app.scopes == {"write:blob:*"}
        assert verify_secret(creds.client_secret, app.secret_hash)
        with pytest.raises(NotFoundError):
            await _admin.get_app_at(tmp_path, "app_missing")

        # Interleaved writers in two connections: every write lands, none fails as busy.
        async def buckets() -> None:
            for i in range(15):
                await storage.create_bucket("t1", f"bucket-{i:02d}")

        async def tenants() -> None:
            admin = await _admin.Admin.open(tmp_path)
            try:
                for i in range(15):
                    await admin.create_tenant(f"tenant-{i}")
                    await admin.grant_scopes(creds.client_id, [f"read:bucket:b{i:02d}/*"])
            finally:
                admin.close()

        async with trio.open_nursery() as writers:
            writers.start_soon(buckets)
            writers.start_soon(tenants)
        assert len(await storage.list_buckets("t1")) == 15
        assert len((await storage.get_app(creds.client_id)).scopes) == 16
        assert (await storage.get_tenant("tenant-14")).quota_bytes is None
        await storage.stop()


# ------------------------------------------------------------------------------ serve config


def parse_serve(*argv: str) -> Any:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_serve_config_defaults_and_overrides(tmp_path: pathlib.Path) -> None:
    """serve defaults to ./anvil-data and 127.0.0.1:50051; flags override the TOML file."""
    config = parse_serve()
    assert (config.data_dir, config.host, config.port) == (pathlib.Path("anvil-data"),
                                                           "127.0.0.1", 50051)
    assert not config.dev_mode
    toml = tmp_path / "anvil.toml"
    toml.write_text('[server]\ndata_dir = "d"\nlisten = "0.0.0.0:7000"\ngrace_period = 3.0\n')
    config = parse_serve("--config", str(toml))
    assert (config.data_dir, config.host, config.port) == (tmp_path / "d", "0.0.0.0", 7000)
    config = parse_serve("--config", str(toml), "--listen", "[::1]:0", "--data-dir",
                         str(tmp_path / "e"), "--dev")
    assert (config.data_dir, config.host, config.port) == (tmp_path / "e", "::1", 0)
    assert config.grace_period == 3.0 and config.dev_mode


def test_serve_config_errors(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Bad listen addresses, half a TLS pair, missing TLS files and bad TOML exit 2."""
    for argv in (["--listen", "nohost"], ["--listen", "127.0.0.1:99999"],
                 ["--tls-cert", str(tmp_path / "c.pem")]):
        with pytest.raises(ConfigError):
            parse_serve(*argv)
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(ConfigError, match="tls-key file not found"):
        parse_serve("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k"))
    (tmp_path / "bad.toml").write_text("colour = 'blue'\n")
    code, out, err = run_cli(capsys, "serve", "--config", str(tmp_path / "bad.toml"))
    assert code == 2 and out == "" and "unknown configuration keys: colour" in err
    code, _, err = run_cli(capsys, "serve", "--listen", "x:y")
    assert code == 2 and "port must be a number" in err


async def test_first_signal_drains_second_forces() -> None:
    """The first signal cancels the serve scope; a second one calls the force-exit hook."""
    send, receive = trio.open_memory_channel[int](2)
    serve_scope = trio.CancelScope()
    forced: list[int] = []

    class Sink:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def write(self, text: str) -> None:
            self.lines.append(text)

        def flush(self) -> None:
            return None

    err = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _watch_signals(receive, serve_scope, err=err,
                                                  force=forced.append))
        await send.send(signal.SIGTERM)
        await trio.testing.wait_all_tasks_blocked()
        assert serve_scope.cancel_called and forced == []
        await send.send(signal.SIGINT)
    assert forced == [signal.SIGINT]
    assert "draining" in "".join(err.lines) and "at once" in "".join(err.lines)


# --------------------------------------------------------------------------- subprocesses

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "server.py"
_SCRIPT = pathlib.Path(sys.executable).parent / "anvil-trio"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "anvil_trio._cli"]
#: Upper bound for anything a subprocess does (start, admin command, drain) on a slow machine.
WAIT = 60.0


class Running:
    """A child process with its stdout piped and its stderr in a file (for failure messages)."""

    def __init__(self, process: trio.Process, stderr_path: pathlib.Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self._buffer = b""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def read_line(self) -> str:
        """The next stdout line; fails after WAIT seconds or if stdout closes first."""
        assert self.process.stdout is not None
        with trio.fail_after(WAIT):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"stdout closed early; stderr:\n{self.stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def stop_with(self, signum: int) -> int:
        """Send ``signum`` and wait (at most WAIT seconds) for the exit code."""
        self.process.send_signal(signum)
        with trio.fail_after(WAIT):
            return await self.process.wait()


async def start(argv: list[str], cwd: pathlib.Path) -> Running:
    stderr_path = cwd / f"stderr-{len(list(cwd.glob('stderr-*')))}.txt"
    with open(stderr_path, "wb") as stderr:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Running(process, stderr_path)


async def kill(running: Running) -> None:
    """Kill the child if it still runs and reap it (for ``finally`` blocks)."""
    with trio.CancelScope(shield=True):
        if running.process.returncode is None:
            running.process.kill()
        with trio.move_on_after(WAIT):
            await running.process.wait()
        assert running.process.stdout is not None
        await running.process.stdout.aclose()


def port_of(line: str) -> int:
    prefix, sep, rest = line.partition(" listening on 127.0.0.1:")
    assert sep, line
    return int(rest.split()[0])


async def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``anvil-trio ARGV`` as a separate process (bounded)."""
    with trio.fail_after(WAIT):
        done = await trio.run_process([*CLI, *argv], capture_stdout=True, capture_stderr=True,
                                      check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def get_token(port: int, client_id: str, secret: str, *scopes: str) -> Any:
    """GetAccessToken over the wire; returns the response or the purerpc status code."""
    import purerpc
    from purerpc.grpclib.exceptions import RpcFailedError

    from anvil_trio._proto.anvil.v1 import auth_grpc, auth_pb2

    request = auth_pb2.GetAccessTokenRequest(client_id=client_id, client_secret=secret,
                                             scopes=list(scopes))
    with trio.fail_after(WAIT):
        async with purerpc.insecure_channel("127.0.0.1", port) as channel:
            try:
                return await auth_grpc.AuthServiceStub(channel).GetAccessToken(request)
            except RpcFailedError as exc:
                return exc.status.status_code


async def test_serve_admin_while_serving_and_sigterm_drains(tmp_path: pathlib.Path) -> None:
    """`serve` prints its address; admin commands run meanwhile take effect at the next
    GetAccessToken over the wire; SIGTERM makes it exit 0."""
    from purerpc import StatusCode

    data = tmp_path / "data"
    server = await start([*CLI, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
                         tmp_path)
    try:
        line = await server.read_line()
        assert line.startswith("anvil-trio listening on 127.0.0.1:") and str(data) in line
        port = port_of(line)

        assert (await cli(*admin(data, "tenant", "create", "t1")))[0] == 0
        code, out, err = await cli(*admin(data, "app", "create", "--tenant", "t1",
                                          "--name", "web", "--json"))
        assert code == 0, err
        creds = json.loads(out)
        client_id, secret = creds["client_id"], creds["client_secret"]
        # No scopes granted yet: the credentials work but no token can be issued.
        assert await get_token(port, client_id, secret) == StatusCode.PERMISSION_DENIED

        assert (await cli(*admin(data, "policy", "grant", "--app", client_id,
                                 "read:bucket:photos/*", "list:bucket:photos")))[0] == 0
        response = await get_token(port, client_id, secret)
        assert response.token_type == "Bearer" and response.access_token
        assert sorted(response.scopes) == ["list:bucket:photos", "read:bucket:photos/*"]

        assert (await cli(*admin(data, "policy", "revoke", "--app", client_id,
                                 "list:bucket:photos")))[0] == 0
        assert await get_token(port, client_id, secret, "list:bucket:photos") == (
            StatusCode.PERMISSION_DENIED)

        code, out, _ = await cli(*admin(data, "app", "rotate-secret", "--app", client_id,
                                        "--json"))
        assert code == 0
        new_secret = json.loads(out)["client_secret"]
        assert await get_token(port, client_id, secret) == StatusCode.UNAUTHENTICATED
        response = await get_token(port, client_id, new_secret)
        assert list(response.scopes) == ["read:bucket:photos/*"]

        assert await server.stop_with(signal.SIGTERM) == 0, server.stderr()
        assert "draining" in server.stderr()
    finally:
        await kill(server)


async def test_serve_sigint_drains_with_exit_0(tmp_path: pathlib.Path) -> None:
    """SIGINT (Ctrl-C) makes `serve` drain and exit 0, after printing its address once."""
    server = await start([*CLI, "serve", "--data-dir", str(tmp_path / "d"),
                          "--listen", "127.0.0.1:0"], tmp_path)
    try:
        port_of(await server.read_line())
        assert await server.stop_with(signal.SIGINT) == 0, server.stderr()
        assert server.stderr().count("draining") == 1
        assert server.process.stdout is not None
        with trio.fail_after(WAIT):
            assert await server.process.stdout.receive_some() == b""
    finally:
        await kill(server)


async def test_serve_bad_config_exits_2(tmp_path: pathlib.Path) -> None:
    """`serve` with an invalid --listen exits 2 with one error line and nothing on stdout."""
    code, out, err = await cli("serve", "--data-dir", str(tmp_path), "--listen", "localhost")
    assert (code, out) == (2, "")
    assert err.startswith("anvil-trio: error:") and "Traceback" not in err


async def test_serve_port_in_use_exits_1(tmp_path: pathlib.Path) -> None:
    """A second server on a port already bound exits 1 with an error, not a traceback."""
    first = await start([*CLI, "serve", "--data-dir", str(tmp_path / "a"),
                         "--listen", "127.0.0.1:0"], tmp_path)
    try:
        port = port_of(await first.read_line())
        code, out, err = await cli("serve", "--data-dir", str(tmp_path / "b"),
                                   "--listen", f"127.0.0.1:{port}")
        assert code == 1 and out == ""
        assert "anvil-trio: error:" in err and "Traceback" not in err
        assert await first.stop_with(signal.SIGTERM) == 0
    finally:
        await kill(first)


async def test_example_server_starts_and_stops_on_sigint(tmp_path: pathlib.Path) -> None:
    """examples/server.py prints where it listens and exits 0 after draining on SIGINT."""
    example = await start([sys.executable, str(EXAMPLE), "127.0.0.1:0"], tmp_path)
    try:
        line = await example.read_line()
        port_of(line)
        assert "anvil-data" in line and (tmp_path / "anvil-data" / "meta.sqlite3").exists()
        assert await example.stop_with(signal.SIGINT) == 0, example.stderr()
        assert await example.read_line() == "stopped"
    finally:
        await kill(example)


def self_signed(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    key, cert = folder / "server.key", folder / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=anvil",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=WAIT,
    )
    return cert, key


async def test_serve_with_config_file_and_tls_flags(tmp_path: pathlib.Path) -> None:
    """`serve --config FILE --tls-cert --tls-key` uses the file's data dir and serves TLS."""
    import ssl

    import purerpc
    from purerpc import StatusCode
    from purerpc.grpclib.exceptions import RpcFailedError

    from anvil_trio._proto.anvil.v1 import auth_grpc, auth_pb2

    cert, key = await trio.to_thread.run_sync(self_signed, tmp_path)
    (tmp_path / "anvil.toml").write_text('[server]\ndata_dir = "tls-data"\ngrace_period = 2.0\n')
    server = await start([*CLI, "serve", "--config", str(tmp_path / "anvil.toml"),
                          "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                          "--tls-key", str(key)], tmp_path)
    try:
        line = await server.read_line()
        assert "tls-data" in line and "TLS" in line
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2"])
        request = auth_pb2.GetAccessTokenRequest(client_id="app_unknown", client_secret="x")
        with trio.fail_after(WAIT):
            async with purerpc.secure_channel("127.0.0.1", port_of(line), context) as channel:
                with pytest.raises(RpcFailedError) as failed:
                    await auth_grpc.AuthServiceStub(channel).GetAccessToken(request)
        assert failed.value.status.status_code == StatusCode.UNAUTHENTICATED
        assert (tmp_path / "tls-data" / "meta.sqlite3").exists()
        assert await server.stop_with(signal.SIGTERM) == 0, server.stderr()
    finally:
        await kill(server)
