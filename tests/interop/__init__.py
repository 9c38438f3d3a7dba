"""The gRPC interop suite (grpc.testing.TestService) served by anvil_trio's edge."""
