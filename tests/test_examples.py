"""The README's toolkit example runs and says what the README says it says."""

from __future__ import annotations

import pathlib
import runpy

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


async def test_toolkit_example_output(autojump_clock, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/toolkit.py retries after exactly 0.1 + 0.2 s and restarts the actor fresh."""
    namespace = runpy.run_path(str(EXAMPLES / "toolkit.py"), run_name="toolkit_example")
    await namespace["main"]()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "connected after 0.3s",
        "count 1 2",
        "crashed: ActorCrashedError",
        "after restart, count 1",
    ]


def test_readme_embeds_toolkit_example() -> None:
    """The README shows examples/toolkit.py verbatim, so the runnable file and the docs agree."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    body = (EXAMPLES / "toolkit.py").read_text(encoding="utf-8")
    assert body.strip() in readme
