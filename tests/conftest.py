"""Suite-wide test plumbing: global effect settings are reset around every test, and a
``trio.Cancelled`` that escapes an async test fails it (pytest-trio 0.8 would drop it silently and
report a pass)."""

from __future__ import annotations

import functools
import inspect

import pytest
import trio

from anvil_trio import clear_retry_hooks, reset_effects_testing


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
