"""Tests for anvil_trio.auth tokens: issue, verify, and the attacks verification must stop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from anvil_trio.auth import (
    Grants,
    KeyRing,
    TokenCodec,
    UnauthenticatedError,
    VerifiedTokenCache,
)

T0 = 1_700_000_000
RING = KeyRing.from_secrets([("k1", b"1" * 32)])
SCOPES = Grants.parse(["read:bucket:photos/*", "list:bucket:photos"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _seg(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _hs(alg_hash: Any, secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode(), alg_hash).digest())


def forge(header: dict, payload: dict, secret: bytes | None = b"1" * 32, *, digest=hashlib.sha256) -> str:
    """A token with any header and payload, HMAC-signed with ``secret`` (or unsigned)."""
    signing_input = f"{_seg(header)}.{_seg(payload)}"
    signature = "" if secret is None else _hs(digest, secret, signing_input)
    return f"{signing_input}.{signature}"


def claims(**overrides: Any) -> dict:
    """A valid payload as the codec would issue at T0, with overrides (None removes)."""
    base = {
        "iss": "anvil-trio",
        "sub": "app_1",
        "tid": "acme",
        "scope": "read:bucket:photos/*",
        "iat": T0,
        "nbf": T0,
        "exp": T0 + 900,
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


HEADER = {"alg": "HS256", "typ": "JWT", "kid": "k1"}


def codec(**kwargs: Any) -> TokenCodec:
    return TokenCodec(kwargs.pop("keyring", RING), **kwargs)


def rejected(token: str, *, now: float = T0 + 1, match: str | None = None, **kwargs: Any) -> None:
    with pytest.raises(UnauthenticatedError, match=match):
        codec(**kwargs).decode(token, now=now)


def test_issue_and_verify_round_trip() -> None:
    """An issued token has the documented header and claims and verifies to the same claims."""
    token, issued = codec().encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0 + 0.7)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "sub", "tid", "scope", "iat", "nbf", "exp", "jti"}
    assert payload["scope"] == "read:bucket:photos/* list:bucket:photos"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (T0, T0, T0 + 900)
    verified = codec().decode(token, now=T0 + 1)
    assert verified == issued
    assert verified.scopes == SCOPES and verified.tenant == "acme" and verified.client_id == "app_1"


def test_token_ids_are_unique() -> None:
    """Every token gets its own jti."""
    ids = {codec().encode(client_id="a", tenant="t", scopes=SCOPES, now=T0)[1].token_id for _ in range(20)}
    assert len(ids) == 20


def test_forged_valid_token_is_accepted() -> None:
    """The forging helper makes tokens the codec accepts (so the attack tests are meaningful)."""
    assert codec().decode(forge(HEADER, claims()), now=T0 + 1).client_id == "app_1"


def test_encode_refuses_unexpressible_or_empty_scopes() -> None:
    """A token never carries a scope that would not parse back (e.g. a key with a space)."""
    from anvil_trio.auth import required_scope_for

    with pytest.raises(ValueError):
        codec().encode(client_id="a", tenant="t", scopes=Grants(()), now=T0)
    literal = required_scope_for("GetObject", bucket="photos", key="my file")
    with pytest.raises(ValueError):
        codec().encode(client_id="a", tenant="t", scopes=Grants((literal,)), now=T0)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_rejected(alg: str) -> None:
    """Unsigned tokens (alg=none in any spelling) are rejected."""
    rejected(forge({**HEADER, "alg": alg}, claims(), None))
    rejected(forge({**HEADER, "alg": alg}, claims()))


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_algorithms_are_rejected(alg: str) -> None:
    """RS/ES/PS/EdDSA headers are rejected, even when 'signed' with the HMAC key."""
    rejected(forge({**HEADER, "alg": alg}, claims()), match="algorithm")


@pytest.mark.parametrize(("alg", "digest"), [("HS384", hashlib.sha384), ("HS512", hashlib.sha512)])
def test_other_hmac_algorithms_are_rejected(alg: str, digest: Any) -> None:
    """Only HS256 is accepted, even for a correct HS384/HS512 signature with our key."""
    rejected(forge({**HEADER, "alg": alg}, claims(), digest=digest), match="algorithm")


def test_missing_alg_is_rejected() -> None:
    """A header without alg is rejected."""
    rejected(forge({"typ": "JWT", "kid": "k1"}, claims()))


def test_token_signed_with_another_key_is_rejected() -> None:
    """A token claiming our kid but signed with another secret fails the signature check."""
    rejected(forge(HEADER, claims(), b"2" * 32), match="signature")
    other = KeyRing.from_secrets([("k1", b"3" * 32)])
    token, _ = codec(keyring=other).encode(client_id="a", tenant="t", scopes=SCOPES, now=T0)
    rejected(token, match="signature")


def test_unknown_or_missing_kid_is_rejected() -> None:
    """A kid not in the ring, a missing kid or a non-string kid is rejected: no fallback key."""
    rejected(forge({**HEADER, "kid": "k9"}, claims()), match="unknown key")
    rejected(forge({"alg": "HS256", "typ": "JWT"}, claims()), match="unknown key")
    rejected(forge({**HEADER, "kid": 1}, claims()))
    rejected(forge({**HEADER, "kid": ["k1"]}, claims()))


@pytest.mark.parametrize("extra", [{"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}, {"jku": "http://x"}, {"jwk": {}}])
def test_unexpected_header_parameters_are_rejected(extra: dict) -> None:
    """Header parameters we never issue (crit, b64, jku, jwk) make the token invalid."""
    rejected(forge({**HEADER, **extra}, claims()))


def test_expiry_with_leeway() -> None:
    """A token verifies until exp + leeway and not at or after it; leeway is configurable."""
    token = forge(HEADER, claims())
    assert codec().decode(token, now=T0 + 900 + 29)
    rejected(token, now=T0 + 900 + 30, match="expired")
    rejected(token, now=T0 + 10_000, match="expired")
    assert codec(leeway=120).decode(token, now=T0 + 1000)
    rejected(token, now=T0 + 900, leeway=0, match="expired")


def test_not_before_in_the_future_is_rejected() -> None:
    """nbf beyond now + leeway is rejected; within the leeway it is tolerated."""
    rejected(forge(HEADER, claims(nbf=T0 + 100)), now=T0, match="not valid yet")
    assert codec().decode(forge(HEADER, claims(nbf=T0 + 20)), now=T0)


def test_issued_in_the_future_is_rejected() -> None:
    """iat beyond now + leeway is rejected."""
    rejected(forge(HEADER, claims(iat=T0 + 100)), now=T0, match="future")


def test_tampered_payload_is_rejected() -> None:
    """Changing the payload (e.g. widening the scope) invalidates the signature."""
    token, _ = codec().encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0)
    head, _, sig = token.split(".")
    evil = f"{head}.{_seg(claims(scope='*:*'))}.{sig}"
    rejected(evil, match="signature")
    other_tenant = f"{head}.{_seg(claims(tid='victim'))}.{sig}"
    rejected(other_tenant, match="signature")


def test_tampered_header_or_signature_is_rejected() -> None:
    """Changing the header or flipping signature bits invalidates the token."""
    token, _ = codec().encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0)
    head, body, sig = token.split(".")
    rejected(f"{_seg({**HEADER, 'typ': 'jwt'})}.{body}.{sig}")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    rejected(f"{head}.{body}.{flipped}")
    rejected(f"{head}.{body}.")


@pytest.mark.parametrize("claim", ["iss", "sub", "tid", "scope", "iat", "nbf", "exp", "jti"])
def test_missing_claims_are_rejected(claim: str) -> None:
    """Every claim is required; a correctly signed token lacking one is rejected."""
    rejected(forge(HEADER, claims(**{claim: None})))


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "later"},
        {"exp": True},
        {"nbf": [T0]},
        {"sub": ""},
        {"sub": 5},
        {"tid": {"a": 1}},
        {"jti": 7},
        {"scope": ["read:*"]},
        {"scope": ""},
        {"scope": "read:*  write:*"},
        {"scope": "read:bucket:photos/a b"},
        {"scope": "fly:*"},
    ],
)
def test_ill_typed_claims_are_rejected(overrides: dict) -> None:
    """Claims of the wrong type, empty strings and unparseable scopes are rejected."""
    rejected(forge(HEADER, claims(**overrides)))


def test_wrong_issuer_is_rejected() -> None:
    """A token from another issuer (or for a codec with another issuer) is rejected."""
    rejected(forge(HEADER, claims(iss="someone-else")), match="issuer")
    token, _ = codec(issuer="node-a").encode(client_id="a", tenant="t", scopes=SCOPES, now=T0)
    rejected(token, match="issuer")
    assert codec(issuer="node-a").decode(token, now=T0)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "a.b.c", "a b.c.d", "ä.b.c", "=.=.=", "x" * 20000, None, b"a.b.c"],
)
def test_malformed_tokens_are_rejected(token: Any) -> None:
    """Garbage of any shape is an UnauthenticatedError, never another exception."""
    rejected(token)


def test_non_object_payload_is_rejected() -> None:
    """A signed payload that is JSON but not an object is rejected."""
    signing_input = f"{_seg(HEADER)}.{_seg([1, 2])}"
    rejected(f"{signing_input}.{_hs(hashlib.sha256, b'1' * 32, signing_input)}")


def test_rotation_old_kid_verifies_until_pruned() -> None:
    """After rotation new tokens use the new kid and old tokens still verify; once the old key
    is pruned from the ring its tokens are rejected."""
    old_ring = KeyRing.generate(now=T0)
    old_token, _ = codec(keyring=old_ring).encode(client_id="a", tenant="t", scopes=SCOPES, now=T0)
    new_ring = old_ring.rotated(now=T0 + 10, retire_after=1000)
    new_token, new_claims = codec(keyring=new_ring).encode(client_id="a", tenant="t", scopes=SCOPES, now=T0 + 10)
    assert new_claims.key_id == new_ring.signing_key.kid != old_ring.signing_key.kid
    assert jwt.get_unverified_header(new_token)["kid"] == new_ring.signing_key.kid
    assert codec(keyring=new_ring).decode(old_token, now=T0 + 20).key_id == old_ring.signing_key.kid
    assert codec(keyring=new_ring).decode(new_token, now=T0 + 20)
    pruned = new_ring.rotated(now=T0 + 2000, retire_after=1000)
    assert pruned.get(old_ring.signing_key.kid) is None
    rejected(old_token, now=T0 + 20, keyring=pruned, match="unknown key")
    rejected(old_token, now=T0 + 20, keyring=old_ring.rotated(now=T0 + 1).rotated(now=T0 + 2, retire_after=0))


def test_codec_knobs_are_validated() -> None:
    """Non-positive lifetimes and negative leeways are refused."""
    with pytest.raises(ValueError):
        codec(lifetime=0)
    with pytest.raises(ValueError):
        codec(leeway=-1)
    with pytest.raises(ValueError):
        codec(cache_size=-1)


def test_cache_hit_skips_the_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second decode of the same token is answered from the cache with equal claims."""
    c = codec()
    token, issued = c.encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0)
    assert c.decode(token, now=T0 + 1) == issued
    assert len(c.cache) == 1

    def no_full_verify(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a cached token was verified in full again")

    monkeypatch.setattr(c._jwt, "decode", no_full_verify)
    assert c.decode(token, now=T0 + 2) == issued


def test_cache_never_extends_a_tokens_life() -> None:
    """A cached token is rejected once expired (and dropped), and before its nbf/iat."""
    c = codec()
    token, _ = c.encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0)
    assert c.decode(token, now=T0 + 1)
    assert c.decode(token, now=T0 + 900 + 29)
    with pytest.raises(UnauthenticatedError, match="expired"):
        c.decode(token, now=T0 + 900 + 30)
    assert len(c.cache) == 0
    assert c.decode(token, now=T0 + 1)
    with pytest.raises(UnauthenticatedError, match="not valid yet"):
        c.decode(token, now=T0 - 31)
    assert len(c.cache) == 0


def test_cache_keeps_only_verified_tokens_and_exact_strings() -> None:
    """Rejected tokens are not cached, and a tampered copy of a cached token is still rejected."""
    c = codec()
    token, _ = c.encode(client_id="app_1", tenant="acme", scopes=SCOPES, now=T0)
    with pytest.raises(UnauthenticatedError):
        c.decode(token, now=T0 + 5000)
    assert len(c.cache) == 0
    assert c.decode(token, now=T0 + 1)
    head, body, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(UnauthenticatedError, match="signature"):
        c.decode(f"{head}.{body}.{flipped}", now=T0 + 1)
    assert len(c.cache) == 1


def test_cache_is_a_bounded_lru() -> None:
    """The cache holds at most cache_size tokens, dropping the least recently used first."""
    c = codec(cache_size=2)
    tokens = [c.encode(client_id=f"a{i}", tenant="t", scopes=SCOPES, now=T0)[0] for i in range(3)]
    c.decode(tokens[0], now=T0)
    c.decode(tokens[1], now=T0)
    c.decode(tokens[0], now=T0)
    c.decode(tokens[2], now=T0)
    assert len(c.cache) == 2
    assert c.cache.get(tokens[1]) is None
    assert c.cache.get(tokens[0]) is not None and c.cache.get(tokens[2]) is not None
    off = codec(cache_size=0)
    off.decode(tokens[0], now=T0)
    assert len(off.cache) == 0


def test_cache_skips_over_long_tokens() -> None:
    """Tokens longer than the cache's limit verify but are not stored."""
    cache = VerifiedTokenCache(max_entries=4, max_token_chars=10)
    _, claims = codec().encode(client_id="a", tenant="t", scopes=SCOPES, now=T0)
    cache.put("x" * 11, claims)
    cache.put("y" * 10, claims)
    assert len(cache) == 1 and cache.get("y" * 10) == claims
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        VerifiedTokenCache(max_entries=-1)
