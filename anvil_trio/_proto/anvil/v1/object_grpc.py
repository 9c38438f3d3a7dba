import purerpc
from anvil_trio._proto.anvil.v1 import object_pb2 as anvil_dot_v1_dot_object__pb2
from anvil_trio._proto.anvil.v1 import common_pb2 as anvil_dot_v1_dot_common__pb2
import google.protobuf.timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2


class ObjectServiceServicer(purerpc.Servicer):
    async def PutObject(self, input_messages):
        raise NotImplementedError()

    async def GetObject(self, input_message):
        raise NotImplementedError()

    async def HeadObject(self, input_message):
        raise NotImplementedError()

    async def DeleteObject(self, input_message):
        raise NotImplementedError()

    async def ListObjects(self, input_message):
        raise NotImplementedError()

    async def ListObjectVersions(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "anvil.v1.ObjectService"
        )
        service_obj.add_method(
            "PutObject",
            self.PutObject,
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_UNARY,
                anvil_dot_v1_dot_object__pb2.PutObjectRequest,
                anvil_dot_v1_dot_object__pb2.PutObjectResponse,
            )
        )
        service_obj.add_method(
            "GetObject",
            self.GetObject,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_object__pb2.GetObjectRequest,
                anvil_dot_v1_dot_object__pb2.GetObjectResponse,
            )
        )
        service_obj.add_method(
            "HeadObject",
            self.HeadObject,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.HeadObjectRequest,
                anvil_dot_v1_dot_object__pb2.HeadObjectResponse,
            )
        )
        service_obj.add_method(
            "DeleteObject",
            self.DeleteObject,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.DeleteObjectRequest,
                anvil_dot_v1_dot_object__pb2.DeleteObjectResponse,
            )
        )
        service_obj.add_method(
            "ListObjects",
            self.ListObjects,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.ListObjectsRequest,
                anvil_dot_v1_dot_object__pb2.ListObjectsResponse,
            )
        )
        service_obj.add_method(
            "ListObjectVersions",
            self.ListObjectVersions,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.ListObjectVersionsRequest,
                anvil_dot_v1_dot_object__pb2.ListObjectVersionsResponse,
            )
        )
        return service_obj


class ObjectServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "anvil.v1.ObjectService",
            channel
        )
        self.PutObject = self._client.get_method_stub(
            "PutObject",
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_UNARY,
                anvil_dot_v1_dot_object__pb2.PutObjectRequest,
                anvil_dot_v1_dot_object__pb2.PutObjectResponse,
            )
        )
        self.GetObject = self._client.get_method_stub(
            "GetObject",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_object__pb2.GetObjectRequest,
                anvil_dot_v1_dot_object__pb2.GetObjectResponse,
            )
        )
        self.HeadObject = self._client.get_method_stub(
            "HeadObject",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.HeadObjectRequest,
                anvil_dot_v1_dot_object__pb2.HeadObjectResponse,
            )
        )
        self.DeleteObject = self._client.get_method_stub(
            "DeleteObject",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.DeleteObjectRequest,
                anvil_dot_v1_dot_object__pb2.DeleteObjectResponse,
            )
        )
        self.ListObjects = self._client.get_method_stub(
            "ListObjects",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.ListObjectsRequest,
                anvil_dot_v1_dot_object__pb2.ListObjectsResponse,
            )
        )
        self.ListObjectVersions = self._client.get_method_stub(
            "ListObjectVersions",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_object__pb2.ListObjectVersionsRequest,
                anvil_dot_v1_dot_object__pb2.ListObjectVersionsResponse,
            )
        )
