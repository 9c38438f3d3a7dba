from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartUpload(_message.Message):
    __slots__ = ("total_size", "attributes", "upload_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    attributes: _containers.ScalarMap[str, str]
    upload_id: str
    def __init__(self, total_size: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., upload_id: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("data", "offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class CompleteUpload(_message.Message):
    __slots__ = ("expected_hash",)
    EXPECTED_HASH_FIELD_NUMBER: _ClassVar[int]
    expected_hash: bytes
    def __init__(self, expected_hash: _Optional[bytes] = ...) -> None: ...

class UploadMessage(_message.Message):
    __slots__ = ("start", "chunk", "complete")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    start: StartUpload
    chunk: UploadChunk
    complete: CompleteUpload
    def __init__(self, start: _Optional[_Union[StartUpload, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ..., complete: _Optional[_Union[CompleteUpload, _Mapping]] = ...) -> None: ...

class UploadComplete(_message.Message):
    __slots__ = ("key", "size", "deduplicated")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    size: int
    deduplicated: bool
    def __init__(self, key: _Optional[bytes] = ..., size: _Optional[int] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("upload_id", "received_bytes", "complete")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    received_bytes: int
    complete: UploadComplete
    def __init__(self, upload_id: _Optional[str] = ..., received_bytes: _Optional[int] = ..., complete: _Optional[_Union[UploadComplete, _Mapping]] = ...) -> None: ...
