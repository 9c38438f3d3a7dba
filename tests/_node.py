"""The Node.js gRPC client (@grpc/grpc-js) for tests: installed on first use, then reused.

The packages go into ``.venv/anvil-node/`` beside the test interpreter (so a fresh clone gets
them from the README's test command and ``rm -rf .venv`` removes them), pinned to the versions
below. Tests run their scripts with :func:`run_node`, which sets ``NODE_PATH`` to that folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The npm packages the Node test clients use, pinned.
NODE_PACKAGES = {"@grpc/grpc-js": "1.14.7", "@grpc/proto-loader": "0.8.1"}

#: Where the tests' Node packages live.
NODE_DIR = Path(sys.prefix) / "anvil-node"


def grpc_js_dir() -> Path:
    """Install the pinned packages into :data:`NODE_DIR` once; return its ``node_modules``.

    Raises:
        RuntimeError: ``node`` or ``npm`` is missing, or the install failed (with npm's output).
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the grpc-js tests (apt-get install nodejs npm)")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    marker = NODE_DIR / "installed.json"
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and json.loads(marker.read_text()) == NODE_PACKAGES:
            return NODE_DIR / "node_modules"
        (NODE_DIR / "package.json").write_text(json.dumps({"name": "anvil-trio-tests",
                                                           "private": True}))
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
             *(f"{name}@{version}" for name, version in NODE_PACKAGES.items())],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm install failed:\n{done.stdout}\n{done.stderr}")
        marker.write_text(json.dumps(NODE_PACKAGES))
    return NODE_DIR / "node_modules"


def run_node(script: Path, *args: str, timeout: float = 300.0,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``node script args...`` with the grpc-js packages importable; capture its output."""
    modules = grpc_js_dir()
    full_env = {**os.environ, "NODE_PATH": str(modules), **(env or {})}
    return subprocess.run(["node", str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)
