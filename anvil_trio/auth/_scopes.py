"""Scopes: parsing, the covering relation, grant sets and the narrowing done at token issue.

A scope is ``ACTION:RESOURCE`` (API.md, "AuthService"):

* ACTION is ``read``, ``write``, ``delete``, ``list`` or ``*`` (any action).
* RESOURCE is ``bucket:NAME`` (the bucket itself), ``bucket:NAME/KEY`` (one object),
  ``blob:KEY`` (one content-addressed blob, KEY = ``sha256:<64 lowercase hex>``), or any of these
  cut short and ending in ``*``, which matches any suffix; a lone ``*`` matches every resource.

Invariants:

* A :class:`Scope` holds the resource text *without* the wildcard star plus a ``wildcard`` flag,
  so matching never re-reads characters of a name: only a *trailing* ``*`` of a *scope string*
  is a wildcard. A ``*`` anywhere else, and every character of a concrete object key, is literal.
* ``covers(granted, required)`` holds iff every resource ``required`` matches is matched by
  ``granted`` (and the action is the same, or ``granted``'s is ``*``). For wildcards this is
  prefix containment, so the relation is reflexive and transitive; it is conservative (it may
  say no where the valid resources happen to coincide, never yes where they do not).
* A bucket name cannot contain ``/``, so ``bucket:photos/*`` reaches only objects of ``photos``
  and never the bucket ``photos`` itself nor any other bucket. ``bucket:photos*`` is a *bucket
  name* wildcard: it covers the buckets whose names start with ``photos`` and all their objects.
* A scope string never contains whitespace or NUL, since tokens carry scopes space-separated in
  one claim. Consequences for object keys, which may contain any UTF-8 except NUL:

  - a key containing whitespace cannot be named exactly; it is reachable only through a
    wildcard scope whose prefix stops before the first whitespace (e.g. ``read:bucket:b/*``
    or ``read:bucket:b/my*`` for the key ``my file``);
  - a key *ending* in ``*`` cannot be named exactly either (the star would be read as a
    wildcard); it is reachable through a wildcard covering it (``read:bucket:b/a*`` reaches
    ``a*`` and every other key starting with ``a``). A ``*`` inside a key is literal.

  No key can widen a scope: concrete resources are compared as literal strings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

import attrs

from ._errors import InvalidScopeError, PermissionDeniedError

__all__ = [
    "ACTIONS",
    "Grants",
    "Scope",
    "covers",
    "is_valid_blob_key",
    "is_valid_bucket_name",
    "is_valid_object_key",
    "narrow_scopes",
    "parse_scope",
]

logger = logging.getLogger("anvil_trio.auth")

#: The actions a scope may name; ``*`` stands for all of them.
ACTIONS = frozenset({"read", "write", "delete", "list", "*"})

_BUCKET_PREFIX = "bucket:"
_BLOB_PREFIX = "blob:"
_BLOB_KEY_HEAD = "sha256:"
_BLOB_HEX_LEN = 64
_HEX = frozenset("0123456789abcdef")
_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
MAX_BUCKET_NAME = 63
MAX_OBJECT_KEY_BYTES = 1024
# "delete:" + "bucket:" + 63 + "/" + 1024 bytes of key + "*", rounded up.
_MAX_SCOPE_CHARS = 1200


def is_valid_bucket_name(name: str) -> bool:
    """Whether ``name`` is a bucket name allowed by API.md.

    3-63 characters of ``a-z 0-9 . -``, starting and ending with a letter or digit, no two
    adjacent dots, not shaped like an IPv4 address (four dot-separated groups of 1-3 digits).
    """
    return (
        isinstance(name, str)
        and 3 <= len(name) <= MAX_BUCKET_NAME
        and set(name) <= _BUCKET_CHARS
        and name[0] not in ".-"
        and name[-1] not in ".-"
        and ".." not in name
        and _IPV4_SHAPE.fullmatch(name) is None
    )


def is_valid_object_key(key: str) -> bool:
    """Whether ``key`` is an object key allowed by API.md: 1-1024 bytes of UTF-8 without NUL."""
    if not isinstance(key, str) or not key or "\0" in key:
        return False
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return size <= MAX_OBJECT_KEY_BYTES


def is_valid_blob_key(key: str) -> bool:
    """Whether ``key`` is a blob key: ``sha256:`` followed by 64 lowercase hex digits."""
    return (
        isinstance(key, str)
        and key.startswith(_BLOB_KEY_HEAD)
        and len(key) == len(_BLOB_KEY_HEAD) + _BLOB_HEX_LEN
        and set(key[len(_BLOB_KEY_HEAD) :]) <= _HEX
    )


def _is_blob_key_prefix(prefix: str) -> bool:
    """Whether some valid blob key starts with ``prefix``."""
    head = prefix[: len(_BLOB_KEY_HEAD)]
    tail = prefix[len(_BLOB_KEY_HEAD) :]
    return _BLOB_KEY_HEAD.startswith(head) and (
        not tail or (len(head) == len(_BLOB_KEY_HEAD) and len(tail) <= _BLOB_HEX_LEN and set(tail) <= _HEX)
    )


@attrs.frozen(order=True)
class Scope:
    """One scope: an action on a resource or, with ``wildcard``, on every resource whose text
    starts with ``resource``.

    Build scopes from strings with :func:`parse_scope` (or :meth:`Scope.parse`); build the
    scope an operation needs with :func:`anvil_trio.auth.required_scope_for`, which makes
    *literal* scopes whose resource may contain any key character.

    Attributes:
        action: ``read``, ``write``, ``delete``, ``list`` or ``*``.
        resource: the resource text without the trailing wildcard star, e.g.
            ``bucket:photos/cat.jpg``, ``bucket:photos/`` (with ``wildcard``) or ``""`` (the
            lone ``*`` resource).
        wildcard: whether the scope matches every resource starting with ``resource``.
    """

    action: str = attrs.field()
    resource: str
    wildcard: bool = False

    @action.validator
    def _check_action(self, _attribute: object, value: str) -> None:
        if value not in ACTIONS:
            raise InvalidScopeError(f"unknown scope action {value!r}")

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Same as :func:`parse_scope`."""
        return parse_scope(text)

    def __str__(self) -> str:
        return f"{self.action}:{self.resource}{'*' if self.wildcard else ''}"

    @property
    def expressible(self) -> bool:
        """Whether ``str(self)`` parses back to this scope, i.e. whether it can be granted or
        carried in a token. False for a literal resource whose key ends in ``*`` or contains
        whitespace (see the module docstring)."""
        try:
            return parse_scope(str(self)) == self
        except InvalidScopeError:
            return False

    def covers(self, required: Scope) -> bool:
        """Same as ``covers(self, required)``."""
        return covers(self, required)


def _check_bucket_resource(rest: str, wildcard: bool, text: str) -> None:
    name, slash, key = rest.partition("/")
    if slash:
        if not is_valid_bucket_name(name):
            raise InvalidScopeError(f"invalid bucket name in scope {text!r}")
        if not wildcard and not key:
            raise InvalidScopeError(f"empty object key in scope {text!r}")
        if len(key.encode("utf-8")) > MAX_OBJECT_KEY_BYTES:
            raise InvalidScopeError(f"object key longer than {MAX_OBJECT_KEY_BYTES} bytes in scope")
    elif wildcard:
        if len(name) > MAX_BUCKET_NAME or not set(name) <= _BUCKET_CHARS:
            raise InvalidScopeError(f"invalid bucket name prefix in scope {text!r}")
    elif not is_valid_bucket_name(name):
        raise InvalidScopeError(f"invalid bucket name in scope {text!r}")


def parse_scope(text: str) -> Scope:
    """Parse one scope string.

    Args:
        text: ``ACTION:RESOURCE`` as described in the module docstring.

    Returns:
        The :class:`Scope`; ``str()`` of it gives back ``text``.

    Raises:
        InvalidScopeError: the action is unknown; the resource is not one of the forms (an
            invalid bucket name, an empty or over-long object key, a malformed blob key, an
            unknown resource type); or the text contains whitespace, NUL or unencodable
            characters, or is longer than any valid scope.
    """
    if not isinstance(text, str):
        raise InvalidScopeError(f"a scope must be a string, not {type(text).__name__}")
    shown = text if len(text) <= 80 else text[:77] + "..."
    if not text or len(text) > _MAX_SCOPE_CHARS:
        raise InvalidScopeError(f"scope {shown!r} has an invalid length")
    if any(ch.isspace() or ch == "\0" for ch in text):
        raise InvalidScopeError(f"scope {shown!r} contains whitespace or NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidScopeError("scope is not valid UTF-8") from None
    action, sep, resource = text.partition(":")
    if not sep:
        raise InvalidScopeError(f"scope {shown!r} is not ACTION:RESOURCE")
    if action not in ACTIONS:
        raise InvalidScopeError(f"unknown action {action!r} in scope {shown!r}")
    wildcard = resource.endswith("*")
    body = resource[:-1] if wildcard else resource
    if body.startswith(_BUCKET_PREFIX):
        _check_bucket_resource(body[len(_BUCKET_PREFIX) :], wildcard, shown)
    elif body.startswith(_BLOB_PREFIX):
        key = body[len(_BLOB_PREFIX) :]
        if not (_is_blob_key_prefix(key) if wildcard else is_valid_blob_key(key)):
            raise InvalidScopeError(f"invalid blob key in scope {shown!r}")
    elif body or not wildcard:
        raise InvalidScopeError(f"unknown resource in scope {shown!r}")
    return Scope(action, body, wildcard)


def covers(granted: Scope, required: Scope) -> bool:
    """Whether ``granted`` covers everything ``required`` covers.

    The action must be equal or ``granted``'s must be ``*``; a wildcard ``granted`` covers a
    ``required`` whose resource text starts with its prefix (wildcard or not); a literal
    ``granted`` covers only the identical literal resource.

    Args:
        granted: a scope the caller holds.
        required: the scope needed (e.g. from ``required_scope_for``) or requested.

    Returns:
        True if covered.
    """
    if granted.action != "*" and granted.action != required.action:
        return False
    if granted.wildcard:
        return required.resource.startswith(granted.resource)
    return not required.wildcard and required.resource == granted.resource


def _dedupe(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    return tuple(dict.fromkeys(scopes))


@attrs.frozen
class Grants:
    """An ordered, duplicate-free set of scopes held by an app or a token.

    Attributes:
        scopes: the scopes, in the order first given.
    """

    scopes: tuple[Scope, ...] = attrs.field(converter=_dedupe)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Grants:
        """Parse scope strings.

        Raises:
            InvalidScopeError: one of them does not parse.
        """
        return cls(tuple(parse_scope(t) for t in texts))

    @classmethod
    def from_claim(cls, claim: str) -> Grants:
        """Parse a token's ``scope`` claim (scopes separated by single spaces).

        Raises:
            InvalidScopeError: the claim is empty or one of its scopes does not parse.
        """
        if not isinstance(claim, str) or not claim:
            raise InvalidScopeError("empty scope claim")
        return cls.parse(claim.split(" "))

    def to_claim(self) -> str:
        """The space-separated ``scope`` claim for these scopes."""
        return " ".join(str(s) for s in self.scopes)

    def strings(self) -> tuple[str, ...]:
        """The scopes as strings, in order."""
        return tuple(str(s) for s in self.scopes)

    def __len__(self) -> int:
        return len(self.scopes)

    def __iter__(self) -> Iterator[Scope]:
        return iter(self.scopes)

    def allows(self, required: Scope) -> bool:
        """Whether some held scope covers ``required`` (see :func:`covers`)."""
        return any(covers(g, required) for g in self.scopes)

    def permits(self, action: str, resource: str) -> bool:
        """Whether the held scopes allow ``action`` on the *concrete* resource ``resource``.

        ``resource`` is compared literally (a ``*`` in it is just a character). Build it with
        ``bucket_resource``, ``object_resource`` or ``blob_resource`` so that an untrusted
        bucket name cannot smuggle in a ``/``.

        Args:
            action: ``read``, ``write``, ``delete`` or ``list`` (``*`` asks for all of them).
            resource: e.g. ``bucket:photos`` or ``bucket:photos/cat.jpg``.

        Raises:
            InvalidScopeError: ``action`` is not an action.
        """
        return self.allows(Scope(action, resource, False))


def _parse_granted(granted: Iterable[Scope | str]) -> list[Scope]:
    if isinstance(granted, (set, frozenset)):
        granted = sorted(granted, key=str)  # a stable order for unordered grant sets
    result = []
    for g in granted:
        if isinstance(g, Scope):
            result.append(g)
            continue
        try:
            result.append(parse_scope(g))
        except InvalidScopeError as exc:
            logger.warning("ignoring a stored grant that does not parse: %s", exc)
    return result


def narrow_scopes(granted: Iterable[Scope | str], requested: Iterable[str]) -> Grants:
    """The scopes a new token carries (API.md, "AuthService").

    A token carries the requested scopes that the granted ones cover (a requested scope may be
    narrower than a grant: ``read:bucket:photos/cat.jpg`` under ``read:bucket:photos/*``); no
    scopes requested means all granted ones. Stored grants that do not parse are ignored
    (and logged), never widened.

    Args:
        granted: the app's granted scopes (strings as stored, or parsed scopes); a set is
            taken in sorted order, any other iterable in its own order.
        requested: the scope strings the client asked for, possibly empty.

    Returns:
        The token's scopes, requested order kept, duplicates dropped; never empty.

    Raises:
        InvalidScopeError: a requested scope does not parse (checked before anything else).
        PermissionDeniedError: no scope is left.
        TypeError: ``requested`` is a single string.
    """
    if isinstance(requested, (str, bytes)):
        raise TypeError("requested scopes must be a collection of strings, not one string")
    wanted = [parse_scope(r) for r in requested]
    held = _parse_granted(granted)
    if not wanted:
        result = Grants(tuple(held))
        if not result.scopes:
            raise PermissionDeniedError("the app holds no grants")
        return result
    result = Grants(tuple(w for w in wanted if any(covers(g, w) for g in held)))
    if not result.scopes:
        raise PermissionDeniedError("none of the requested scopes is granted to this app")
    return result
