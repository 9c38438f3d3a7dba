"""Suite-wide test plumbing: global effect settings are reset around every test, and a
``trio.Cancelled`` that escapes an async test fails it (pytest-trio 0.8 would drop it silently and
report a pass)."""

from __future__ import annotations

import functools
import inspect

import _services
import pytest
import trio

from anvil_trio import clear_retry_hooks, reset_effects_testing
from anvil_trio.testing import backend_overrides


@pytest.fixture(autouse=True)
def _reset_effect_globals():
    reset_effects_testing()
    clear_retry_hooks()
    yield
    reset_effects_testing()
    clear_retry_hooks()


def _fail_on_leaked_cancel(test):
    @functools.wraps(test)
    async def wrapper(*args, **kwargs):
        try:
            await test(*args, **kwargs)
        except trio.Cancelled:
            pytest.fail("trio.Cancelled escaped the test")
        except BaseExceptionGroup as group:
            if group.subgroup(trio.Cancelled) is not None:
                pytest.fail(f"trio.Cancelled escaped the test inside {group!r}")
            raise

    return wrapper


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        test = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(test) and not getattr(test, "_cancel_guarded", False):
            guarded = _fail_on_leaked_cancel(test)
            guarded._cancel_guarded = True
            item.obj = guarded


# Real PostgreSQL and SeaweedFS (S3) servers, started on first use and shared by the session
# (see ``_services``). Fault tests may stop, kill or restart them; the per-test fixtures start
# them again if a test left them down.


@pytest.fixture(scope="session")
def postgres_server():
    """The session's :class:`_services.PostgresServer` (started on first use)."""
    server = _services.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server):
    """The URL of a fresh, empty database (``postgresql://anvil@127.0.0.1:PORT/t_<hex>``),
    dropped after the test."""
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.create_database()
    yield url
    if postgres_server.running:
        postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def seaweed_server():
    """The session's :class:`_services.SeaweedServer` (started on first use); while it runs,
    ``os.environ`` carries the test credentials and ``AWS_ENDPOINT_URL`` (so subprocesses and
    default boto3 clients reach it)."""
    server = _services.SeaweedServer()
    with pytest.MonkeyPatch.context() as patch:
        try:
            server.start()
            for key, value in server.env().items():
                patch.setenv(key, value)
            yield server
        finally:
            server.close()


@pytest.fixture
def s3_url(seaweed_server):
    """A fresh, empty prefix in the shared bucket: ``s3://anvil-tests/<hex>``."""
    if not seaweed_server.running:
        seaweed_server.start()
    return seaweed_server.new_prefix_url()


# The storage and RPC contract suites run against both configurations: a module opts in with
# ``pytestmark = pytest.mark.usefixtures("backend")``; a test that is about the embedded
# backend's own machinery (files, the data-dir lock, disk faults) is marked ``embedded_only``.

BACKENDS = ("embedded", "postgres+s3")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "embedded_only: runs only on the embedded backend (SQLite + files)")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("embedded_only") is not None
        metafunc.parametrize("backend", BACKENDS[:1] if only else BACKENDS, indirect=True)


@pytest.fixture
def backend(request):
    """The backend under test: ``{}`` for the embedded default, else the config overrides of
    a fresh PostgreSQL database and S3 prefix (``metadata_url``, ``blob_url``,
    ``s3_endpoint``), also applied to every test server (``testing.backend_overrides``)."""
    if request.param == "embedded":
        yield {}
        return
    seaweed = request.getfixturevalue("seaweed_server")
    overrides = {
        "metadata_url": request.getfixturevalue("pg_url"),
        "blob_url": request.getfixturevalue("s3_url"),
        "s3_endpoint": seaweed.endpoint,
    }
    with backend_overrides(overrides):
        yield overrides
