"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), so that generic clients
such as ``grpcurl`` list, describe and call our services with no ``.proto`` files.

The answers come from the protobuf descriptor pool the generated ``*_pb2`` modules registered
their files in (``google.protobuf.descriptor_pool.Default()``), looked up by the full names of
the services being served. :class:`ReflectionIndex` is the pure core: built once, it answers one
``ServerReflectionRequest`` at a time without I/O; the two servicers only drive a stream of
requests through it.

Invariants:

* The index is immutable once built. It describes exactly the files that define a served
  service and, transitively, the files those import (e.g. ``google/protobuf/timestamp.proto``);
  any other file or symbol, even one present in the pool, is ``NOT_FOUND``.
* ``list_services`` names every service being served, sorted, reflection itself included, even
  one whose descriptors are not in the pool (it can be called, only not described).
* Every request on a ``ServerReflectionInfo`` stream gets exactly one response, in order, carrying
  the request as ``original_request`` and its ``host`` as ``valid_host``. A question that cannot
  be answered gets an ``error_response`` (``NOT_FOUND`` = 5 for an unknown file, symbol, type or
  extension; ``INVALID_ARGUMENT`` = 3 for a request with no question set) and the stream goes on;
  the call itself ends ``OK`` when the client half-closes.
* A file descriptor response holds the file asked for first, then each of its transitive
  dependencies exactly once (serialized ``FileDescriptorProto``), on every response: no state is
  kept between the requests of a stream, so any client cache strategy works.
* ``v1`` and ``v1alpha`` share the core and differ only in their message classes.
* Reflection needs no token: like health, it carries no data, and the service handlers of this
  package authenticate themselves (``_common.principal``), which these servicers never call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType, ModuleType

import attrs
import purerpc
from google.protobuf import descriptor_pool as _descriptor_pool
from purerpc import StatusCode

from .._proto.grpc.reflection.v1 import reflection_grpc as v1_grpc
from .._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from .._proto.grpc.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from .._proto.grpc.reflection.v1alpha import reflection_pb2 as v1alpha_pb2

__all__ = [
    "REFLECTION_SERVICES",
    "ReflectionIndex",
    "ReflectionLookupError",
    "ReflectionV1AlphaServicer",
    "ReflectionV1Servicer",
    "default_reflection_servicers",
]

#: The full names of the two reflection services, newest first.
REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


class ReflectionLookupError(LookupError):
    """A reflection question has no answer; becomes that response's ``error_response``.

    Args:
        code: the gRPC status to report (``NOT_FOUND`` unless said otherwise).
        message: what was not found, for the client.
    """

    def __init__(self, message: str, code: StatusCode = StatusCode.NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _service_name(item: purerpc.Service | purerpc.Servicer) -> str:
    return (item.service if isinstance(item, purerpc.Servicer) else item).name


def _scope_of(full_name: str) -> str:
    """``a.b.C`` -> ``a.b`` (``""`` for a name without a dot)."""
    return full_name.rpartition(".")[0]


def _read_only(table: Mapping) -> Mapping:
    return MappingProxyType(dict(table))


@attrs.frozen
class ReflectionIndex:
    """Everything reflection can say about a set of served services, precomputed.

    Build it with :meth:`build`; the fields are the lookup tables it answers from.
    """

    #: Served service names, sorted (with or without descriptors).
    services: tuple[str, ...]
    #: File name -> serialized ``FileDescriptorProto``, for every described file.
    files: Mapping[str, bytes] = attrs.field(converter=_read_only)
    #: File name -> that file's transitive dependencies in first-reached order (itself excluded).
    dependencies: Mapping[str, tuple[str, ...]] = attrs.field(converter=_read_only)
    #: Fully-qualified symbol (no leading dot) -> name of the file that defines it.
    symbols: Mapping[str, str] = attrs.field(converter=_read_only)
    #: Message type name -> name of the file that defines it.
    messages: Mapping[str, str] = attrs.field(converter=_read_only)
    #: (extended message type, field number) -> name of the file that defines the extension.
    extensions: Mapping[tuple[str, int], str] = attrs.field(converter=_read_only)

    @classmethod
    def build(
        cls,
        service_names: Iterable[str],
        *,
        pool: _descriptor_pool.DescriptorPool | None = None,
    ) -> ReflectionIndex:
        """Index the files that define ``service_names`` and everything they import.

        Args:
            service_names: full names of the served services (duplicates are fine).
            pool: where the descriptors live; default the pool generated modules register in.

        Returns:
            The index. A name the pool does not know is still listed, just not described.
        """
        pool = pool if pool is not None else _descriptor_pool.Default()
        services = tuple(sorted(set(service_names)))
        roots = []
        for name in services:
            try:
                roots.append(pool.FindServiceByName(name).file)
            except KeyError:
                continue
        every: dict[str, object] = {}
        pending = list(roots)
        while pending:
            file = pending.pop()
            if file.name not in every:
                every[file.name] = file
                pending.extend(file.dependencies)
        builder = _Builder()
        for file in every.values():
            builder.add_file(file)
        return cls(
            services=services,
            files={name: file.serialized_pb for name, file in every.items()},
            dependencies={name: _closure(file) for name, file in every.items()},
            symbols=builder.symbols,
            messages=builder.messages,
            extensions=builder.extensions,
        )

    # --- lookups (each raises ReflectionLookupError when there is no answer) ---

    def file_by_filename(self, filename: str) -> list[bytes]:
        """The serialized file ``filename``, then its transitive dependencies.

        Raises:
            ReflectionLookupError: the file is not one this index describes.
        """
        if filename not in self.files:
            raise ReflectionLookupError(f"file {filename!r} not found")
        return [self.files[filename]] + [self.files[dep] for dep in self.dependencies[filename]]

    def file_containing_symbol(self, symbol: str) -> list[bytes]:
        """The file defining ``symbol`` (a service, method, message, field, oneof, enum, enum
        value or extension; nested names included; a leading dot is ignored), then its
        dependencies.

        Raises:
            ReflectionLookupError: no described file defines the symbol.
        """
        filename = self.symbols.get(symbol.removeprefix("."))
        if filename is None:
            raise ReflectionLookupError(f"symbol {symbol!r} not found")
        return self.file_by_filename(filename)

    def file_containing_extension(self, containing_type: str, number: int) -> list[bytes]:
        """The file declaring extension field ``number`` of message ``containing_type``, then its
        dependencies.

        Raises:
            ReflectionLookupError: the type is unknown or has no such extension.
        """
        type_name = containing_type.removeprefix(".")
        filename = self.extensions.get((type_name, number))
        if filename is None:
            raise ReflectionLookupError(
                f"extension {number} of {containing_type!r} not found"
            )
        return self.file_by_filename(filename)

    def extension_numbers(self, containing_type: str) -> tuple[str, list[int]]:
        """The type's full name and the field numbers of its known extensions, ascending
        (empty for a message nobody extends).

        Raises:
            ReflectionLookupError: ``containing_type`` is not a described message type.
        """
        type_name = containing_type.removeprefix(".")
        if type_name not in self.messages:
            raise ReflectionLookupError(f"message type {containing_type!r} not found")
        numbers = sorted(n for (extended, n) in self.extensions if extended == type_name)
        return type_name, numbers

    # --- one request, one response ---

    def answer(self, request, messages: ModuleType):
        """Answer one ``ServerReflectionRequest`` (pure; never raises for a bad question).

        Args:
            request: a ``ServerReflectionRequest`` of either protocol version.
            messages: the ``reflection_pb2`` module of that version (to build the response).

        Returns:
            The ``ServerReflectionResponse``: the answer, or an ``error_response`` with code
            ``NOT_FOUND`` (nothing matches) or ``INVALID_ARGUMENT`` (no question set).
        """
        response = messages.ServerReflectionResponse(valid_host=request.host)
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(
                    messages.ServiceResponse(name=name) for name in self.services
                )
            elif kind == "all_extension_numbers_of_type":
                base, numbers = self.extension_numbers(request.all_extension_numbers_of_type)
                reply = response.all_extension_numbers_response
                reply.base_type_name = base
                reply.extension_number.extend(numbers)
            else:
                if kind == "file_by_filename":
                    found = self.file_by_filename(request.file_by_filename)
                elif kind == "file_containing_symbol":
                    found = self.file_containing_symbol(request.file_containing_symbol)
                elif kind == "file_containing_extension":
                    wanted = request.file_containing_extension
                    found = self.file_containing_extension(
                        wanted.containing_type, wanted.extension_number
                    )
                else:
                    raise ReflectionLookupError(
                        "the request sets no message_request", StatusCode.INVALID_ARGUMENT
                    )
                response.file_descriptor_response.file_descriptor_proto.extend(found)
        except ReflectionLookupError as missing:
            response.error_response.error_code = missing.code.value
            response.error_response.error_message = missing.message
        return response


def _closure(file) -> tuple[str, ...]:
    """Names of every file ``file`` imports, directly or not, each once, depth-first."""
    seen: dict[str, None] = {}
    pending = list(reversed(file.dependencies))
    while pending:
        dep = pending.pop()
        if dep.name == file.name or dep.name in seen:
            continue
        seen[dep.name] = None
        pending.extend(reversed(dep.dependencies))
    return tuple(seen)


@attrs.define
class _Builder:
    """Collects the symbol tables of files (mutable while :meth:`ReflectionIndex.build` runs)."""

    symbols: dict[str, str] = attrs.field(factory=dict)
    messages: dict[str, str] = attrs.field(factory=dict)
    extensions: dict[tuple[str, int], str] = attrs.field(factory=dict)

    def add_file(self, file) -> None:
        for service in file.services_by_name.values():
            self.symbols[service.full_name] = file.name
            for method in service.methods:
                self.symbols[method.full_name] = file.name
        for message in file.message_types_by_name.values():
            self._add_message(message, file.name)
        for enum in file.enum_types_by_name.values():
            self._add_enum(enum, file.name)
        for extension in file.extensions_by_name.values():
            self._add_extension(extension, file.name)

    def _add_message(self, message, filename: str) -> None:
        self.symbols[message.full_name] = filename
        self.messages[message.full_name] = filename
        for field in message.fields:
            self.symbols[field.full_name] = filename
        for oneof in message.oneofs:
            self.symbols[oneof.full_name] = filename
        for nested in message.nested_types:
            self._add_message(nested, filename)
        for enum in message.enum_types:
            self._add_enum(enum, filename)
        for extension in message.extensions:
            self._add_extension(extension, filename)

    def _add_enum(self, enum, filename: str) -> None:
        self.symbols[enum.full_name] = filename
        # Enum values are scoped like C++: siblings of their enum, not children.
        scope = _scope_of(enum.full_name)
        for value in enum.values:
            self.symbols[f"{scope}.{value.name}" if scope else value.name] = filename

    def _add_extension(self, extension, filename: str) -> None:
        self.symbols[extension.full_name] = filename
        self.extensions[(extension.containing_type.full_name, extension.number)] = filename


class _ReflectionStream:
    """The shared ``ServerReflectionInfo`` driver: each request through the index, in order."""

    index: ReflectionIndex
    _messages: ModuleType

    async def ServerReflectionInfo(self, input_messages) -> AsyncIterator:  # noqa: N802
        """Answer each request of the stream as it arrives; end when the client half-closes.

        Args:
            input_messages: the request stream (``ServerReflectionRequest``).

        Returns:
            An async iterator of ``ServerReflectionResponse``, one per request.
        """
        async for request in input_messages:
            yield self.index.answer(request, self._messages)


class ReflectionV1Servicer(_ReflectionStream, v1_grpc.ServerReflectionServicer):
    """purerpc servicer for ``grpc.reflection.v1.ServerReflection``.

    Args:
        index: what to answer from, e.g. ``ReflectionIndex.build(names)``.
    """

    _messages = v1_pb2

    def __init__(self, index: ReflectionIndex) -> None:
        self.index = index


class ReflectionV1AlphaServicer(_ReflectionStream, v1alpha_grpc.ServerReflectionServicer):
    """purerpc servicer for ``grpc.reflection.v1alpha.ServerReflection`` (older clients).

    Args:
        index: what to answer from, e.g. ``ReflectionIndex.build(names)``.
    """

    _messages = v1alpha_pb2

    def __init__(self, index: ReflectionIndex) -> None:
        self.index = index


_SERVICER_FOR = {
    REFLECTION_SERVICES[0]: ReflectionV1Servicer,
    REFLECTION_SERVICES[1]: ReflectionV1AlphaServicer,
}


def default_reflection_servicers(
    items: Iterable[purerpc.Service | purerpc.Servicer],
    *,
    pool: _descriptor_pool.DescriptorPool | None = None,
) -> list[purerpc.Servicer]:
    """The reflection servicers a server of ``items`` should add: one per protocol version not
    already among ``items``, over the names of ``items`` plus both reflection services.

    Args:
        items: the purerpc servicers or services the server will serve (health included).
        pool: descriptor pool to describe them from; default the generated modules' pool.

    Returns:
        Zero, one or two servicers to append to ``items`` (none if both versions are given).
    """
    served = {_service_name(item) for item in items}
    missing = [name for name in REFLECTION_SERVICES if name not in served]
    if not missing:
        return []
    index = ReflectionIndex.build(served | set(REFLECTION_SERVICES), pool=pool)
    return [_SERVICER_FOR[name](index) for name in missing]
