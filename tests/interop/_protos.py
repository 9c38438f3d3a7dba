"""The interop protos under ``protos/``, compiled once per process into a temp dir.

Nothing generated is committed: on first import this runs the project's own generator
(:func:`anvil_trio._codegen.generate`: protoc messages, grpcio stubs, purerpc servicers through
the plugin shim) on ``tests/interop/protos`` into a fresh temp dir as the package
:data:`PACKAGE`, puts that dir on ``sys.path`` and removes it at exit. So a fresh clone with
only ``pip install -e '.[test]'`` can run the suite.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from anvil_trio._codegen import generate

__all__ = ["PACKAGE", "PROTO_ROOT", "empty_pb2", "messages_pb2", "test_grpc", "test_pb2",
           "test_pb2_grpc"]

#: The import root of the interop protos (also what the Node client loads).
PROTO_ROOT = Path(__file__).resolve().parent / "protos"

#: The dotted package the generated modules live under.
PACKAGE = "anvil_interop_pb"


def _compile() -> dict[str, ModuleType]:
    root = Path(tempfile.mkdtemp(prefix="anvil-interop-pb-"))
    atexit.register(shutil.rmtree, root, True)
    generate(root / PACKAGE, proto_root=PROTO_ROOT, package=PACKAGE)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    base = f"{PACKAGE}.grpc.testing"
    return {name: importlib.import_module(f"{base}.{name}")
            for name in ("empty_pb2", "messages_pb2", "test_pb2", "test_grpc", "test_pb2_grpc")}


_modules = _compile()
empty_pb2 = _modules["empty_pb2"]
messages_pb2 = _modules["messages_pb2"]
test_pb2 = _modules["test_pb2"]
#: purerpc servicers and stubs (server side).
test_grpc = _modules["test_grpc"]
#: grpcio stubs (client side); imports ``grpc``.
test_pb2_grpc = _modules["test_pb2_grpc"]
