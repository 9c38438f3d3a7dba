"""Tests for anvil_trio.auth's Authenticator: GetAccessToken, bearer verification, principals."""

from __future__ import annotations

import hashlib

import attrs
import pytest
import trio

from anvil_trio.auth import (
    AppRecord,
    Authenticator,
    InvalidResourceError,
    InvalidScopeError,
    KeyRing,
    PermissionDeniedError,
    ScryptParams,
    UnauthenticatedError,
    generate_client_id,
    generate_client_secret,
    hash_secret,
    required_scope_for,
)

FAST = ScryptParams(n=16, r=1, p=1)
T0 = 1_700_000_000.0
BLOB = "sha256:" + "0f" * 32


@attrs.define
class MemoryApps:
    """A dict-backed AppStore, the smallest real implementation of the protocol."""

    apps: dict[str, AppRecord] = attrs.Factory(dict)

    async def get_app(self, client_id: str) -> AppRecord | None:
        await trio.lowlevel.checkpoint()
        return self.apps.get(client_id)

    def add(self, tenant: str, scopes: list[str]) -> tuple[str, str]:
        client_id, secret = generate_client_id(), generate_client_secret()
        self.apps[client_id] = AppRecord(tenant, hash_secret(secret, params=FAST), scopes)
        return client_id, secret


def make(apps: MemoryApps, **kwargs: object) -> Authenticator:
    kwargs.setdefault("scrypt_params", FAST)
    return Authenticator(KeyRing.from_secrets([("k1", b"k" * 32)]), apps, **kwargs)  # type: ignore[arg-type]


async def test_issue_all_granted_scopes_and_verify() -> None:
    """No requested scopes: the token carries all grants; verify gives the principal back."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["read:bucket:photos/*", "list:bucket:photos"])
    auth = make(apps)
    issued = await auth.issue_token(cid, secret, [], now=T0)
    assert issued.token_type == "Bearer"
    assert issued.expires_in == 900
    assert issued.scopes == ("read:bucket:photos/*", "list:bucket:photos")
    assert issued.access_token not in repr(issued)
    principal = auth.verify(f"Bearer {issued.access_token}", now=T0 + 1)
    assert principal.client_id == cid and principal.tenant == "acme"
    assert principal.expires_at == T0 + 900
    assert principal.scopes.strings() == issued.scopes
    assert principal.token_id


async def test_issue_narrows_to_requested_scopes() -> None:
    """A requested scope narrower than a grant is issued; uncovered ones are dropped."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["read:bucket:photos/*"])
    auth = make(apps)
    issued = await auth.issue_token(
        cid, secret, ["read:bucket:photos/cat.jpg", "write:bucket:photos/cat.jpg"], now=T0
    )
    assert issued.scopes == ("read:bucket:photos/cat.jpg",)
    principal = auth.verify(f"Bearer {issued.access_token}", now=T0)
    assert principal.permits("read", "bucket:photos/cat.jpg")
    assert not principal.permits("read", "bucket:photos/dog.jpg")


async def test_wrong_secret_and_unknown_client_look_the_same() -> None:
    """A wrong secret and an unknown client id give the same UnauthenticatedError message."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps)
    with pytest.raises(UnauthenticatedError) as wrong:
        await auth.issue_token(cid, secret + "x", [])
    with pytest.raises(UnauthenticatedError) as unknown:
        await auth.issue_token("app_nope", secret, [])
    with pytest.raises(UnauthenticatedError) as empty:
        await auth.issue_token("", "", [])
    assert str(wrong.value) == str(unknown.value) == str(empty.value)


async def test_unknown_client_costs_one_equal_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown client id runs scrypt once with the same parameters as a real check (no
    timing oracle), and so does an app whose stored hash is corrupt."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    apps.apps["app_corrupt"] = AppRecord("acme", "scrypt$garbage", ["*:*"])
    calls: list[tuple[object, object, object]] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: object) -> bytes:
        calls.append((kwargs["n"], kwargs["r"], kwargs["p"]))
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    auth = make(apps)
    for client in (cid, "app_unknown", "app_corrupt"):
        with pytest.raises(UnauthenticatedError):
            await auth.issue_token(client, "wrong", [])
    assert calls == [(16, 1, 1)] * 3


async def test_verification_runs_off_the_trio_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt runs in a worker thread, not on the event loop thread."""
    import threading

    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    threads: list[threading.Thread] = []
    real = hashlib.scrypt

    def recording(password: bytes, **kwargs: object) -> bytes:
        threads.append(threading.current_thread())
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", recording)
    await make(apps).issue_token(cid, secret, [])
    assert threads and all(t is not threading.main_thread() for t in threads)


async def test_status_order_at_issue() -> None:
    """Bad credentials beat a bad scope (UNAUTHENTICATED first); then INVALID_ARGUMENT beats
    PERMISSION_DENIED; nothing covered is PERMISSION_DENIED."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["read:bucket:photos/*"])
    auth = make(apps)
    with pytest.raises(UnauthenticatedError):
        await auth.issue_token(cid, "wrong", ["not a scope"])
    with pytest.raises(InvalidScopeError):
        await auth.issue_token(cid, secret, ["write:bucket:other/x", "read:bucket:photos/a b"])
    with pytest.raises(PermissionDeniedError):
        await auth.issue_token(cid, secret, ["write:bucket:photos/x"])
    with pytest.raises(PermissionDeniedError):
        await auth.issue_token(cid, secret, ["read:bucket:photos"])


async def test_app_without_grants_is_denied() -> None:
    """An app with no grants cannot get a token (PERMISSION_DENIED)."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", [])
    with pytest.raises(PermissionDeniedError):
        await make(apps).issue_token(cid, secret, [])


async def test_grant_changes_apply_at_next_issue_but_old_tokens_live() -> None:
    """A revoke takes effect at the next GetAccessToken; a token issued before stays valid."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["read:bucket:photos/*", "list:bucket:photos"])
    auth = make(apps)
    before = await auth.issue_token(cid, secret, [], now=T0)
    apps.apps[cid] = attrs.evolve(apps.apps[cid], scopes=("list:bucket:photos",))
    after = await auth.issue_token(cid, secret, [], now=T0)
    assert after.scopes == ("list:bucket:photos",)
    old = auth.verify(f"Bearer {before.access_token}", now=T0 + 60)
    assert old.permits("read", "bucket:photos/x")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    """The scheme is matched case-insensitively; header may be str or bytes."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps)
    token = (await auth.issue_token(cid, secret, [], now=T0)).access_token
    assert auth.verify(f"{scheme} {token}", now=T0).client_id == cid
    assert auth.verify(f"{scheme} {token}".encode(), now=T0).client_id == cid


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc.def.ghi", "Bearer a b",
     "Bearer abc.def.ghi", b"Bearer \xff.a.b"],
)
async def test_missing_or_malformed_authorization(header: object) -> None:
    """Missing, non-Bearer or malformed authorization is UnauthenticatedError."""
    with pytest.raises(UnauthenticatedError):
        make(MemoryApps()).verify(header, now=T0)  # type: ignore[arg-type]


async def test_token_expires_on_the_injected_clock(autojump_clock: trio.testing.MockClock) -> None:
    """With the clock knob on trio time, a token verifies until 15 min + leeway, then fails."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps, clock=lambda: T0 + trio.current_time())
    issued = await auth.issue_token(cid, secret, [])
    header = f"Bearer {issued.access_token}"
    await trio.sleep(900 + 25)
    assert auth.verify(header).tenant == "acme"
    await trio.sleep(10)
    with pytest.raises(UnauthenticatedError, match="expired"):
        auth.verify(header)


async def test_key_rotation_is_picked_up() -> None:
    """After update_keyring, new tokens use the new kid and old tokens still verify."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps)
    old = await auth.issue_token(cid, secret, [], now=T0)
    auth.update_keyring(auth.keyring.rotated(now=T0 + 1))
    new = await auth.issue_token(cid, secret, [], now=T0 + 1)
    import jwt

    assert jwt.get_unverified_header(new.access_token)["kid"] == auth.keyring.signing_key.kid != "k1"
    assert auth.verify(f"Bearer {old.access_token}", now=T0 + 2).client_id == cid
    assert auth.verify(f"Bearer {new.access_token}", now=T0 + 2).client_id == cid


async def test_cached_token_expires_on_the_injected_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A token verified (and cached) early is still rejected once the clock passes its expiry."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps, clock=lambda: T0 + trio.current_time())
    header = f"Bearer {(await auth.issue_token(cid, secret, [])).access_token}"
    for _ in range(3):
        assert auth.verify(header).tenant == "acme"
        await trio.sleep(300)
    assert auth.verify(header).tenant == "acme"  # t = 900: inside the 30 s leeway
    await trio.sleep(30)
    with pytest.raises(UnauthenticatedError, match="expired"):
        auth.verify(header)


async def test_removing_a_key_invalidates_cached_tokens() -> None:
    """A token verified (and cached) under a key is rejected once that key leaves the ring."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps)
    header = f"Bearer {(await auth.issue_token(cid, secret, [], now=T0)).access_token}"
    assert auth.verify(header, now=T0 + 1).client_id == cid
    assert auth.verify(header, now=T0 + 2).client_id == cid
    auth.update_keyring(auth.keyring.rotated(now=T0 + 3))  # "k1" is kept: still valid
    assert auth.verify(header, now=T0 + 4).client_id == cid
    auth.update_keyring(KeyRing.from_secrets([("k2", b"n" * 32)]))  # "k1" is gone
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        auth.verify(header, now=T0 + 5)


async def test_token_cache_can_be_turned_off() -> None:
    """token_cache_size=0 verifies every call in full and still accepts valid tokens."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps, token_cache_size=0)
    header = f"Bearer {(await auth.issue_token(cid, secret, [], now=T0)).access_token}"
    assert auth.verify(header, now=T0 + 1).client_id == cid
    assert auth.verify(header, now=T0 + 2).client_id == cid
    assert len(auth._codec.cache) == 0


async def test_token_from_another_server_key_is_rejected() -> None:
    """A token signed by a server with a different key ring is UNAUTHENTICATED here."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    theirs = Authenticator(KeyRing.generate(now=T0), apps, scrypt_params=FAST)
    token = (await theirs.issue_token(cid, secret, [], now=T0)).access_token
    with pytest.raises(UnauthenticatedError):
        make(apps).verify(f"Bearer {token}", now=T0)


async def test_principal_require() -> None:
    """require / require_scope / require_operation raise PermissionDeniedError when not covered."""
    apps = MemoryApps()
    cid, secret = apps.add(
        "acme", ["read:bucket:photos/*", "list:bucket:photos", "write:blob:*", f"read:blob:{BLOB}"]
    )
    auth = make(apps)
    p = auth.verify(f"Bearer {(await auth.issue_token(cid, secret, [], now=T0)).access_token}", now=T0)
    p.require("read", "bucket:photos/a*b c")
    p.require_operation("GetObject", bucket="photos", key="any key*")
    p.require_operation("ListObjects", bucket="photos")
    p.require_operation("Upload")
    p.require_operation("GetBlob", blob_key=BLOB.encode())
    p.require_scope(required_scope_for("HeadObject", bucket="photos", key="x"))
    for op, kwargs in [
        ("PutObject", {"bucket": "photos", "key": "x"}),
        ("GetObject", {"bucket": "photos2", "key": "x"}),
        ("DeleteBucket", {"bucket": "photos"}),
        ("CreateBucket", {"bucket": "photos"}),
        ("ListBlobs", {}),
        ("GetBlob", {"blob_key": "sha256:" + "1" * 64}),
    ]:
        with pytest.raises(PermissionDeniedError):
            p.require_operation(op, **kwargs)
    with pytest.raises(PermissionDeniedError):
        p.require("write", "bucket:photos/x")
    with pytest.raises(InvalidResourceError):
        p.require_operation("GetObject", bucket="photos/x", key="y")
    assert p.allows(required_scope_for("ListBuckets", bucket="photos"))
    assert not p.allows(required_scope_for("ListBuckets", bucket="other"))


async def test_concurrent_issues_share_the_limiter() -> None:
    """Many concurrent token requests all complete with a hash concurrency of 1."""
    apps = MemoryApps()
    cid, secret = apps.add("acme", ["*:*"])
    auth = make(apps, hash_concurrency=1)
    results: list[str] = []

    async def one() -> None:
        results.append((await auth.issue_token(cid, secret, [], now=T0)).access_token)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert len(set(results)) == 10


@attrs.frozen
class StorageShapedApp:
    """An app record shaped like another layer's type: extra fields, scopes as a frozenset."""

    client_id: str
    tenant: str
    name: str
    secret_hash: str
    scopes: frozenset[str]


async def test_duck_typed_app_records_with_unordered_scopes() -> None:
    """Any record with tenant/secret_hash/scopes works; a scope set gives a stable order."""
    apps = MemoryApps()
    secret = generate_client_secret()
    grants = frozenset({"write:bucket:bk1", "list:bucket:bk1", "read:bucket:bk1/*"})
    apps.apps["app_x"] = StorageShapedApp(  # type: ignore[assignment]
        "app_x", "acme", "demo", hash_secret(secret, params=FAST), grants
    )
    issued = await make(apps).issue_token("app_x", secret, [], now=T0)
    assert issued.scopes == ("list:bucket:bk1", "read:bucket:bk1/*", "write:bucket:bk1")
