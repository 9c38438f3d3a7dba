import purerpc
from anvil_trio._proto.anvil.v1 import auth_pb2 as anvil_dot_v1_dot_auth__pb2


class AuthServiceServicer(purerpc.Servicer):
    async def GetAccessToken(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "anvil.v1.AuthService"
        )
        service_obj.add_method(
            "GetAccessToken",
            self.GetAccessToken,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_auth__pb2.GetAccessTokenRequest,
                anvil_dot_v1_dot_auth__pb2.GetAccessTokenResponse,
            )
        )
        return service_obj


class AuthServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "anvil.v1.AuthService",
            channel
        )
        self.GetAccessToken = self._client.get_method_stub(
            "GetAccessToken",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                anvil_dot_v1_dot_auth__pb2.GetAccessTokenRequest,
                anvil_dot_v1_dot_auth__pb2.GetAccessTokenResponse,
            )
        )
