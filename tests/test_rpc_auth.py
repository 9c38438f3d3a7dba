"""AuthService over the wire, and bearer-token checks on every authenticated call."""

from __future__ import annotations

import time

import jwt
import pytest
from purerpc import StatusCode

from anvil_trio.auth import Grants, KeyRing, TokenCodec, hash_secret
from anvil_trio.testing import TEST_SCRYPT, anvil_server, bearer, code_of, status_of  # noqa: F401
from anvil_trio._proto.anvil.v1 import bucket_pb2

# The contract holds on both backends (SQLite + files; PostgreSQL + S3): see conftest.py.
pytestmark = pytest.mark.usefixtures("backend")

LIST = bucket_pb2.ListBucketsRequest()


def create(name: str) -> bucket_pb2.CreateBucketRequest:
    return bucket_pb2.CreateBucketRequest(bucket_name=name)


async def test_token_carries_requested_scopes_and_works(anvil_server):
    """GetAccessToken returns a Bearer JWT with the requested granted scopes and the lifetime."""
    ts = anvil_server
    cid, secret = await ts.make_app(["write:bucket:a*", "list:bucket:*"])
    reply = await ts.get_token(cid, secret, ["write:bucket:a*"])
    assert reply.token_type == "Bearer"
    assert reply.expires_in == int(ts.config.token_lifetime)
    assert list(reply.scopes) == ["write:bucket:a*"]
    claims = jwt.decode(reply.access_token, options={"verify_signature": False})
    assert (claims["sub"], claims["tid"], claims["scope"]) == (cid, "t1", "write:bucket:a*")
    assert claims["iss"] == ts.config.jwt_issuer
    md = bearer(reply.access_token)
    assert (await ts.buckets.CreateBucket(create("abc"), metadata=md)).name == "abc"
    assert await code_of(ts.buckets.CreateBucket(create("bcd"), metadata=md)) == (
        StatusCode.PERMISSION_DENIED
    )


async def test_no_requested_scopes_means_all_granted(anvil_server):
    """An empty scope list yields a token with every granted scope."""
    ts = anvil_server
    cid, secret = await ts.make_app(["read:bucket:xyz/*", "list:bucket:xyz"])
    reply = await ts.get_token(cid, secret)
    assert sorted(reply.scopes) == ["list:bucket:xyz", "read:bucket:xyz/*"]


async def test_wrong_credentials_are_unauthenticated_and_indistinguishable(anvil_server):
    """Unknown client id, wrong secret and empty credentials all give the same UNAUTHENTICATED."""
    ts = anvil_server
    wrong_secret = await status_of(ts.get_token(ts.client_id, "not-the-secret"))
    unknown_id = await status_of(ts.get_token("app_00000000000000000000", ts.client_secret))
    empty = await status_of(ts.get_token("", ""))
    for status in (wrong_secret, unknown_id, empty):
        assert status.status_code == StatusCode.UNAUTHENTICATED
    assert wrong_secret.status_message == unknown_id.status_message == empty.status_message


async def test_scope_syntax_and_grant_errors(anvil_server):
    """A bad scope is INVALID_ARGUMENT, an ungranted one PERMISSION_DENIED, bad credentials win."""
    ts = anvil_server
    cid, secret = await ts.make_app(["read:bucket:alpha/*"])
    assert await code_of(ts.get_token(cid, secret, ["fly:bucket:a"])) == StatusCode.INVALID_ARGUMENT
    assert await code_of(ts.get_token(cid, secret, ["write:bucket:beta"])) == (
        StatusCode.PERMISSION_DENIED
    )
    assert await code_of(ts.get_token(cid, secret, ["write:bucket:beta", "bogus"])) == (
        StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(ts.get_token(cid, "wrong", ["bogus"])) == StatusCode.UNAUTHENTICATED
    bare_id, bare_secret = await ts.make_app([])
    assert await code_of(ts.get_token(bare_id, bare_secret)) == StatusCode.PERMISSION_DENIED


async def test_grants_revocations_and_rotations_apply_at_next_token(anvil_server):
    """Grants, revocations and new secrets take effect at the next GetAccessToken only."""
    ts = anvil_server
    cid, secret = await ts.make_app(["list:bucket:*"])
    await ts.storage.grant_scopes(cid, ["write:bucket:*"])
    old = await ts.get_token(cid, secret)
    assert sorted(old.scopes) == ["list:bucket:*", "write:bucket:*"]
    await ts.storage.revoke_scopes(cid, ["write:bucket:*"])
    assert list((await ts.get_token(cid, secret)).scopes) == ["list:bucket:*"]
    # The token issued before the revocation stays valid until it expires.
    assert (await ts.buckets.CreateBucket(create("kept"), metadata=bearer(old.access_token))).name
    await ts.storage.set_app_secret(cid, hash_secret("new-secret", params=TEST_SCRYPT))
    assert await code_of(ts.get_token(cid, secret)) == StatusCode.UNAUTHENTICATED
    assert (await ts.get_token(cid, "new-secret")).access_token
    assert await code_of(ts.buckets.ListBuckets(LIST, metadata=bearer(old.access_token))) == (
        StatusCode.OK
    )


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer not.a.jwt"),),
        (("authorization", "Bearer a b"),),
        (("x-other", "Bearer x"),),
    ],
)
async def test_missing_or_malformed_token_is_unauthenticated(anvil_server, metadata):
    """A call without a usable bearer token is UNAUTHENTICATED."""
    ts = anvil_server
    assert await code_of(ts.buckets.ListBuckets(LIST, metadata=metadata)) == (
        StatusCode.UNAUTHENTICATED
    )


async def test_expired_and_badly_signed_tokens_are_unauthenticated(anvil_server):
    """Expired, foreign-key, tampered and foreign-issuer tokens are all UNAUTHENTICATED."""
    ts = anvil_server
    scopes = Grants.parse(["*:*"])
    ring = ts.server.auth.keyring
    past = time.time() - 3 * 3600
    expired, _ = TokenCodec(ring, issuer=ts.config.jwt_issuer, lifetime=60).encode(
        client_id=ts.client_id, tenant="t1", scopes=scopes, now=past
    )
    foreign, _ = TokenCodec(KeyRing.generate(), issuer=ts.config.jwt_issuer).encode(
        client_id=ts.client_id, tenant="t1", scopes=scopes
    )
    other_issuer, _ = TokenCodec(ring, issuer="someone-else").encode(
        client_id=ts.client_id, tenant="t1", scopes=scopes
    )
    head, payload, signature = ts.token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    tampered = ".".join([head, payload, flipped])
    for token in (expired, foreign, other_issuer, tampered):
        assert await code_of(ts.buckets.ListBuckets(LIST, metadata=bearer(token))) == (
            StatusCode.UNAUTHENTICATED
        ), token
    assert await code_of(ts.buckets.ListBuckets(LIST, metadata=ts.metadata)) == StatusCode.OK
