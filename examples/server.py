"""An anvil-trio server embedded in a Trio program.

Run it with the defaults (data under ./anvil-data, listening on 127.0.0.1:50051)::

    python examples/server.py

or give another address, e.g. ``python examples/server.py 127.0.0.1:0`` for any free port.
Set up a tenant and an app with ``anvil-trio admin --data-dir anvil-data ...`` (also while this
runs). Ctrl-C (SIGINT) or SIGTERM drains the server: calls in flight get the configured grace
period, storage stops in order, and the program exits with status 0.
"""

from __future__ import annotations

import signal
import sys

import trio

import anvil_trio


async def main(listen: str | None = None) -> None:
    config = anvil_trio.Config()
    if listen is not None:
        config = anvil_trio.Config.from_mapping({"listen": listen})

    # While the receiver is open, SIGINT and SIGTERM arrive here instead of raising
    # KeyboardInterrupt in the middle of whatever the server is doing.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(anvil_trio.serve, config)
            print(f"anvil-trio example listening on {config.host}:{port} "
                  f"(data dir {config.data_dir}); Ctrl-C stops it", flush=True)

            async for signum in signals:
                print(f"{signal.Signals(signum).name}: draining", file=sys.stderr, flush=True)
                # Cancelling the nursery cancels serve(), which drains before it returns.
                nursery.cancel_scope.cancel()
                break
    print("stopped", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, *sys.argv[1:2])
    except KeyboardInterrupt:
        # Ctrl-C while the signal receiver was not open (during start-up, or a second one
        # that waited for the drain to finish): nothing is left running.
        print("interrupted", file=sys.stderr)
    except anvil_trio.ConfigError as exc:
        sys.exit(f"bad address: {exc}")
