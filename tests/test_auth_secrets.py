"""Tests for anvil_trio.auth secrets: generation, scrypt hashing at rest, verification."""

from __future__ import annotations

import hashlib
import re

import pytest
import trio

from anvil_trio.auth import (
    DEFAULT_SCRYPT,
    ScryptParams,
    dummy_verify,
    generate_client_id,
    generate_client_secret,
    hash_secret,
    parse_secret_hash,
    verify_secret,
)

FAST = ScryptParams(n=16, r=1, p=1)


def test_generated_ids_and_secrets_are_random_and_well_formed() -> None:
    """Client ids and secrets are unique and of the documented shape."""
    ids = {generate_client_id() for _ in range(50)}
    secrets_ = {generate_client_secret() for _ in range(50)}
    assert len(ids) == 50 and len(secrets_) == 50
    assert all(re.fullmatch(r"app_[0-9a-f]{20}", i) for i in ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", s) for s in secrets_)


def test_hash_round_trip_and_wrong_secrets() -> None:
    """A hash verifies its own secret and nothing else."""
    secret = generate_client_secret()
    stored = hash_secret(secret, params=FAST)
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret(secret[:-1], stored)
    assert not verify_secret("", stored)
    assert not verify_secret(secret.upper() if secret != secret.upper() else "x", stored)


def test_hash_format_carries_parameters_and_random_salt() -> None:
    """The hash is scrypt$N$r$p$SALT$HASH, never contains the secret, and is salted."""
    stored = hash_secret("hunter2-hunter2", params=ScryptParams(n=32, r=2, p=1))
    assert re.fullmatch(r"scrypt\$32\$2\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}", stored)
    assert "hunter2" not in stored
    assert stored != hash_secret("hunter2-hunter2", params=ScryptParams(n=32, r=2, p=1))
    params, salt, digest = parse_secret_hash(stored)
    assert (params.n, params.r, params.p, len(salt), len(digest)) == (32, 2, 1, 16, 32)


def test_hash_matches_plain_scrypt() -> None:
    """The stored digest is exactly hashlib.scrypt of the secret with the stored salt."""
    stored = hash_secret("s3cret", params=FAST)
    params, salt, digest = parse_secret_hash(stored)
    assert digest == hashlib.scrypt(b"s3cret", salt=salt, n=16, r=1, p=1, dklen=32)


def test_default_parameters_round_trip() -> None:
    """The default (production) parameters hash and verify."""
    stored = hash_secret("default-params")
    assert stored.startswith(f"scrypt${DEFAULT_SCRYPT.n}$8$1$")
    assert verify_secret("default-params", stored)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "bcrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$15$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$999$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$-1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$A",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$ä",
        "scrypt$１６$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_or_dangerous_hashes_are_rejected(bad: str) -> None:
    """Malformed hashes, and parameters that would exhaust memory, raise ValueError."""
    with pytest.raises(ValueError):
        verify_secret("anything", bad)


def test_overlong_secret_is_rejected_but_still_costs_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge presented secret fails, after the same one scrypt run as any other attempt."""
    stored = hash_secret("short", params=FAST)
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: object) -> bytes:
        calls.append(len(password))
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    assert not verify_secret("x" * 100_000, stored)
    assert len(calls) == 1 and calls[0] == 0


def test_dummy_verify_always_fails_after_equal_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """dummy_verify runs scrypt once with the given parameters and returns False."""
    seen: list[tuple[object, object, object]] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: object) -> bytes:
        seen.append((kwargs["n"], kwargs["r"], kwargs["p"]))
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    assert dummy_verify("whatever", params=FAST) is False
    assert seen == [(16, 1, 1)]


async def test_verification_runs_in_a_worker_thread() -> None:
    """verify_secret is usable from trio via to_thread (it does not need the trio thread)."""
    stored = hash_secret("in-thread", params=FAST)
    assert await trio.to_thread.run_sync(verify_secret, "in-thread", stored)


def test_scrypt_params_are_validated() -> None:
    """Parameters that are not a power of two or out of bounds are refused."""
    for kwargs in ({"n": 15}, {"n": 1}, {"n": 2**21}, {"r": 0}, {"p": 17}, {"salt_bytes": 4}):
        with pytest.raises(ValueError):
            ScryptParams(**kwargs)  # type: ignore[arg-type]
