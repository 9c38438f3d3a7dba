import purerpc
from anvil_trio._proto.anvil.v1 import bucket_pb2 as anvil_dot_v1_dot_bucket__pb2
import google.protobuf.timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2


class BucketServiceServicer(purerpc.Servicer):
    async def CreateBucket(self, input_message):
        raise NotImplementedError()

    async def DeleteBucket(self, input_message):
        raise NotImplementedError()

    async def ListBuckets(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "anvil.v1.BucketService"
        )
        service_obj.add_method(
            "CreateBucket",
            self.CreateBucket,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.CreateBucketRequest,
                anvil_dot_v1_dot_bucket__pb2.Bucket,
            )
        )
        service_obj.add_method(
            "DeleteBucket",
            self.DeleteBucket,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.DeleteBucketRequest,
                anvil_dot_v1_dot_bucket__pb2.DeleteBucketResponse,
            )
        )
        service_obj.add_method(
            "ListBuckets",
            self.ListBuckets,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.ListBucketsRequest,
                anvil_dot_v1_dot_bucket__pb2.ListBucketsResponse,
            )
        )
        return service_obj


class BucketServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "anvil.v1.BucketService",
            channel
        )
        self.CreateBucket = self._client.get_method_stub(
            "CreateBucket",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.CreateBucketRequest,
                anvil_dot_v1_dot_bucket__pb2.Bucket,
            )
        )
        self.DeleteBucket = self._client.get_method_stub(
            "DeleteBucket",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.DeleteBucketRequest,
                anvil_dot_v1_dot_bucket__pb2.DeleteBucketResponse,
            )
        )
        self.ListBuckets = self._client.get_method_stub(
            "ListBuckets",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_bucket__pb2.ListBucketsRequest,
                anvil_dot_v1_dot_bucket__pb2.ListBucketsResponse,
            )
        )
