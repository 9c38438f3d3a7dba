import purerpc
from anvil_trio._proto.anvil.v1 import upload_pb2 as anvil_dot_v1_dot_upload__pb2


class UploadServiceServicer(purerpc.Servicer):
    async def Upload(self, input_messages):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "anvil.v1.UploadService"
        )
        service_obj.add_method(
            "Upload",
            self.Upload,
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                anvil_dot_v1_dot_upload__pb2.UploadMessage,
                anvil_dot_v1_dot_upload__pb2.UploadAck,
            )
        )
        return service_obj


class UploadServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "anvil.v1.UploadService",
            channel
        )
        self.Upload = self._client.get_method_stub(
            "Upload",
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                anvil_dot_v1_dot_upload__pb2.UploadMessage,
                anvil_dot_v1_dot_upload__pb2.UploadAck,
            )
        )
