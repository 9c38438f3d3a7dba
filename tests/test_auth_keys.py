"""Tests for anvil_trio.auth keys: the key ring, the 0600 key file, rotation and reloading."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio

from anvil_trio.auth import (
    KEY_FILE_NAME,
    KeyFileError,
    KeyFileMonitor,
    KeyRing,
    SigningKey,
    load_keyring,
    load_or_create_keyring,
    rotate_keyring,
)

T0 = 1_700_000_000.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    """A new key file is private to its owner even under a permissive umask."""
    path = tmp_path / KEY_FILE_NAME
    old = os.umask(0)
    try:
        ring = load_or_create_keyring(path, now=T0)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert len(ring.keys) == 1 and len(ring.signing_key.secret) == 32
    assert ring.signing_key.created_at == T0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_key_file_is_reused_across_restarts(tmp_path: Path) -> None:
    """Loading again (a restart) gives the same keys, so old tokens keep verifying."""
    path = tmp_path / KEY_FILE_NAME
    first = load_or_create_keyring(path, now=T0)
    again = load_or_create_keyring(path, now=T0 + 100)
    assert again == first
    assert load_keyring(path) == first


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o007])
def test_loose_permissions_are_refused(tmp_path: Path, mode: int) -> None:
    """A key file readable or writable by group or others is refused with KeyFileError."""
    path = tmp_path / KEY_FILE_NAME
    load_or_create_keyring(path, now=T0)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keyring(path)
    with pytest.raises(KeyFileError):
        load_or_create_keyring(path)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        json.dumps({"format": "other", "version": 1, "keys": []}),
        json.dumps({"format": "anvil-trio-jwt-keys", "version": 1, "keys": []}),
        json.dumps({"format": "anvil-trio-jwt-keys", "version": 2, "keys": []}),
        json.dumps(
            {
                "format": "anvil-trio-jwt-keys",
                "version": 1,
                "keys": [{"kid": "a", "alg": "HS256", "secret": "c2hvcnQ=", "created_at": 0}],
            }
        ),
        json.dumps(
            {
                "format": "anvil-trio-jwt-keys",
                "version": 1,
                "keys": [{"kid": "a", "alg": "RS256", "secret": "A" * 44, "created_at": 0}],
            }
        ),
        json.dumps(
            {
                "format": "anvil-trio-jwt-keys",
                "version": 1,
                "keys": [
                    {"kid": "a", "alg": "HS256", "secret": "A" * 44, "created_at": 0},
                    {"kid": "a", "alg": "HS256", "secret": "B" * 44, "created_at": 1},
                ],
            }
        ),
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: str) -> None:
    """Garbage, unknown formats, short or non-HS256 keys and duplicate kids are KeyFileError."""
    path = tmp_path / KEY_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError):
        load_keyring(path)


def test_missing_key_file_is_refused_by_load(tmp_path: Path) -> None:
    """load_keyring does not create files; a missing file is a KeyFileError."""
    with pytest.raises(KeyFileError):
        load_keyring(tmp_path / KEY_FILE_NAME)
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_rotation_keeps_old_keys_and_signs_with_the_new(tmp_path: Path) -> None:
    """After rotation the newest key signs and the previous one still verifies."""
    path = tmp_path / KEY_FILE_NAME
    first = load_or_create_keyring(path, now=T0)
    rotated = rotate_keyring(path, now=T0 + 60, retire_after=3600)
    assert _mode(path) == 0o600
    assert load_keyring(path) == rotated
    assert [k.kid for k in rotated.keys][:1] == [first.signing_key.kid]
    assert rotated.signing_key.kid != first.signing_key.kid
    assert rotated.get(first.signing_key.kid) == first.signing_key
    assert rotated.signing_key.created_at == T0 + 60


def test_rotation_drops_keys_retired_long_enough(tmp_path: Path) -> None:
    """A key replaced more than retire_after seconds ago is dropped at the next rotation."""
    path = tmp_path / KEY_FILE_NAME
    k1 = load_or_create_keyring(path, now=T0).signing_key
    k2 = rotate_keyring(path, now=T0 + 10, retire_after=100).signing_key
    ring = rotate_keyring(path, now=T0 + 50, retire_after=100)
    assert [k.kid for k in ring.keys] == [k1.kid, k2.kid, ring.signing_key.kid]
    ring = rotate_keyring(path, now=T0 + 111, retire_after=100)
    assert ring.get(k1.kid) is None
    assert ring.get(k2.kid) == k2
    assert len(ring.keys) == 3


def test_rotate_creates_missing_file(tmp_path: Path) -> None:
    """Rotating with no key file creates one and then rotates it (two keys)."""
    ring = rotate_keyring(tmp_path / KEY_FILE_NAME, now=T0)
    assert len(ring.keys) == 2


def test_ring_from_configured_secrets() -> None:
    """Configured keys: the last signs, str secrets are UTF-8, short or duplicate keys fail."""
    ring = KeyRing.from_secrets([("old", b"o" * 32), ("new", "n" * 40)])
    assert ring.signing_key.kid == "new" and ring.signing_key.secret == b"n" * 40
    assert ring.get("old") is not None and ring.get("nope") is None
    with pytest.raises(ValueError):
        KeyRing.from_secrets([("k", "too short")])
    with pytest.raises(ValueError):
        KeyRing.from_secrets([("k", b"x" * 32), ("k", b"y" * 32)])
    with pytest.raises(ValueError):
        KeyRing.from_secrets([])
    with pytest.raises(ValueError):
        KeyRing.from_secrets([("bad kid", b"x" * 32)])


def test_secrets_never_show_in_repr() -> None:
    """repr of keys and rings does not contain key material."""
    key = SigningKey("k1", b"\x01" * 32)
    assert "secret" not in repr(key) and "\\x01" not in repr(key)
    assert "\\x01" not in repr(KeyRing((key,)))


def test_json_round_trip() -> None:
    """A ring survives its own file format exactly."""
    ring = KeyRing.generate(now=T0).rotated(now=T0 + 1)
    assert KeyRing.from_json(ring.to_json()) == ring


def test_monitor_reports_changes_once(tmp_path: Path) -> None:
    """KeyFileMonitor returns the ring on first poll and after a rotation, else None."""
    path = tmp_path / KEY_FILE_NAME
    first = load_or_create_keyring(path, now=T0)
    monitor = KeyFileMonitor(path)
    assert monitor.poll() == first
    assert monitor.poll() is None
    rotated = rotate_keyring(path, now=T0 + 5)
    assert monitor.poll() == rotated
    assert monitor.poll() is None
    path.unlink()
    with pytest.raises(KeyFileError):
        monitor.poll()


def test_existing_file_wins_a_creation_race(tmp_path: Path) -> None:
    """If another process created the file first, its keys are returned, not new ones."""
    path = tmp_path / KEY_FILE_NAME
    theirs = KeyRing.generate(now=T0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, theirs.to_json().encode())
    os.close(fd)
    assert load_or_create_keyring(path, now=T0 + 1) == theirs


async def test_concurrent_creation_yields_one_ring(tmp_path: Path) -> None:
    """Several threads creating the key file at once all end up with the same ring."""
    path = tmp_path / KEY_FILE_NAME
    rings: list[KeyRing] = []

    async def create() -> None:
        rings.append(await trio.to_thread.run_sync(load_or_create_keyring, path))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(create)
    assert len(rings) == 8 and all(r == rings[0] for r in rings)
    assert load_keyring(path) == rings[0]


def test_ring_from_one_configured_key_has_a_stable_kid() -> None:
    """Nodes configured with the same key derive the same kid; other keys get other kids."""
    a = KeyRing.from_secret("s" * 40)
    b = KeyRing.from_secret(b"s" * 40)
    assert a == b and a.signing_key.kid.startswith("cfg-")
    assert KeyRing.from_secret("t" * 40).signing_key.kid != a.signing_key.kid
    assert KeyRing.from_secret("s" * 40, kid="main").signing_key.kid == "main"
    with pytest.raises(ValueError):
        KeyRing.from_secret("short")
