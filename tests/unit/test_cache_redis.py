"""RedisCache against a real throwaway redis-server: round trip, TTL, sharing, outages and recovery."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from app.cache import CachedAnswer, RedisCache
from app.cache.answer import decode_answer, encode_answer
from app.cache.redis_backend import redact_url
from tests.fakes.net import free_port, listen_port
from tests.fakes.redis_server import RedisServer

PREFIX = "portico:cache:"
BINARY = bytes(range(256)) * 64 + b"\n\r\n\x00 tail"
GZIP_JSON = (("content-type", "application/json"), ("content-encoding", "gzip"))


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """Return a plain client on an emptied database."""
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def cache_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the backend's log directly: the app's own logging set-up may stop propagation to root."""
    logger = logging.getLogger("app.cache.redis_backend")
    saved = (logger.level, logger.propagate, logger.disabled)
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate, logger.disabled = False, False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.level, logger.propagate, logger.disabled = saved


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno == logging.WARNING]


def test_round_trip_keeps_binary_body_status_and_headers(server: RedisServer, raw: redis.Redis) -> None:
    cache = RedisCache(server.url, max_entry_bytes=1 << 20)
    stored = CachedAnswer(203, GZIP_JSON, BINARY)
    cache.put("k1", stored, 60)
    assert cache.get("k1") == stored
    assert cache.get("missing") is None
    assert raw.exists(PREFIX + "k1")
    cache.close()


def test_empty_body_round_trips(server: RedisServer, raw: redis.Redis) -> None:
    cache = RedisCache(server.url, max_entry_bytes=1 << 20)
    cache.put("k", CachedAnswer(204, (), b""), 60)
    assert cache.get("k") == CachedAnswer(204, (), b"")


def test_ttl_is_set_with_set_ex(server: RedisServer, raw: redis.Redis) -> None:
    cache = RedisCache(server.url, max_entry_bytes=1 << 20)
    cache.put("short", CachedAnswer(200, (), b"a"), 30)
    cache.put("long", CachedAnswer(200, (), b"b"), 86_400)
    assert 28 <= raw.ttl(PREFIX + "short") <= 30
    assert 86_398 <= raw.ttl(PREFIX + "long") <= 86_400


def test_size_rule_and_zero_max_age(server: RedisServer, raw: redis.Redis) -> None:
    cache = RedisCache(server.url, max_entry_bytes=2_000)
    cache.put("big", CachedAnswer(200, (), b"x" * 2_000), 60)
    cache.put("zero", CachedAnswer(200, (), b"x"), 0)
    assert cache.get("big") is None and cache.get("zero") is None
    assert raw.dbsize() == 0
    cache.put("k", CachedAnswer(200, (), b"old"), 60)
    cache.put("k", CachedAnswer(200, (), b"x" * 5_000), 60)  # too big: the stale answer goes too
    assert cache.get("k") is None


def test_two_instances_share_entries(server: RedisServer, raw: redis.Redis) -> None:
    first, second = RedisCache(server.url, 1 << 20), RedisCache(server.url, 1 << 20)
    stored = CachedAnswer(200, GZIP_JSON, BINARY)
    first.put("shared", stored, 60)
    assert second.get("shared") == stored


def test_key_prefix_separates_caches(server: RedisServer, raw: redis.Redis) -> None:
    first = RedisCache(server.url, 1 << 20, key_prefix="a:")
    second = RedisCache(server.url, 1 << 20, key_prefix="b:")
    first.put("k", CachedAnswer(200, (), b"a"), 60)
    assert second.get("k") is None and raw.exists("a:k")


def test_unreadable_entry_is_a_miss(server: RedisServer, raw: redis.Redis,
                                    cache_log: pytest.LogCaptureFixture) -> None:
    cache = RedisCache(server.url, 1 << 20)
    raw.set(PREFIX + "junk", b"not an entry")
    raw.set(PREFIX + "junk2", b'{"v":99}\nbody')
    assert cache.get("junk") is None and cache.get("junk2") is None
    assert len(warnings_in(cache_log)) == 1


def test_redis_down_gives_misses_and_one_warning_per_interval(cache_log: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    url = f"redis://portico:s3cret-pass@127.0.0.1:{free_port()}/0"
    cache = RedisCache(url, 1 << 20, clock=clock, warn_interval_s=60)
    for _ in range(20):  # each call is past the retry interval, so each really tries Redis and fails
        assert cache.get("k") is None
        cache.put("k", CachedAnswer(200, (), b"x"), 60)
        clock.advance(1.5)
    assert clock.now - 5000 < 60
    assert len(warnings_in(cache_log)) == 1
    clock.advance(60)
    assert cache.get("k") is None
    assert len(warnings_in(cache_log)) == 2
    assert "s3cret-pass" not in cache_log.text
    assert "portico:***@127.0.0.1" in cache_log.text


def test_redis_comes_back(cache_log: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with RedisServer() as own:
        cache = RedisCache(own.url, 1 << 20, clock=clock)
        cache.put("k", CachedAnswer(200, (), b"before"), 60)
        own.stop()
        assert cache.get("k") is None
        cache.put("k", CachedAnswer(200, (), b"lost"), 60)
        own.start()
        redis.Redis.from_url(own.url).set(PREFIX + "k", encode_answer(CachedAnswer(200, (), b"after")))
        # Right after a failure Redis rests (each call would otherwise pay a timeout while it is away).
        assert cache.get("k") is None
        clock.advance(1.1)
        assert cache.get("k") == CachedAnswer(200, (), b"after")
        cache.put("k2", CachedAnswer(200, (), b"again"), 60)
        assert cache.get("k2") == CachedAnswer(200, (), b"again")
        cache.close()
    assert len(warnings_in(cache_log)) == 1
    assert any("answers again" in record.getMessage() for record in cache_log.records)


def test_unresponsive_redis_costs_about_one_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never answers
        silent.bind(("127.0.0.1", listen_port()))
        silent.listen(8)
        port = silent.getsockname()[1]
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", 1 << 20, op_timeout_s=0.1, connect_timeout_s=0.1)
        started = time.perf_counter()
        assert cache.get("k") is None
        cache.put("k", CachedAnswer(200, (), b"x"), 60)  # skipped at once: Redis is resting
        assert cache.get("k") is None
        assert time.perf_counter() - started < 0.5


def test_encoding_is_compact_and_binary_safe() -> None:
    stored = CachedAnswer(200, GZIP_JSON, BINARY)
    blob = encode_answer(stored)
    assert blob.endswith(b"\n" + BINARY)
    assert len(blob) - len(BINARY) < 120
    assert decode_answer(blob) == stored
    with pytest.raises(ValueError):
        decode_answer(b"no newline")


@pytest.mark.parametrize("url, shown", [
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://pw@host/1", "rediss://***@host/1"),
    ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_missing_redis_server_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import redis_server

    monkeypatch.setattr(redis_server.shutil, "which", lambda _name: None)
    monkeypatch.setattr(redis_server.os, "access", lambda _path, _mode: False)
    with pytest.raises(RuntimeError, match=r"apt-get install redis-server"):
        RedisServer()
