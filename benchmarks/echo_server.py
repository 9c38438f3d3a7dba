"""A bare purerpc echo server: the baseline later benchmarks compare the real server against.

No storage, no auth, no edge wrapper: plain ``purerpc.Server`` serving
``grpc.health.v1.Health`` from the generated protos, where ``Check`` echoes at once and
``Watch`` streams ``count`` responses (``count`` taken from the length of the ``service``
field), so unary and server-streaming round trips can both be measured with any gRPC client.

Run: ``python benchmarks/echo_server.py [--port 50061]`` (prints the port, then serves until
Ctrl-C). Measure the edge on the same workload with ``--edge``, which serves the same
servicer through ``anvil_trio.rpc.EdgeServer`` instead.
"""

from __future__ import annotations

import argparse
import sys

import purerpc
import trio

from anvil_trio._proto.grpc.health.v1 import health_grpc, health_pb2

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class EchoHealth(health_grpc.HealthServicer):
    """Answers every Check with SERVING; Watch streams len(service) SERVING messages."""

    async def Check(self, input_message):  # noqa: N802 - gRPC method name
        return _SERVING

    async def Watch(self, input_message):  # noqa: N802 - gRPC method name
        for _ in range(len(input_message.service)):
            yield _SERVING


async def run_bare(port: int) -> None:
    """Serve with purerpc's own server (binds all interfaces, as purerpc does)."""
    server = purerpc.Server(port=port)
    server.add_service(EchoHealth().service)
    async with trio.open_nursery() as nursery:
        actual = await nursery.start(server.serve_async)
        print(f"bare purerpc echo server on port {actual}", flush=True)


async def run_edge(port: int) -> None:
    """Serve the same servicer through the anvil_trio edge on 127.0.0.1."""
    from anvil_trio.rpc import EdgeConfig, EdgeServer

    server = EdgeServer([EchoHealth()], config=EdgeConfig(port=port))
    async with trio.open_nursery() as nursery:
        actual = await nursery.start(server.serve)
        print(f"edge echo server on 127.0.0.1:{actual}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--edge", action="store_true", help="serve through EdgeServer")
    args = parser.parse_args(argv)
    try:
        trio.run(run_edge if args.edge else run_bare, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
