"""The committed generated code is current, and the protos say what API.md says."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from anvil_trio import _codegen
from anvil_trio._proto.anvil.v1 import (
    auth_pb2,
    blob_pb2,
    bucket_pb2,
    common_pb2,
    object_pb2,
    upload_pb2,
)
from anvil_trio._proto.grpc.health.v1 import health_pb2

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
}

# message -> field -> type as API.md writes it ("optional " = proto3 optional, presence visible).
_EXPECTED_FIELDS: dict[str, dict[str, str]] = {
    "anvil.v1.GetAccessTokenRequest": {
        "client_id": "string",
        "client_secret": "string",
        "scopes": "repeated string",
    },
    "anvil.v1.GetAccessTokenResponse": {
        "access_token": "string",
        "token_type": "string",
        "expires_in": "int64",
        "scopes": "repeated string",
    },
    "anvil.v1.CreateBucketRequest": {"bucket_name": "string", "versioning": "bool"},
    "anvil.v1.DeleteBucketRequest": {"bucket_name": "string"},
    "anvil.v1.DeleteBucketResponse": {},
    "anvil.v1.ListBucketsRequest": {},
    "anvil.v1.ListBucketsResponse": {"buckets": "repeated anvil.v1.Bucket"},
    "anvil.v1.Bucket": {
        "name": "string",
        "created_at": "google.protobuf.Timestamp",
        "versioning": "bool",
    },
    "anvil.v1.ObjectMetadata": {
        "bucket_name": "string",
        "object_key": "string",
        "content_type": "string",
        "user_metadata": "map<string,string>",
        "content_length": "optional int64",
        "expected_sha256": "string",
        "if_none_match": "bool",
    },
    "anvil.v1.PutObjectRequest": {"metadata": "anvil.v1.ObjectMetadata", "chunk": "bytes"},
    "anvil.v1.PutObjectResponse": {"etag": "string", "version_id": "string", "size": "int64"},
    "anvil.v1.GetObjectRequest": {
        "bucket_name": "string",
        "object_key": "string",
        "version_id": "optional string",
        "range": "optional anvil.v1.ByteRange",
    },
    "anvil.v1.GetObjectResponse": {"info": "anvil.v1.ObjectInfo", "chunk": "bytes"},
    "anvil.v1.HeadObjectRequest": {
        "bucket_name": "string",
        "object_key": "string",
        "version_id": "optional string",
    },
    "anvil.v1.HeadObjectResponse": {"info": "anvil.v1.ObjectInfo"},
    "anvil.v1.DeleteObjectRequest": {
        "bucket_name": "string",
        "object_key": "string",
        "version_id": "optional string",
    },
    "anvil.v1.DeleteObjectResponse": {"version_id": "string", "delete_marker": "bool"},
    "anvil.v1.ListObjectsRequest": {
        "bucket_name": "string",
        "prefix": "string",
        "delimiter": "string",
        "max_keys": "int32",
        "page_token": "string",
    },
    "anvil.v1.ListObjectsResponse": {
        "objects": "repeated anvil.v1.ObjectInfo",
        "common_prefixes": "repeated string",
        "next_page_token": "string",
    },
    "anvil.v1.ListObjectVersionsRequest": {
        "bucket_name": "string",
        "prefix": "string",
        "max_keys": "int32",
        "page_token": "string",
    },
    "anvil.v1.ListObjectVersionsResponse": {
        "versions": "repeated anvil.v1.ObjectVersion",
        "next_page_token": "string",
    },
    "anvil.v1.ObjectVersion": {
        "info": "anvil.v1.ObjectInfo",
        "is_latest": "bool",
        "delete_marker": "bool",
    },
    "anvil.v1.ObjectInfo": {
        "bucket_name": "string",
        "object_key": "string",
        "version_id": "string",
        "size": "int64",
        "etag": "string",
        "content_type": "string",
        "user_metadata": "map<string,string>",
        "last_modified": "google.protobuf.Timestamp",
    },
    "anvil.v1.ByteRange": {"start": "int64", "end": "optional int64"},
    "anvil.v1.GetBlobRequest": {"key": "bytes", "range": "optional anvil.v1.ByteRange"},
    "anvil.v1.BlobChunk": {"data": "bytes", "offset": "int64"},
    "anvil.v1.StatBlobRequest": {"key": "bytes"},
    "anvil.v1.BlobMetadata": {
        "key": "bytes",
        "size": "int64",
        "content_type": "string",
        "attributes": "map<string,string>",
        "created_at": "google.protobuf.Timestamp",
    },
    "anvil.v1.DeleteBlobRequest": {"key": "bytes"},
    "anvil.v1.DeleteBlobResponse": {},
    "anvil.v1.ListBlobsRequest": {"limit": "int32", "start_after": "bytes"},
    "anvil.v1.UploadMessage": {
        "start": "anvil.v1.StartUpload",
        "chunk": "anvil.v1.UploadChunk",
        "complete": "anvil.v1.CompleteUpload",
    },
    "anvil.v1.StartUpload": {
        "total_size": "int64",
        "attributes": "map<string,string>",
        "upload_id": "string",
    },
    "anvil.v1.UploadChunk": {"data": "bytes", "offset": "int64"},
    "anvil.v1.CompleteUpload": {"expected_hash": "bytes"},
    "anvil.v1.UploadAck": {
        "upload_id": "string",
        "received_bytes": "uint64",
        "complete": "anvil.v1.UploadComplete",
    },
    "anvil.v1.UploadComplete": {"key": "bytes", "size": "int64", "deduplicated": "bool"},
    "grpc.health.v1.HealthCheckRequest": {"service": "string"},
    "grpc.health.v1.HealthCheckResponse": {
        "status": "enum grpc.health.v1.HealthCheckResponse.ServingStatus"
    },
}

# service -> method -> (request, response, client streams, server streams)
_EXPECTED_METHODS: dict[str, dict[str, tuple[str, str, bool, bool]]] = {
    "anvil.v1.AuthService": {
        "GetAccessToken": ("GetAccessTokenRequest", "GetAccessTokenResponse", False, False),
    },
    "anvil.v1.BucketService": {
        "CreateBucket": ("CreateBucketRequest", "Bucket", False, False),
        "DeleteBucket": ("DeleteBucketRequest", "DeleteBucketResponse", False, False),
        "ListBuckets": ("ListBucketsRequest", "ListBucketsResponse", False, False),
    },
    "anvil.v1.ObjectService": {
        "PutObject": ("PutObjectRequest", "PutObjectResponse", True, False),
        "GetObject": ("GetObjectRequest", "GetObjectResponse", False, True),
        "HeadObject": ("HeadObjectRequest", "HeadObjectResponse", False, False),
        "DeleteObject": ("DeleteObjectRequest", "DeleteObjectResponse", False, False),
        "ListObjects": ("ListObjectsRequest", "ListObjectsResponse", False, False),
        "ListObjectVersions": (
            "ListObjectVersionsRequest",
            "ListObjectVersionsResponse",
            False,
            False,
        ),
    },
    "anvil.v1.BlobService": {
        "GetBlob": ("GetBlobRequest", "BlobChunk", False, True),
        "StatBlob": ("StatBlobRequest", "BlobMetadata", False, False),
        "DeleteBlob": ("DeleteBlobRequest", "DeleteBlobResponse", False, False),
        "ListBlobs": ("ListBlobsRequest", "BlobMetadata", False, True),
    },
    "anvil.v1.UploadService": {
        "Upload": ("UploadMessage", "UploadAck", True, True),
    },
    "grpc.health.v1.Health": {
        "Check": ("HealthCheckRequest", "HealthCheckResponse", False, False),
        "Watch": ("HealthCheckRequest", "HealthCheckResponse", False, True),
    },
}

_MODULES = (auth_pb2, blob_pb2, bucket_pb2, common_pb2, object_pb2, upload_pb2, health_pb2)


def _message(full_name: str):
    for module in _MODULES:
        pool = module.DESCRIPTOR.pool
        try:
            return pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    raise AssertionError(f"message {full_name} is not defined")


def _describe(field: FieldDescriptor) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _SCALARS[field.message_type.fields_by_name["key"].type]
        value = _SCALARS[field.message_type.fields_by_name["value"].type]
        return f"map<{key},{value}>"
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        base = field.message_type.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = f"enum {field.enum_type.full_name}"
    else:
        base = _SCALARS[field.type]
    if field.is_repeated:
        return f"repeated {base}"
    in_real_oneof = field.containing_oneof is not None and not _is_synthetic(field)
    if _is_synthetic(field) or (
        field.type != FieldDescriptor.TYPE_MESSAGE and field.has_presence and not in_real_oneof
    ):
        return f"optional {base}"
    return base


def _is_synthetic(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and oneof.name.startswith("_") and len(oneof.fields) == 1


def test_committed_generated_code_is_current():
    """Regenerating from protos/ into a temp dir gives byte-identical committed modules."""
    assert _codegen.stale_files() == []


def test_stale_detection_notices_an_edited_module(tmp_path):
    """stale_files reports a generated module whose text differs from a fresh generation."""
    out = tmp_path / "pkg"
    _codegen.generate(out)
    target = out / "anvil" / "v1" / "object_pb2.py"
    target.write_text(target.read_text() + "# edited\n")
    (out / "anvil" / "v1" / "extra_pb2.py").write_text("")
    assert _codegen.stale_files(out) == ["anvil/v1/extra_pb2.py", "anvil/v1/object_pb2.py"]


def test_generated_imports_point_into_the_package():
    """No generated module imports our protos as top-level anvil.* or grpc.health.* modules."""
    folder = _codegen.default_output_dir()
    for path in folder.rglob("*.py*"):
        if "__pycache__" in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import anvil.", "from anvil.", "from anvil ")), path
            assert not stripped.startswith(("from grpc.health", "import grpc.health")), path


def test_runtime_modules_do_not_import_grpcio():
    """Importing the purerpc modules and messages never pulls in the grpcio library."""
    import subprocess

    code = (
        "import sys\n"
        "import anvil_trio._proto.anvil.v1.object_grpc, anvil_trio._proto.anvil.v1.upload_grpc\n"
        "import anvil_trio._proto.grpc.health.v1.health_grpc\n"
        "print('grpc' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("message_name", sorted(_EXPECTED_FIELDS))
def test_message_fields_match_the_contract(message_name):
    """Every field API.md names exists with its type, label and presence, and nothing else."""
    descriptor = _message(message_name)
    actual = {f.name: _describe(f) for f in descriptor.fields}
    assert actual == _EXPECTED_FIELDS[message_name]


@pytest.mark.parametrize(
    ("message_name", "oneof", "numbers"),
    [
        ("anvil.v1.PutObjectRequest", "data", {"metadata": 1, "chunk": 2}),
        ("anvil.v1.GetObjectResponse", "data", {"info": 1, "chunk": 2}),
        ("anvil.v1.UploadMessage", "message", {"start": 1, "chunk": 2, "complete": 3}),
    ],
)
def test_oneofs_have_the_contract_numbers(message_name, oneof, numbers):
    """The oneofs API.md defines hold exactly the given fields with the given numbers."""
    descriptor = _message(message_name)
    group = descriptor.oneofs_by_name[oneof]
    assert {f.name: f.number for f in group.fields} == numbers


def test_optional_presence_is_visible():
    """proto3 optional fields report presence, so 'absent' differs from the default value."""
    request = object_pb2.GetObjectRequest(bucket_name="b", object_key="k")
    assert not request.HasField("version_id") and not request.HasField("range")
    request.version_id = ""
    request.range.start = 0
    assert request.HasField("version_id") and request.HasField("range")
    assert not request.range.HasField("end")
    meta = object_pb2.ObjectMetadata(content_length=0)
    assert meta.HasField("content_length")
    decoded = object_pb2.ObjectMetadata.FromString(meta.SerializeToString())
    assert decoded.HasField("content_length")


def test_map_fields_round_trip():
    """map<string,string> fields keep their entries over the wire."""
    meta = object_pb2.ObjectMetadata(user_metadata={"a": "1", "b": "2"})
    start = upload_pb2.StartUpload(attributes={"content-type": "text/plain"})
    assert dict(object_pb2.ObjectMetadata.FromString(meta.SerializeToString()).user_metadata) == {
        "a": "1",
        "b": "2",
    }
    assert upload_pb2.StartUpload.FromString(start.SerializeToString()).attributes[
        "content-type"
    ] == "text/plain"


def test_health_serving_status_values():
    """The health enum has the standard names and numbers."""
    enum = health_pb2.HealthCheckResponse.ServingStatus
    assert {name: enum.Value(name) for name in enum.keys()} == {
        "UNKNOWN": 0,
        "SERVING": 1,
        "NOT_SERVING": 2,
        "SERVICE_UNKNOWN": 3,
    }


@pytest.mark.parametrize("service_name", sorted(_EXPECTED_METHODS))
def test_services_have_the_contract_methods(service_name):
    """Each service has exactly the RPCs of API.md with their request/response and kinds."""
    service = None
    for module in _MODULES:
        try:
            service = module.DESCRIPTOR.pool.FindServiceByName(service_name)
            break
        except KeyError:
            continue
    assert service is not None, service_name
    actual = {
        m.name: (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming)
        for m in service.methods
    }
    assert actual == _EXPECTED_METHODS[service_name]


def test_purerpc_servicers_name_the_full_service():
    """Generated purerpc servicers register under the fully qualified gRPC service name."""
    from anvil_trio._proto.anvil.v1 import object_grpc, upload_grpc
    from anvil_trio._proto.grpc.health.v1 import health_grpc

    assert object_grpc.ObjectServiceServicer().service.name == "anvil.v1.ObjectService"
    assert set(upload_grpc.UploadServiceServicer().service.methods) == {"Upload"}
    assert health_grpc.HealthServicer().service.name == "grpc.health.v1.Health"


# ---------------------------------------------------------------- install floors

_ROOT = Path(__file__).resolve().parent.parent
_GENERATED_PROTOBUF = re.compile(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)\s*$", re.M)
_VALIDATE_CALL = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
    r"(\d+),\s*(\d+),\s*(\d+),"
)
_GENERATED_GRPC = re.compile(r"^GRPC_GENERATED_VERSION = '(\d+)\.(\d+)\.(\d+)'\s*$", re.M)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    """The ``>=`` floor of ``name`` among PEP 508 requirement strings (fails if it has none)."""
    pattern = re.compile(rf"^{re.escape(name)}\s*(?:\[[^\]]*\])?\s*([^;]*)", re.I)
    for requirement in requirements:
        found = pattern.match(requirement.strip())
        if found is None:
            continue
        for clause in found.group(1).split(","):
            clause = clause.strip()
            if clause.startswith(">="):
                return _version(clause[2:].strip())
            if clause.startswith("=="):
                return _version(clause[2:].strip())
    raise AssertionError(f"{name} has no declared floor in {requirements!r}")


def _project() -> dict:
    with open(_ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def _generated(suffix: str) -> list[Path]:
    files = sorted(_codegen.default_output_dir().rglob(f"*{suffix}"))
    assert files, suffix
    return files


def test_generated_messages_need_no_newer_protobuf_than_the_declared_floor():
    """Every ``*_pb2.py`` was generated for a protobuf no newer than the ``protobuf>=`` floor
    of the package's dependencies (its import validates the runtime against that version)."""
    floor = _floor(_project()["dependencies"], "protobuf")
    for path in _generated("_pb2.py"):
        text = path.read_text()
        header = _GENERATED_PROTOBUF.search(text)
        call = _VALIDATE_CALL.search(text)
        assert header is not None and call is not None, path
        generated = tuple(int(n) for n in header.groups())
        assert tuple(int(n) for n in call.groups()) == generated, path
        assert generated <= floor, f"{path.name} needs protobuf>={generated}, floor is {floor}"


def test_generated_grpcio_stubs_need_no_newer_grpcio_than_the_test_floor():
    """Every ``*_pb2_grpc.py`` (grpcio stubs, imported by tests only) needs a grpcio no newer
    than the test extra's ``grpcio>=`` floor, and grpcio-tools' floor is what generated them."""
    test_extra = _project()["optional-dependencies"]["test"]
    grpcio_floor = _floor(test_extra, "grpcio")
    tools_floor = _floor(test_extra, "grpcio-tools")
    for path in _generated("_pb2_grpc.py"):
        found = _GENERATED_GRPC.search(path.read_text())
        assert found is not None, path
        generated = tuple(int(n) for n in found.groups())
        assert generated <= grpcio_floor, f"{path.name} needs grpcio>={generated}"
        assert generated <= tools_floor, f"{path.name} was made by grpcio-tools {generated}"
