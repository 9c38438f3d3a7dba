"""Tests for anvil_trio.auth scopes: parsing, covering, grants, narrowing, the operation table."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anvil_trio.auth import (
    Grants,
    InvalidResourceError,
    InvalidScopeError,
    PermissionDeniedError,
    Scope,
    blob_resource,
    bucket_resource,
    covers,
    is_valid_bucket_name,
    narrow_scopes,
    object_resource,
    parse_scope,
    required_scope_for,
)

BLOB = "sha256:" + "ab" * 32
OTHER_BLOB = "sha256:" + "cd" * 32

VALID = [
    "*:*",
    "read:*",
    "write:bucket:photos",
    "delete:bucket:photos",
    "list:bucket:photos",
    "read:bucket:photos/cat.jpg",
    "read:bucket:photos/*",
    "read:bucket:photos/2024/*",
    "read:bucket:photos/a*b",
    "read:bucket:photos/weird:key/with:colons",
    "read:bucket:photos/ключ/日本",
    "write:bucket:*",
    "write:bucket:ph*",
    "write:blob:*",
    "list:blob:*",
    f"read:blob:{BLOB}",
    "read:blob:sha256:ab*",
    "read:blob:sha*",
    "*:bucket:photos/*",
]

INVALID = [
    "",
    "read",
    "read:",
    "fetch:bucket:photos",
    "READ:bucket:photos",
    "read*:bucket:photos",
    ":bucket:photos",
    "read:bucket:",
    "read:bucket:Photos",
    "read:bucket:ab",
    "read:bucket:-photos",
    "read:bucket:pho..tos",
    "read:bucket:192.168.1.1",
    "read:bucket:photos/",
    "read:bucket:photos/a b",
    "read:bucket:photos/a\tb",
    "read:bucket:photos/a\u2003b",
    "read:bucket:photos/a\0b",
    "read:bucket:Ph*",
    "read:bucket:ph/oto/*x\n",
    "read:bucket*",
    "read:b*",
    "read:blob:",
    "read:blob:sha256:AB" + "ab" * 31,
    "read:blob:sha256:" + "ab" * 31,
    "read:blob:md5:*",
    "read:blob:sha256:xy*",
    "read:object:photos/a",
    "read:**",
    "read:bucket:photos/" + "k" * 1025,
    "read:bucket:photos/\ud800",
    " read:bucket:photos",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_scopes_parse_and_round_trip(text: str) -> None:
    """Every valid form parses and str() gives the same text back."""
    scope = parse_scope(text)
    assert str(scope) == text
    assert scope.expressible
    assert Scope.parse(text) == scope


@pytest.mark.parametrize("text", INVALID)
def test_invalid_scopes_raise_invalid_scope_error(text: str) -> None:
    """Malformed scopes raise InvalidScopeError, which is a ValueError."""
    with pytest.raises(InvalidScopeError):
        parse_scope(text)
    assert issubclass(InvalidScopeError, ValueError)


def test_non_string_scope_is_invalid() -> None:
    """A scope that is not a str is rejected with InvalidScopeError, not a crash."""
    with pytest.raises(InvalidScopeError):
        parse_scope(b"read:*")  # type: ignore[arg-type]


def test_parsed_structure() -> None:
    """The wildcard star is stripped into a flag; a star inside a key stays literal."""
    assert parse_scope("read:bucket:photos/*") == Scope("read", "bucket:photos/", True)
    assert parse_scope("read:bucket:photos/a*b") == Scope("read", "bucket:photos/a*b", False)
    assert parse_scope("*:*") == Scope("*", "", True)


def _obj(bucket: str, key: str, action: str = "read") -> Scope:
    return Scope(action, object_resource(bucket, key))


COVERS = [
    # granted, required, expected
    ("read:bucket:photos/*", "read:bucket:photos/cat.jpg", True),
    ("read:bucket:photos/*", "read:bucket:photos/a/b/c", True),
    ("read:bucket:photos/*", "read:bucket:photos", False),
    ("read:bucket:photos/*", "read:bucket:photos2/cat.jpg", False),
    ("read:bucket:photos/*", "read:bucket:photo/cat.jpg", False),
    ("read:bucket:photos/*", "write:bucket:photos/cat.jpg", False),
    ("read:bucket:photos/*", "read:bucket:photos/2024/*", True),
    ("read:bucket:photos/2024/*", "read:bucket:photos/*", False),
    ("read:bucket:photos/cat.jpg", "read:bucket:photos/cat.jpg", True),
    ("read:bucket:photos/cat.jpg", "read:bucket:photos/cat.jpg2", False),
    ("read:bucket:photos/cat.jpg", "read:bucket:photos/*", False),
    ("read:bucket:photos", "read:bucket:photos/cat.jpg", False),
    ("list:bucket:photos", "list:bucket:photos", True),
    ("list:bucket:photos", "list:bucket:photos2", False),
    ("list:bucket:ph*", "list:bucket:photos", True),
    ("list:bucket:ph*", "list:bucket:other", False),
    ("*:*", "delete:bucket:photos/x", True),
    ("*:*", "*:*", True),
    ("read:*", "read:blob:*", True),
    ("read:*", "*:bucket:photos", False),
    ("*:bucket:photos/*", "delete:bucket:photos/x", True),
    ("*:bucket:photos/*", "*:bucket:photos/x", True),
    ("read:bucket:photos/*", "*:bucket:photos/x", False),
    ("write:blob:*", "write:blob:*", True),
    ("write:blob:*", f"write:blob:{BLOB}", True),
    (f"write:blob:{BLOB}", "write:blob:*", False),
    (f"read:blob:{BLOB}", f"read:blob:{OTHER_BLOB}", False),
    ("read:blob:sha256:ab*", f"read:blob:{BLOB}", True),
    ("read:blob:sha256:ab*", f"read:blob:{OTHER_BLOB}", False),
    ("read:blob:*", "read:bucket:photos/x", False),
    ("read:bucket:*", "read:blob:*", False),
    ("read:bucket:photos/a*b", "read:bucket:photos/axb", False),
    ("read:bucket:photos/a*b", "read:bucket:photos/a*b", True),
]


@pytest.mark.parametrize(("granted", "required", "expected"), COVERS)
def test_covers_table(granted: str, required: str, expected: bool) -> None:
    """covers() follows API.md's rules on a table of cases."""
    assert covers(parse_scope(granted), parse_scope(required)) is expected
    assert parse_scope(granted).covers(parse_scope(required)) is expected


def test_literal_key_ending_in_star_is_not_a_wildcard() -> None:
    """The object key 'a*' is one object: an exact grant of another key never reaches it, and
    as a requirement it does not cover 'ab'."""
    required = _obj("photos", "a*")
    assert not required.wildcard
    assert not required.expressible
    assert covers(parse_scope("read:bucket:photos/a*"), required)
    assert not covers(parse_scope("read:bucket:photos/a"), required)
    assert not covers(required, _obj("photos", "ab"))
    assert covers(required, required)


def test_key_with_spaces_reachable_only_by_wildcard() -> None:
    """An object whose key has a space cannot be granted exactly, only through a wildcard."""
    with pytest.raises(InvalidScopeError):
        parse_scope("read:bucket:photos/my file")
    required = _obj("photos", "my file")
    assert not required.expressible
    assert Grants.parse(["read:bucket:photos/my*"]).allows(required)
    assert Grants.parse(["read:bucket:photos/*"]).allows(required)
    assert not Grants.parse(["read:bucket:photos/my"]).allows(required)


REQUIRED = [
    ("CreateBucket", {"bucket": "photos"}, "write:bucket:photos"),
    ("DeleteBucket", {"bucket": "photos"}, "delete:bucket:photos"),
    ("ListBuckets", {"bucket": "photos"}, "list:bucket:photos"),
    ("ListObjects", {"bucket": "photos"}, "list:bucket:photos"),
    ("ListObjectVersions", {"bucket": "photos"}, "list:bucket:photos"),
    ("PutObject", {"bucket": "photos", "key": "a/b.jpg"}, "write:bucket:photos/a/b.jpg"),
    ("GetObject", {"bucket": "photos", "key": "a/b.jpg"}, "read:bucket:photos/a/b.jpg"),
    ("HeadObject", {"bucket": "photos", "key": "a/b.jpg"}, "read:bucket:photos/a/b.jpg"),
    ("DeleteObject", {"bucket": "photos", "key": "a/b.jpg"}, "delete:bucket:photos/a/b.jpg"),
    ("Upload", {}, "write:blob:*"),
    ("GetBlob", {"blob_key": BLOB}, f"read:blob:{BLOB}"),
    ("StatBlob", {"blob_key": BLOB.encode()}, f"read:blob:{BLOB}"),
    ("DeleteBlob", {"blob_key": BLOB}, f"delete:blob:{BLOB}"),
    ("ListBlobs", {}, "list:blob:*"),
]


@pytest.mark.parametrize(("operation", "kwargs", "expected"), REQUIRED)
def test_required_scope_table(operation: str, kwargs: dict, expected: str) -> None:
    """required_scope_for gives API.md's scope for every operation."""
    assert required_scope_for(operation, **kwargs) == parse_scope(expected)


@pytest.mark.parametrize(
    ("operation", "kwargs"),
    [
        ("GetObject", {"bucket": "photos/evil", "key": "x"}),
        ("GetObject", {"bucket": "Photos", "key": "x"}),
        ("GetObject", {"bucket": "photos", "key": ""}),
        ("GetObject", {"bucket": "photos", "key": "a\0b"}),
        ("GetObject", {"bucket": "photos", "key": "k" * 1025}),
        ("CreateBucket", {"bucket": "ab"}),
        ("GetBlob", {"blob_key": "sha256:short"}),
        ("GetBlob", {"blob_key": b"\xff" * 71}),
    ],
)
def test_required_scope_rejects_impossible_names(operation: str, kwargs: dict) -> None:
    """A name that cannot exist (e.g. a bucket name with '/') is INVALID_ARGUMENT, never a
    resource string a wildcard could match."""
    with pytest.raises(InvalidResourceError):
        required_scope_for(operation, **kwargs)


def test_required_scope_misuse_is_a_type_error() -> None:
    """Unknown operations and missing or surplus arguments are programming errors."""
    with pytest.raises(TypeError):
        required_scope_for("Frobnicate")
    with pytest.raises(TypeError):
        required_scope_for("GetObject", bucket="photos")
    with pytest.raises(TypeError):
        required_scope_for("Upload", bucket="photos")


def test_resource_builders() -> None:
    """Resource builders produce API.md's resource text and keep keys verbatim."""
    assert bucket_resource("photos") == "bucket:photos"
    assert object_resource("photos", "a b*c") == "bucket:photos/a b*c"
    assert blob_resource(BLOB.encode()) == f"blob:{BLOB}"


def test_grants_permits_and_claim_round_trip() -> None:
    """Grants dedupe, permit concrete resources and survive the space-separated claim."""
    grants = Grants.parse(["read:bucket:photos/*", "list:bucket:photos", "read:bucket:photos/*"])
    assert len(grants) == 2
    assert grants.permits("read", "bucket:photos/x")
    assert grants.permits("list", "bucket:photos")
    assert not grants.permits("list", "bucket:photos2")
    assert not grants.permits("write", "bucket:photos/x")
    assert Grants.from_claim(grants.to_claim()) == grants
    assert grants.strings() == ("read:bucket:photos/*", "list:bucket:photos")
    with pytest.raises(InvalidScopeError):
        Grants.from_claim("")
    with pytest.raises(InvalidScopeError):
        Grants.from_claim("read:*  write:*")
    with pytest.raises(InvalidScopeError):
        grants.permits("fetch", "bucket:photos")


def test_narrowing_rules() -> None:
    """Issue-time narrowing keeps covered requests, defaults to all grants, and fails right."""
    granted = ["read:bucket:photos/*", "list:bucket:photos", "not a scope"]
    assert narrow_scopes(granted, ["read:bucket:photos/cat.jpg"]).strings() == (
        "read:bucket:photos/cat.jpg",
    )
    assert narrow_scopes(granted, []).strings() == ("read:bucket:photos/*", "list:bucket:photos")
    assert narrow_scopes(granted, ["write:bucket:photos/x", "list:bucket:photos"]).strings() == (
        "list:bucket:photos",
    )
    with pytest.raises(PermissionDeniedError):
        narrow_scopes(granted, ["write:bucket:photos/x"])
    with pytest.raises(PermissionDeniedError):
        narrow_scopes(granted, ["read:bucket:photos"])
    with pytest.raises(PermissionDeniedError):
        narrow_scopes(["bogus"], [])
    with pytest.raises(InvalidScopeError):
        narrow_scopes(granted, ["read:bucket:photos/cat.jpg", "read:bucket:photos/a b"])
    with pytest.raises(TypeError):
        narrow_scopes(granted, "read:*")


# ---------------------------------------------------------------- properties

bucket_names = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,12}[a-z0-9]", fullmatch=True).filter(
    is_valid_bucket_name
)
# Keys drawn from an alphabet rich in the characters that could confuse matching.
any_keys = st.text(
    alphabet=st.one_of(
        st.sampled_from("*:/ \t.-ab"),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    ),
    min_size=1,
    max_size=12,
)
scope_keys = any_keys.filter(lambda k: not any(c.isspace() for c in k))
blob_keys = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(
    lambda h: "sha256:" + h
)
actions = st.sampled_from(["read", "write", "delete", "list", "*"])


@st.composite
def scope_texts(draw: st.DrawFn) -> str:
    """Valid scope strings of every form."""
    action = draw(actions)
    form = draw(st.integers(0, 6))
    name = draw(bucket_names)
    if form == 0:
        resource = "*"
    elif form == 1:
        resource = f"bucket:{name[: draw(st.integers(0, len(name)))]}*"
    elif form == 2:
        resource = f"bucket:{name}"
    elif form == 3:
        key = draw(scope_keys)
        resource = f"bucket:{name}/{key[: draw(st.integers(0, len(key)))]}*"
    elif form == 4:
        key = draw(scope_keys.filter(lambda k: not k.endswith("*")))
        resource = f"bucket:{name}/{key}"
    elif form == 5:
        blob = draw(blob_keys)
        resource = f"blob:{blob[: draw(st.integers(0, len(blob)))]}*"
    else:
        resource = f"blob:{draw(blob_keys)}"
    return f"{action}:{resource}"


def _widen(scope: Scope, cut: int, any_action: bool) -> Scope:
    """A scope covering ``scope``: a shorter prefix and maybe any action."""
    action = "*" if any_action else scope.action
    return Scope(action, scope.resource[: max(0, len(scope.resource) - cut)], True)


@settings(max_examples=150, deadline=None)
@given(scope_texts())
def test_star_star_covers_everything_and_parse_round_trips(text: str) -> None:
    """'*:*' covers every valid scope; every valid scope covers itself and round-trips."""
    scope = parse_scope(text)
    assert str(scope) == text
    assert covers(parse_scope("*:*"), scope)
    assert covers(scope, scope)


@settings(max_examples=150, deadline=None)
@given(scope_texts(), st.integers(0, 20), st.integers(0, 20), st.booleans(), st.booleans())
def test_covering_is_transitive_along_widening_chains(
    text: str, cut1: int, cut2: int, star1: bool, star2: bool
) -> None:
    """If a covers b and b covers c then a covers c, on chains built by widening."""
    c = parse_scope(text)
    b = _widen(c, cut1, star1)
    a = _widen(b, cut2, star2)
    assert covers(b, c) and covers(a, b)
    assert covers(a, c)


@settings(max_examples=150, deadline=None)
@given(scope_texts(), scope_texts(), scope_texts())
def test_covering_is_transitive_on_random_triples(x: str, y: str, z: str) -> None:
    """For arbitrary triples, covers(a,b) and covers(b,c) imply covers(a,c)."""
    a, b, c = parse_scope(x), parse_scope(y), parse_scope(z)
    if covers(a, b) and covers(b, c):
        assert covers(a, c)


@settings(max_examples=150, deadline=None)
@given(bucket_names, bucket_names, any_keys, actions)
def test_bucket_object_wildcard_never_reaches_another_bucket(
    mine: str, other: str, key: str, action: str
) -> None:
    """ACTION:bucket:MINE/* reaches MINE's objects only: not other buckets, not MINE itself."""
    assume(mine != other)
    grant = parse_scope(f"{action}:bucket:{mine}/*")
    concrete = "read" if action == "*" else action
    assert covers(grant, Scope(concrete, object_resource(mine, key)))
    assert not covers(grant, Scope(concrete, object_resource(other, key)))
    assert not covers(grant, Scope(concrete, bucket_resource(other)))
    assert not covers(grant, Scope(concrete, bucket_resource(mine)))


@settings(max_examples=200, deadline=None)
@given(bucket_names, scope_keys, any_keys)
def test_keys_with_stars_do_not_escalate(bucket: str, granted_key: str, key: str) -> None:
    """An exact grant reaches exactly its own key; a prefix grant reaches exactly the keys with
    that literal prefix, whatever '*', ':' or whitespace the keys hold."""
    assume(not granted_key.endswith("*"))
    exact = parse_scope(f"read:bucket:{bucket}/{granted_key}")
    required = Scope("read", object_resource(bucket, key))
    assert covers(exact, required) is (key == granted_key)
    prefix = parse_scope(f"read:bucket:{bucket}/{granted_key}*")
    assert covers(prefix, required) is key.startswith(granted_key)


@settings(max_examples=100, deadline=None)
@given(st.lists(scope_texts(), max_size=4), st.lists(scope_texts(), max_size=4))
def test_narrowing_never_widens(granted: list[str], requested: list[str]) -> None:
    """Every scope a token would carry is covered by a grant, and was requested (if any were)."""
    try:
        result = narrow_scopes(granted, requested)
    except PermissionDeniedError:
        return
    held = [parse_scope(g) for g in granted]
    for scope in result:
        assert any(covers(g, scope) for g in held)
        if requested:
            assert str(scope) in requested
