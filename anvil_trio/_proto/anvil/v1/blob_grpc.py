import purerpc
from anvil_trio._proto.anvil.v1 import blob_pb2 as anvil_dot_v1_dot_blob__pb2
from anvil_trio._proto.anvil.v1 import common_pb2 as anvil_dot_v1_dot_common__pb2
import google.protobuf.timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2


class BlobServiceServicer(purerpc.Servicer):
    async def GetBlob(self, input_message):
        raise NotImplementedError()

    async def StatBlob(self, input_message):
        raise NotImplementedError()

    async def DeleteBlob(self, input_message):
        raise NotImplementedError()

    async def ListBlobs(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "anvil.v1.BlobService"
        )
        service_obj.add_method(
            "GetBlob",
            self.GetBlob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_blob__pb2.GetBlobRequest,
                anvil_dot_v1_dot_blob__pb2.BlobChunk,
            )
        )
        service_obj.add_method(
            "StatBlob",
            self.StatBlob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_blob__pb2.StatBlobRequest,
                anvil_dot_v1_dot_blob__pb2.BlobMetadata,
            )
        )
        service_obj.add_method(
            "DeleteBlob",
            self.DeleteBlob,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_blob__pb2.DeleteBlobRequest,
                anvil_dot_v1_dot_blob__pb2.DeleteBlobResponse,
            )
        )
        service_obj.add_method(
            "ListBlobs",
            self.ListBlobs,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_blob__pb2.ListBlobsRequest,
                anvil_dot_v1_dot_blob__pb2.BlobMetadata,
            )
        )
        return service_obj


class BlobServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "anvil.v1.BlobService",
            channel
        )
        self.GetBlob = self._client.get_method_stub(
            "GetBlob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_blob__pb2.GetBlobRequest,
                anvil_dot_v1_dot_blob__pb2.BlobChunk,
            )
        )
        self.StatBlob = self._client.get_method_stub(
            "StatBlob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_blob__pb2.StatBlobRequest,
                anvil_dot_v1_dot_blob__pb2.BlobMetadata,
            )
        )
        self.DeleteBlob = self._client.get_method_stub(
            "DeleteBlob",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_blob__pb2.DeleteBlobRequest,
                anvil_dot_v1_dot_blob__pb2.DeleteBlobResponse,
            )
        )
        self.ListBlobs = self._client.get_method_stub(
            "ListBlobs",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                anvil_dot_v1_dot_blob__pb2.ListBlobsRequest,
                anvil_dot_v1_dot_blob__pb2.BlobMetadata,
            )
        )
