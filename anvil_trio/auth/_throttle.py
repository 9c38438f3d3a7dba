"""Sign-in throttling: failed ``GetAccessToken`` attempts back off, per client id and per peer.

A pure, sans-IO state machine: every method takes ``now`` (seconds on the caller's clock; the
authenticator uses ``trio.current_time()``), nothing here sleeps, reads a clock or does I/O.

Rules:

1. **Per client id.** Each failed attempt for a client id (wrong secret *or* unknown id — they
   are indistinguishable) steps that id's failure :class:`~anvil_trio._schedule.Schedule` once,
   at the failure time; the decision ``Continue(at)`` makes ``at`` the id's *not-before* time.
   An attempt for the id before its not-before is refused at once, with no scrypt work. A
   success clears the id's record. Refused attempts are not failures: they neither extend nor
   reset the backoff.
2. **Per peer.** The peer is the client's IP address (IPv6 grouped by its /64, an IPv4-mapped
   address taken as IPv4; see :func:`peer_key`). Every failure from a peer also steps the peer's
   own schedule. A peer's backoff refuses only attempts for client ids that have failures on
   record ("suspect" ids). An attempt for a client id with no failures on record is never
   refused by the throttle — whatever its peer did — so a correct secret for another app is
   never delayed by an attack on one app, even from the same address (behind a NAT or, in
   tests, 127.0.0.1). What the peer dimension bounds is the failure rate of one address across
   many suspect ids: rotating over k known ids buys no k-fold guessing rate.
3. **One verification at a time for a suspect id.** :meth:`SignInThrottle.begin` claims a
   suspect id; while it is claimed, further attempts for it are refused (they would race the
   result that decides the id's backoff). Ids with no failures are never claimed, so an app's
   concurrent workers sign in in parallel.
4. **Bounded memory.** Each dimension tracks at most ``max_keys`` keys. A record is forgotten
   once ``forget_after`` seconds passed since its last failure and its not-before has passed;
   when a new key arrives and the book is full, forgotten records go first, then the record
   whose last failure is oldest. A spray of random client ids therefore costs one scrypt each
   (bounded by the authenticator's hashing slots) and evicts only old records.
5. **Schedule ends and long runs.** If a schedule says ``DONE`` the key is refused until its
   record is forgotten (``not_before = now + forget_after``). A key's schedule is stepped for
   its first :data:`MAX_STEPS` consecutive failures; after that the last delay repeats (no
   schedule arithmetic can overflow under a months-long attack).

The default schedule (:func:`failure_schedule`) lets ``free`` failures through, then backs off
exponentially up to a cap. After the ``n``-th consecutive failure (n = 1, 2, ...)::

    delay(n) = 0                                     for n <= free
    delay(n) = min(base * 2 ** (n - free - 1), cap)  for n > free

i.e. ``Schedule.recurs(free).and_then(Schedule.exponential(base) | Schedule.spaced(cap))``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import attrs

from .._schedule import Continue, Schedule

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_FORGET_AFTER",
    "DEFAULT_FREE_FAILURES",
    "DEFAULT_MAX_TRACKED",
    "DEFAULT_PEER_FREE_FAILURES",
    "MAX_STEPS",
    "Admission",
    "FailureBook",
    "SignInThrottle",
    "failure_schedule",
    "peer_key",
]

DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_FREE_FAILURES = 2
DEFAULT_PEER_FREE_FAILURES = 10
DEFAULT_MAX_TRACKED = 10_000
DEFAULT_FORGET_AFTER = 900.0

#: Consecutive failures of one key for which its schedule is stepped (rule 5).
MAX_STEPS = 64


def failure_schedule(
    *, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_MAX,
    free: int = DEFAULT_FREE_FAILURES,
) -> Schedule:
    """The backoff after consecutive failures: ``free`` at once, then ``min(base * 2**k, cap)``.

    Args:
        base: the first delay, in seconds.
        cap: the longest delay, in seconds.
        free: failures that cost no delay (typos).

    Returns:
        ``Schedule.recurs(free).and_then(Schedule.exponential(base) | Schedule.spaced(cap))``.

    Raises:
        ValueError: a negative ``free``, ``base`` or ``cap``.
    """
    return Schedule.recurs(free).and_then(Schedule.exponential(base) | Schedule.spaced(cap))


def peer_key(peer: Any) -> str | None:
    """The key a peer address is throttled under, or ``None`` for no peer dimension.

    ``peer`` is what ``getpeername()`` returned: ``(host, port, ...)`` for TCP. IPv4 addresses
    are taken whole, IPv6 ones by their /64 network (one subscriber usually holds a whole /64),
    an IPv4-mapped IPv6 address as its IPv4 address. A Unix socket path, ``None`` or anything
    else without a host gives ``None``.
    """
    if isinstance(peer, (tuple, list)) and peer:
        host = peer[0]
    else:
        return None
    if not isinstance(host, str) or not host:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.define
class _Record:
    failures: int
    state: Any
    not_before: float
    last_failure: float
    last_delay: float


@attrs.define
class FailureBook:
    """Consecutive failures per key, each key backing off on ``schedule`` (rules 1, 4, 5).

    Args:
        schedule: stepped once per failure of a key; ``Continue(at)`` sets its not-before.
        max_keys: most keys tracked at once (at least 1).
        forget_after: seconds after a key's last failure (and past its not-before) at which
            its record is forgotten.
    """

    schedule: Schedule
    max_keys: int = attrs.field(default=DEFAULT_MAX_TRACKED, kw_only=True)
    forget_after: float = attrs.field(default=DEFAULT_FORGET_AFTER, kw_only=True)
    _records: OrderedDict[Hashable, _Record] = attrs.field(init=False, factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {self.max_keys}")
        if not (math.isfinite(self.forget_after) and self.forget_after > 0):
            raise ValueError(f"forget_after must be positive, got {self.forget_after}")

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._records

    def _forgotten(self, record: _Record, now: float) -> bool:
        return now >= record.last_failure + self.forget_after and now >= record.not_before

    def _live(self, key: Hashable, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self._forgotten(record, now):
            del self._records[key]
            return None
        return record

    def failures(self, key: Hashable, *, now: float) -> int:
        """Consecutive failures on record for ``key`` (0 if none or forgotten)."""
        record = self._live(key, now)
        return 0 if record is None else record.failures

    def not_before(self, key: Hashable, *, now: float) -> float:
        """When ``key`` may next be tried; ``<= now`` means at once (``-inf`` if untracked)."""
        record = self._live(key, now)
        return -math.inf if record is None else record.not_before

    def record_failure(self, key: Hashable, *, now: float) -> float:
        """Count a failure of ``key`` at ``now``; returns its new not-before time."""
        record = self._live(key, now)
        if record is None:
            self._make_room(now)
            record = _Record(0, self.schedule.initial, -math.inf, now, 0.0)
            self._records[key] = record
        else:
            self._records.move_to_end(key)
        record.failures += 1
        record.last_failure = now
        if record.failures <= MAX_STEPS:
            record.state, _, decision = self.schedule.step(now, None, record.state)
            if isinstance(decision, Continue):
                record.last_delay = max(0.0, decision.at - now)
            else:
                record.last_delay = self.forget_after
        record.not_before = now + record.last_delay
        return record.not_before

    def clear(self, key: Hashable) -> None:
        """Forget ``key``'s failures (after a success)."""
        self._records.pop(key, None)

    def _make_room(self, now: float) -> None:
        # Oldest last failure first: drop forgotten records from the front, then the oldest.
        while self._records:
            key, record = next(iter(self._records.items()))
            if self._forgotten(record, now) or len(self._records) >= self.max_keys:
                del self._records[key]
            else:
                break


@attrs.frozen
class Admission:
    """Whether an attempt may go on to scrypt.

    Attributes:
        allowed: go on.
        reason: why not: ``"client"`` (the id backs off), ``"peer"`` (the address backs off
            and the id is suspect) or ``"busy"`` (the suspect id is being checked); ``""``
            when allowed.
        retry_at: when refused, the earliest time worth trying again (caller's clock).
    """

    allowed: bool
    reason: str = ""
    retry_at: float = -math.inf


_ALLOWED = Admission(True)


@attrs.define
class SignInThrottle:
    """Rules 1-4 over two :class:`FailureBook`\\ s: client ids and peers.

    Args:
        clients: failures per client id.
        peers: failures per peer key (see :func:`peer_key`).
    """

    clients: FailureBook = attrs.field(factory=lambda: FailureBook(failure_schedule()))
    peers: FailureBook = attrs.field(
        factory=lambda: FailureBook(failure_schedule(free=DEFAULT_PEER_FREE_FAILURES))
    )
    _claimed: set[str] = attrs.field(init=False, factory=set)

    @classmethod
    def from_settings(
        cls,
        *,
        base: float = DEFAULT_BACKOFF_BASE,
        cap: float = DEFAULT_BACKOFF_MAX,
        free: int = DEFAULT_FREE_FAILURES,
        peer_free: int = DEFAULT_PEER_FREE_FAILURES,
        max_keys: int = DEFAULT_MAX_TRACKED,
        forget_after: float = DEFAULT_FORGET_AFTER,
    ) -> SignInThrottle:
        """A throttle with :func:`failure_schedule` in both dimensions (see its formula).

        Raises:
            ValueError: ``forget_after`` shorter than ``cap`` (a key in backoff would be
                forgotten), or an invalid value.
        """
        if forget_after < cap:
            raise ValueError("forget_after must be at least the backoff cap")
        return cls(
            FailureBook(failure_schedule(base=base, cap=cap, free=free),
                        max_keys=max_keys, forget_after=forget_after),
            FailureBook(failure_schedule(base=base, cap=cap, free=peer_free),
                        max_keys=max_keys, forget_after=forget_after),
        )

    def check(self, client_id: str, peer: str | None, *, now: float) -> Admission:
        """Whether an attempt for ``client_id`` from ``peer`` may go on; changes nothing
        (except dropping forgotten records)."""
        if self.clients.failures(client_id, now=now) == 0:
            return _ALLOWED  # rule 2: an id with a clean record is never throttled
        client_at = self.clients.not_before(client_id, now=now)
        peer_at = -math.inf if peer is None else self.peers.not_before(peer, now=now)
        if client_at > now or peer_at > now:
            reason = "client" if client_at >= peer_at else "peer"
            return Admission(False, reason, max(client_at, peer_at))
        if client_id in self._claimed:
            return Admission(False, "busy", now)
        return _ALLOWED

    def begin(self, client_id: str, peer: str | None, *, now: float) -> Admission:
        """:meth:`check`, and when allowed claim a suspect id until :meth:`finish` (rule 3)."""
        admission = self.check(client_id, peer, now=now)
        if admission.allowed and self.clients.failures(client_id, now=now) > 0:
            self._claimed.add(client_id)
        return admission

    def finish(self, client_id: str, peer: str | None, ok: bool | None, *, now: float) -> None:
        """Record the outcome of an attempt :meth:`begin` allowed.

        Args:
            ok: ``True`` success (clears the id), ``False`` failure (steps the id's and the
                peer's schedules), ``None`` no verdict (cancelled, storage down): only the
                claim is released.
        """
        self._claimed.discard(client_id)
        if ok is True:
            self.clients.clear(client_id)
        elif ok is False:
            self.clients.record_failure(client_id, now=now)
            if peer is not None:
                self.peers.record_failure(peer, now=now)
