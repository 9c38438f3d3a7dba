import datetime

from anvil_trio._proto.anvil.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectMetadata(_message.Message):
    __slots__ = ("bucket_name", "object_key", "content_type", "user_metadata", "content_length", "expected_sha256", "if_none_match")
    class UserMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    IF_NONE_MATCH_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    object_key: str
    content_type: str
    user_metadata: _containers.ScalarMap[str, str]
    content_length: int
    expected_sha256: str
    if_none_match: bool
    def __init__(self, bucket_name: _Optional[str] = ..., object_key: _Optional[str] = ..., content_type: _Optional[str] = ..., user_metadata: _Optional[_Mapping[str, str]] = ..., content_length: _Optional[int] = ..., expected_sha256: _Optional[str] = ..., if_none_match: _Optional[bool] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: ObjectMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[ObjectMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutObjectResponse(_message.Message):
    __slots__ = ("etag", "version_id", "size")
    ETAG_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    etag: str
    version_id: str
    size: int
    def __init__(self, etag: _Optional[str] = ..., version_id: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("bucket_name", "object_key", "version_id", "size", "etag", "content_type", "user_metadata", "last_modified")
    class UserMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_METADATA_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    object_key: str
    version_id: str
    size: int
    etag: str
    content_type: str
    user_metadata: _containers.ScalarMap[str, str]
    last_modified: _timestamp_pb2.Timestamp
    def __init__(self, bucket_name: _Optional[str] = ..., object_key: _Optional[str] = ..., version_id: _Optional[str] = ..., size: _Optional[int] = ..., etag: _Optional[str] = ..., content_type: _Optional[str] = ..., user_metadata: _Optional[_Mapping[str, str]] = ..., last_modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("bucket_name", "object_key", "version_id", "range")
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    object_key: str
    version_id: str
    range: _common_pb2.ByteRange
    def __init__(self, bucket_name: _Optional[str] = ..., object_key: _Optional[str] = ..., version_id: _Optional[str] = ..., range: _Optional[_Union[_common_pb2.ByteRange, _Mapping]] = ...) -> None: ...

class GetObjectResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ObjectInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class HeadObjectRequest(_message.Message):
    __slots__ = ("bucket_name", "object_key", "version_id")
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    object_key: str
    version_id: str
    def __init__(self, bucket_name: _Optional[str] = ..., object_key: _Optional[str] = ..., version_id: _Optional[str] = ...) -> None: ...

class HeadObjectResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ObjectInfo
    def __init__(self, info: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("bucket_name", "object_key", "version_id")
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    object_key: str
    version_id: str
    def __init__(self, bucket_name: _Optional[str] = ..., object_key: _Optional[str] = ..., version_id: _Optional[str] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ("version_id", "delete_marker")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    DELETE_MARKER_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    delete_marker: bool
    def __init__(self, version_id: _Optional[str] = ..., delete_marker: _Optional[bool] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("bucket_name", "prefix", "delimiter", "max_keys", "page_token")
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    prefix: str
    delimiter: str
    max_keys: int
    page_token: str
    def __init__(self, bucket_name: _Optional[str] = ..., prefix: _Optional[str] = ..., delimiter: _Optional[str] = ..., max_keys: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects", "common_prefixes", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    COMMON_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    common_prefixes: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ..., common_prefixes: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListObjectVersionsRequest(_message.Message):
    __slots__ = ("bucket_name", "prefix", "max_keys", "page_token")
    BUCKET_NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bucket_name: str
    prefix: str
    max_keys: int
    page_token: str
    def __init__(self, bucket_name: _Optional[str] = ..., prefix: _Optional[str] = ..., max_keys: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ObjectVersion(_message.Message):
    __slots__ = ("info", "is_latest", "delete_marker")
    INFO_FIELD_NUMBER: _ClassVar[int]
    IS_LATEST_FIELD_NUMBER: _ClassVar[int]
    DELETE_MARKER_FIELD_NUMBER: _ClassVar[int]
    info: ObjectInfo
    is_latest: bool
    delete_marker: bool
    def __init__(self, info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., is_latest: _Optional[bool] = ..., delete_marker: _Optional[bool] = ...) -> None: ...

class ListObjectVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ObjectVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ObjectVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
