"""A tour of ``anvil_trio.client.AnvilClient`` against a running server.

Start a server and an app first, e.g.::

    anvil-trio admin --data-dir ./anvil-data tenant create demo
    anvil-trio admin --data-dir ./anvil-data app create --tenant demo --name tour --json
    anvil-trio admin --data-dir ./anvil-data policy grant --app CLIENT_ID '*:*'
    anvil-trio serve --data-dir ./anvil-data

then::

    python examples/client.py --client-id CLIENT_ID --client-secret SECRET

(or set ``ANVIL_CLIENT_ID`` / ``ANVIL_CLIENT_SECRET``). The tour creates a bucket, uploads a
file, downloads it and checks its SHA-256, uploads a blob, then interrupts a blob upload on
purpose and resumes it with its ``upload_id``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

from anvil_trio.client import AlreadyExistsError, AnvilClient, AnvilError, UploadProgress

MiB = 1 << 20


def say(text: str) -> None:
    print(f"[client] {text}", flush=True)


async def interrupted_then_resumed(client: AnvilClient, data: bytes) -> None:
    """Upload ``data`` as a blob, cut the stream once the server holds some of it, resume."""
    half = len(data) // 2
    release = trio.Event()

    async def first_half_then_stall():
        yield data[:half]
        await release.wait()  # never set: the stream is cut while we wait here
        yield data[half:]

    seen: list[UploadProgress] = []
    with trio.move_on_after(10) as cut:

        def on_progress(progress: UploadProgress) -> None:
            seen.append(progress)
            if progress.received_bytes > 0:
                cut.cancel()  # interrupt on purpose: the server keeps what it acknowledged

        await client.upload_blob(first_half_then_stall(), size=len(data), on_progress=on_progress)
    if not seen:
        raise SystemExit("the upload never started")
    upload_id = seen[-1].upload_id
    say(f"interrupted upload {upload_id} after the server acknowledged "
        f"{seen[-1].received_bytes} of {len(data)} bytes")
    resumed: list[UploadProgress] = []
    result = await client.upload_blob(data, upload_id=upload_id, on_progress=resumed.append)
    say(f"resumed upload {upload_id}: the server already held {resumed[0].received_bytes} bytes; "
        f"finished as {result.key} ({result.size} bytes)")
    if result.key != f"sha256:{hashlib.sha256(data).hexdigest()}":
        raise SystemExit("the resumed blob has the wrong key")


async def tour(args: argparse.Namespace) -> None:
    say(f"connecting to {args.host}:{args.port} as {args.client_id}")
    async with AnvilClient.connect(
        args.host, args.port, client_id=args.client_id, client_secret=args.client_secret
    ) as client:
        say(f"health: {await client.health_check()}; token scopes: {list(client.granted_scopes)}")
        try:
            await client.create_bucket(args.bucket)
            say(f"created bucket {args.bucket!r}")
        except AlreadyExistsError:
            say(f"bucket {args.bucket!r} already exists")

        with tempfile.TemporaryDirectory() as workdir:
            source = Path(workdir) / "upload.bin"
            source.write_bytes(os.urandom(args.size_mib * MiB))
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            started = time.perf_counter()
            put = await client.put_object(args.bucket, "tour/upload.bin", source,
                                          content_type="application/octet-stream",
                                          user_metadata={"origin": "examples/client.py"})
            say(f"uploaded {source.name} ({put.size} bytes) in "
                f"{time.perf_counter() - started:.2f}s: etag {put.etag[:16]}..., "
                f"version {put.version_id}")
            target = Path(workdir) / "download.bin"
            info = await client.download_object(args.bucket, "tour/upload.bin", target)
            ok = hashlib.sha256(target.read_bytes()).hexdigest() == digest == info.etag
            say(f"downloaded to {target.name}: sha256 {'matches' if ok else 'DIFFERS'}")
            if not ok:
                raise SystemExit(1)

        listing = [o.key async for o in client.iter_objects(args.bucket, prefix="tour/")]
        say(f"objects under tour/: {listing}")

        blob = await client.upload_blob(b"hello, blobs\n" * 1000,
                                        attributes={"content-type": "text/plain"})
        say(f"uploaded blob {blob.key} ({blob.size} bytes, deduplicated={blob.deduplicated})")
        stat = await client.stat_blob(blob.key)
        say(f"blob content type {stat.content_type!r}, created {stat.created_at}")

        await interrupted_then_resumed(client, os.urandom(4 * MiB))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the tour; returns the exit status."""
    parser = argparse.ArgumentParser(description="A tour of the anvil_trio client.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--client-id", default=os.environ.get("ANVIL_CLIENT_ID"))
    parser.add_argument("--client-secret", default=os.environ.get("ANVIL_CLIENT_SECRET"))
    parser.add_argument("--bucket", default="tour")
    parser.add_argument("--size-mib", type=int, default=8, help="size of the uploaded file")
    args = parser.parse_args(argv)
    if not args.client_id or not args.client_secret:
        parser.error("give --client-id/--client-secret or set ANVIL_CLIENT_ID/ANVIL_CLIENT_SECRET")
    try:
        trio.run(tour, args)
    except AnvilError as exc:
        print(f"[client] failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
