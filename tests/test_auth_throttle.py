"""Sign-in throttling: the pure failure tracker, the authenticator's use of it, and the wire."""

from __future__ import annotations

import hashlib
import threading
import time

import attrs
import grpc
import pytest
import trio
import trio.testing

from anvil_trio import Config
from anvil_trio._config import ConfigError
from anvil_trio._proto.anvil.v1 import auth_pb2, auth_pb2_grpc
from anvil_trio._schedule import Schedule
from anvil_trio.auth import (
    AppRecord,
    Authenticator,
    FailureBook,
    KeyRing,
    ScryptParams,
    SignInThrottle,
    TooManyAttemptsError,
    UnauthenticatedError,
    failure_schedule,
    generate_client_id,
    generate_client_secret,
    hash_secret,
    peer_key,
)
from anvil_trio.auth._throttle import MAX_STEPS
from anvil_trio.testing import open_test_server

FAST = ScryptParams(n=16, r=1, p=1)
T0 = 1_700_000_000.0
HOME = ("127.0.0.1", 40000)
CALL_TIMEOUT = 15.0


# --- the pure tracker: explicit times, no clock ---


def delays_after_failures(book: FailureBook, key: str, count: int, *, now: float) -> list[float]:
    return [book.record_failure(key, now=now) - now for _ in range(count)]


def test_default_schedule_follows_the_documented_formula():
    """After the n-th failure: 0 while n <= free, then min(base * 2**(n-free-1), cap)."""
    book = FailureBook(failure_schedule(base=0.5, cap=30.0, free=2))
    got = delays_after_failures(book, "app", 10, now=100.0)
    assert got == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert book.not_before("app", now=100.0) == 130.0
    assert book.failures("app", now=100.0) == 10


def test_no_free_failures_backs_off_from_the_first():
    """free=0: the first failure already costs ``base``."""
    book = FailureBook(failure_schedule(base=1.0, cap=4.0, free=0))
    assert delays_after_failures(book, "k", 4, now=0.0) == [1.0, 2.0, 4.0, 4.0]


def test_success_clears_a_client_and_refusals_do_not_extend():
    """A refused check changes nothing; a success forgets the id's failures."""
    throttle = SignInThrottle.from_settings(base=1.0, cap=8.0, free=0)
    throttle.finish("a", "p", False, now=10.0)
    assert throttle.check("a", "p", now=10.5) == throttle.check("a", "p", now=10.5)
    refused = throttle.check("a", "p", now=10.5)
    assert (refused.allowed, refused.reason, refused.retry_at) == (False, "client", 11.0)
    assert throttle.check("a", "p", now=11.0).allowed
    assert throttle.begin("a", "p", now=11.0).allowed
    throttle.finish("a", "p", True, now=11.0)
    assert "a" not in throttle.clients
    throttle.finish("a", "p", False, now=11.0)
    assert throttle.clients.not_before("a", now=11.0) == 12.0  # counting starts over


def test_peer_backoff_refuses_only_suspect_ids():
    """An address spraying ids backs off, but an id with a clean record is always admitted."""
    throttle = SignInThrottle.from_settings(base=1.0, cap=30.0, free=2, peer_free=3)
    for n in range(6):
        throttle.finish(f"spray-{n}", "10.0.0.1", False, now=0.0)
    assert throttle.peers.not_before("10.0.0.1", now=0.0) == 4.0
    # Each sprayed id failed once (inside its own free failures), yet the address backs off.
    refused = throttle.check("spray-0", "10.0.0.1", now=1.0)
    assert (refused.allowed, refused.reason, refused.retry_at) == (False, "peer", 4.0)
    # Another app from the same address, never failed: admitted.
    assert throttle.check("app-b", "10.0.0.1", now=1.0).allowed
    # The same suspect id from another address: its own record allows it.
    assert throttle.check("spray-0", "10.0.0.2", now=1.0).allowed
    assert throttle.check("spray-0", "10.0.0.1", now=4.0).allowed


def test_a_suspect_id_is_checked_one_attempt_at_a_time():
    """begin claims an id that has failures; a second attempt is busy until finish."""
    throttle = SignInThrottle()
    throttle.finish("a", None, False, now=0.0)
    assert throttle.begin("a", None, now=0.0).allowed
    busy = throttle.begin("a", None, now=0.0)
    assert (busy.allowed, busy.reason) == (False, "busy")
    throttle.finish("a", None, None, now=0.0)  # no verdict: only the claim goes
    assert throttle.clients.failures("a", now=0.0) == 1
    assert throttle.begin("a", None, now=0.0).allowed


def test_a_clean_id_is_never_claimed():
    """Concurrent attempts of an app with no failures all go on."""
    throttle = SignInThrottle()
    assert all(throttle.begin("b", "p", now=0.0).allowed for _ in range(5))


def test_memory_is_bounded_under_a_spray():
    """10,000 random client ids from 10,000 addresses: at most max_keys tracked per dimension."""
    throttle = SignInThrottle.from_settings(max_keys=100)
    for n in range(10_000):
        throttle.finish(f"id-{n}", f"10.{n // 256 % 256}.{n % 256}.1", False, now=n * 0.001)
    assert len(throttle.clients) == 100
    assert len(throttle.peers) == 100
    assert "id-9999" in throttle.clients and "id-0" not in throttle.clients


def test_records_are_forgotten_after_the_quiet_period():
    """A record is dropped forget_after seconds after the last failure, once not in backoff."""
    book = FailureBook(failure_schedule(free=0), forget_after=60.0)
    book.record_failure("old", now=0.0)
    book.record_failure("new", now=50.0)
    assert book.failures("old", now=59.9) == 1
    assert book.failures("old", now=60.0) == 0
    assert "old" not in book
    book.record_failure("third", now=200.0)  # making room drops the forgotten "new" first
    assert "new" not in book and len(book) == 1


def test_a_finished_schedule_refuses_until_forgotten():
    """A schedule that says DONE keeps the key refused for forget_after seconds."""
    book = FailureBook(Schedule.recurs(1), forget_after=600.0)
    assert book.record_failure("k", now=0.0) == 0.0
    assert book.record_failure("k", now=1.0) == 601.0


def test_a_long_attack_never_overflows_the_schedule():
    """Thousands of consecutive failures keep the cap (2.0**1100 would overflow)."""
    book = FailureBook(failure_schedule(base=0.5, cap=30.0, free=2))
    for n in range(2_000):
        at = book.record_failure("k", now=float(n))
    assert at - 1999.0 == 30.0
    assert book.failures("k", now=1999.0) == 2_000 > MAX_STEPS


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("127.0.0.1", 5000), "127.0.0.1"),
        (("2001:db8::1", 443, 0, 0), "2001:db8::/64"),
        (("2001:db8::ffff:2", 1, 0, 0), "2001:db8::/64"),
        (("::ffff:10.1.2.3", 1, 0, 0), "10.1.2.3"),
        (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
        ("/run/anvil.sock", None),
        (None, None),
        (("", 0), None),
    ],
)
def test_peer_keys(peer, key):
    """Peers are keyed by IPv4 address or IPv6 /64; sockets without a host have no key."""
    assert peer_key(peer) == key


def test_config_validates_the_throttle_keys():
    """Defaults are sane; forgetting faster than the backoff cap is refused."""
    config = Config()
    assert (config.token_hash_concurrency, config.token_hash_wait) == (2, 1.0)
    assert (config.token_free_failures, config.token_backoff_max) == (2, 30.0)
    with pytest.raises(ConfigError):
        Config.from_mapping({"token_failures_forget": 10.0})
    with pytest.raises(ConfigError):
        Config.from_mapping({"token_hash_wait": -1})


# --- the authenticator, on the Trio clock ---


@attrs.define
class MemoryApps:
    """A dict-backed AppStore."""

    apps: dict[str, AppRecord] = attrs.Factory(dict)

    async def get_app(self, client_id: str) -> AppRecord | None:
        await trio.lowlevel.checkpoint()
        return self.apps.get(client_id)

    def add(self) -> tuple[str, str]:
        client_id, secret = generate_client_id(), generate_client_secret()
        self.apps[client_id] = AppRecord("acme", hash_secret(secret, params=FAST), ["*:*"])
        return client_id, secret


def make(apps: MemoryApps, **kwargs: object) -> Authenticator:
    kwargs.setdefault("scrypt_params", FAST)
    return Authenticator(KeyRing.from_secrets([("k1", b"k" * 32)]), apps, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts scrypt runs (the real function still runs)."""
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: object) -> bytes:
        calls.append(1)
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


async def outcome(auth: Authenticator, cid: str, secret: str, peer=HOME) -> str:
    try:
        await auth.issue_token(cid, secret, now=T0, peer=peer)
    except UnauthenticatedError:
        return "unauthenticated"
    except TooManyAttemptsError:
        return "throttled"
    return "ok"


async def test_hammering_one_app_costs_no_scrypt_after_a_few(autojump_clock, scrypt_calls):
    """50 wrong secrets in a row: 3 reach scrypt (2 free + 1), the other 47 are refused at once."""
    apps = MemoryApps()
    cid, _ = apps.add()
    auth = make(apps)
    scrypt_calls.clear()
    start = trio.current_time()
    results = [await outcome(auth, cid, "wrong") for _ in range(50)]
    assert results == ["unauthenticated"] * 3 + ["throttled"] * 47
    assert len(scrypt_calls) == 3
    assert trio.current_time() - start < 0.5  # nothing waited


async def test_refusal_says_when_to_retry_and_the_right_secret_then_works(autojump_clock):
    """The refusal gives the retry time; after it the correct secret succeeds and clears."""
    apps = MemoryApps()
    cid, secret = apps.add()
    auth = make(apps)
    for _ in range(4):
        await outcome(auth, cid, "wrong")  # 3 failures (the 3rd starts 0.5 s), 1 refused
    with pytest.raises(TooManyAttemptsError) as info:
        await auth.issue_token(cid, secret, now=T0, peer=HOME)
    assert info.value.retry_after == pytest.approx(0.5)
    assert "retry in 0.5 s" in info.value.message and "client id" in info.value.message
    await trio.sleep(info.value.retry_after)
    assert await outcome(auth, cid, secret) == "ok"
    # Cleared: the next failures start from the free ones again.
    assert [await outcome(auth, cid, "wrong") for _ in range(3)] == ["unauthenticated"] * 3


async def test_unknown_ids_are_throttled_indistinguishably(autojump_clock, scrypt_calls):
    """An unknown client id costs the same scrypt and is refused with the same wording."""
    apps = MemoryApps()
    cid, _ = apps.add()
    ghost = generate_client_id()
    auth = make(apps)
    scrypt_calls.clear()
    messages = []
    for client in (cid, ghost):
        assert [await outcome(auth, client, "wrong") for _ in range(3)] == ["unauthenticated"] * 3
        with pytest.raises(TooManyAttemptsError) as info:
            await auth.issue_token(client, "wrong", now=T0, peer=HOME)
        messages.append(info.value.message)
    assert messages[0] == messages[1]
    assert len(scrypt_calls) == 6


async def test_another_app_is_not_delayed_by_an_attack_from_the_same_address(autojump_clock):
    """While A is hammered from 127.0.0.1, B's correct secret from 127.0.0.1 is served at once."""
    apps = MemoryApps()
    cid_a, _ = apps.add()
    cid_b, secret_b = apps.add()
    auth = make(apps, throttle=SignInThrottle.from_settings(peer_free=0))
    attack_started = trio.Event()
    b_latency: list[float] = []

    async def attacker() -> None:
        for n in range(50):
            await outcome(auth, cid_a, "wrong")
            if n == 5:
                attack_started.set()
            await trio.sleep(0.01)

    async def app_b() -> None:
        await attack_started.wait()
        assert auth.throttle.peers.not_before("127.0.0.1", now=trio.current_time()) > (
            trio.current_time()
        )  # the address itself is backing off
        # Real time: the mock clock may jump while a worker thread hashes.
        start = time.monotonic()
        assert await outcome(auth, cid_b, secret_b) == "ok"
        b_latency.append(time.monotonic() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attacker)
        nursery.start_soon(app_b)
    assert b_latency and b_latency[0] < 2.0


async def test_spraying_ids_costs_one_scrypt_each_and_suspects_back_off(
    autojump_clock, scrypt_calls
):
    """30 random ids from one address: one scrypt each; retrying one hits the address backoff."""
    apps = MemoryApps()
    cid_b, secret_b = apps.add()
    auth = make(apps)
    scrypt_calls.clear()
    sprayed = [generate_client_id() for _ in range(30)]
    assert {await outcome(auth, ghost, "guess") for ghost in sprayed} == {"unauthenticated"}
    assert len(scrypt_calls) == 30
    with pytest.raises(TooManyAttemptsError) as info:
        await auth.issue_token(sprayed[0], "guess", now=T0, peer=HOME)
    assert "from this address" in info.value.message
    assert len(scrypt_calls) == 30
    assert await outcome(auth, cid_b, secret_b) == "ok"
    assert await outcome(auth, sprayed[0], "guess", peer=("10.9.9.9", 1)) == "unauthenticated"


async def test_a_burst_for_one_id_reaches_scrypt_only_a_few_times(scrypt_calls):
    """40 concurrent wrong attempts for one id: at most free + slots reach scrypt."""
    apps = MemoryApps()
    cid, _ = apps.add()
    auth = make(apps, hash_concurrency=2)
    scrypt_calls.clear()
    results: list[str] = []

    async def one() -> None:
        results.append(await outcome(auth, cid, "wrong"))

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(one)
    assert len(scrypt_calls) <= 2 + 2
    assert results.count("unauthenticated") == len(scrypt_calls)
    assert results.count("throttled") == 40 - len(scrypt_calls)


async def test_no_free_slot_within_the_wait_is_resource_exhausted(monkeypatch, autojump_clock):
    """With every hashing slot busy for longer than hash_wait, the next attempt is refused."""
    apps = MemoryApps()
    cid, secret = apps.add()
    auth = make(apps, hash_concurrency=1, hash_wait=1.0)
    release = threading.Event()
    real = hashlib.scrypt

    def held(password: bytes, **kwargs: object) -> bytes:
        release.wait(timeout=10)
        return real(password, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", held)
    first: list[str] = []

    async def holder() -> None:
        first.append(await outcome(auth, cid, secret))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(TooManyAttemptsError) as info:
            await auth.issue_token(cid, secret, now=T0, peer=HOME)
        assert trio.current_time() - start == pytest.approx(1.0)
        assert info.value.message == "too many sign-in attempts at once; retry later"
        release.set()
    assert first == ["ok"]


# --- end to end: grpcio against a real server ---


def get_token(port: int, client_id: str, secret: str):
    """One blocking GetAccessToken; returns (code, message, trailers, seconds)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=CALL_TIMEOUT)
        return call(auth_pb2_grpc.AuthServiceStub(chan), client_id, secret)


def call(stub, client_id: str, secret: str):
    start = time.monotonic()
    try:
        stub.GetAccessToken(
            auth_pb2.GetAccessTokenRequest(client_id=client_id, client_secret=secret),
            timeout=CALL_TIMEOUT,
        )
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), dict(exc.trailing_metadata() or ()), (
            time.monotonic() - start
        )
    return grpc.StatusCode.OK, "", {}, time.monotonic() - start


def hammer(port: int, client_id: str, attempts: int, started: threading.Event):
    results = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        grpc.channel_ready_future(chan).result(timeout=CALL_TIMEOUT)
        stub = auth_pb2_grpc.AuthServiceStub(chan)
        for n in range(attempts):
            results.append(call(stub, client_id, "not-the-secret"))
            if n == 5:
                started.set()
    started.set()
    return results


async def test_grpcio_attack_is_throttled_and_other_app_served(tmp_path):
    """Over the wire: A's attacker is throttled fast, B signs in promptly, A later recovers."""
    async with open_test_server(tmp_path, config_overrides={"token_backoff_max": 1.0}) as ts:
        cid_a, secret_a = await ts.make_app(["*:*"])
        cid_b, secret_b = await ts.make_app(["*:*"])
        started = threading.Event()
        attack: list = []
        b_result: list = []

        async def attacker() -> None:
            attack.extend(await trio.to_thread.run_sync(hammer, ts.port, cid_a, 50, started))

        async def app_b() -> None:
            await trio.to_thread.run_sync(started.wait, CALL_TIMEOUT)
            b_result.append(
                await trio.to_thread.run_sync(get_token, ts.port, cid_b, secret_b)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker)
            nursery.start_soon(app_b)

        codes = [code for code, *_ in attack]
        assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 40
        refused = [r for r in attack if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert all("retry in" in details for _, details, _, _ in refused)
        assert all(0 < int(trailers["retry-after-ms"]) <= 1000
                   for _, _, trailers, _ in refused)
        assert max(seconds for *_, seconds in refused) < 1.0  # refused without waiting
        code, details, _, seconds = b_result[0]
        assert (code, details) == (grpc.StatusCode.OK, "")
        assert seconds < 2.0

        await trio.sleep(1.05)  # past the longest backoff
        code, *_ = await trio.to_thread.run_sync(get_token, ts.port, cid_a, secret_a)
        assert code == grpc.StatusCode.OK
