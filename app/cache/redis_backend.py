"""A response cache shared by processes and hosts through Redis; while Redis is away it answers misses."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.cache.answer import CachedAnswer, decode_answer, encode_answer

log = logging.getLogger(__name__)

# Socket-level failures surface as RedisError from redis-py, but a cache must not raise under any failure.
_REDIS_FAILURES = (redis.RedisError, OSError)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")  # greedy: a password may hold an "@"
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """Return the URL with any password (user-info or ?password=) replaced by ***, for logs and errors."""
    def hide_userinfo(match: re.Match[str]) -> str:
        user, colon, _password = match.group(2).partition(":")
        # A lone user-info field may well be the password written without its leading colon.
        shown = f"{user}:***" if colon and user else "***"
        return f"{match.group(1)}{shown}@"

    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(hide_userinfo, url, count=1))


class RedisCache:
    """Keep answers in Redis under key_prefix + key with a TTL; never raise, never make a call slow."""

    def __init__(self, url: str, max_entry_bytes: int, key_prefix: str = "portico:cache:",
                 warn_interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 connect_timeout_s: float = 0.25, op_timeout_s: float = 0.25,
                 retry_interval_s: float = 1.0) -> None:
        """Create a client for url (no connection is made yet); after a failure Redis rests for retry_interval_s."""
        self.max_entry_bytes = max_entry_bytes
        self._prefix = key_prefix
        self._clock = clock
        self._warn_interval_s = warn_interval_s
        self._retry_interval_s = retry_interval_s
        self._safe_url = redact_url(url)
        self._password = _password_of(url)
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=op_timeout_s,
            # One immediate retry on a broken connection covers a pooled socket that a Redis restart closed;
            # timeouts are not retried, so one operation never waits more than about one timeout.
            retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)),
        )
        self._state_lock = threading.Lock()
        self._skip_until = -math.inf  # while Redis is failing, calls skip it rather than each pay a timeout
        self._failing = False
        self._next_warning_at = -math.inf

    def get(self, key: str) -> CachedAnswer | None:
        """Return the answer stored under key, or None on a miss or any Redis trouble."""
        if self._clock() < self._skip_until:
            return None
        try:
            blob = self._client.get(self._prefix + key)
        except _REDIS_FAILURES as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if blob is None:
            return None
        try:
            if not isinstance(blob, bytes):
                raise TypeError(f"unexpected reply type {type(blob).__name__}")
            return decode_answer(blob)
        except (ValueError, KeyError, TypeError) as exc:  # a foreign or damaged value: serve a miss
            self._warn(f"response cache: unreadable entry in Redis at {self._safe_url} ({exc}); treating it as a miss")
            return None

    def put(self, key: str, answer: CachedAnswer, max_age_s: int) -> None:
        """Store answer under key for max_age_s seconds (SET EX); skip it when too big, short-lived or Redis fails."""
        if self._clock() < self._skip_until:
            return
        name = self._prefix + key
        try:
            if max_age_s <= 0 or answer.size > self.max_entry_bytes:
                self._client.delete(name)  # the newer answer supersedes the older even when it cannot be kept
            else:
                self._client.set(name, encode_answer(answer), ex=math.ceil(max_age_s))
        except _REDIS_FAILURES as exc:
            self._failed(exc)
            return
        self._succeeded()

    def close(self) -> None:
        """Close the connections; never raise."""
        try:
            self._client.close()
        except _REDIS_FAILURES:
            pass

    def _failed(self, exc: BaseException) -> None:
        """Rest Redis for a while and warn, at most once per warn interval."""
        with self._state_lock:
            now = self._clock()
            self._skip_until = now + self._retry_interval_s
            self._failing = True
        detail = f"{type(exc).__name__}: {exc}"
        if self._password:
            detail = detail.replace(self._password, "***")
        self._warn(f"response cache: Redis at {self._safe_url} is unavailable ({detail}); "
                   "serving without the shared cache until it answers again")

    def _succeeded(self) -> None:
        """Note a recovery once, after failures."""
        if not self._failing:  # the common case costs one attribute read
            return
        with self._state_lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("response cache: Redis at %s answers again", self._safe_url)

    def _warn(self, message: str) -> None:
        """Log message as a warning unless one was logged within the warn interval."""
        with self._state_lock:
            now = self._clock()
            if now < self._next_warning_at:
                return
            self._next_warning_at = now + self._warn_interval_s
        log.warning("%s", message)


def _password_of(url: str) -> str | None:
    """Return the password carried by url, if any, so error texts can be scrubbed of it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        return unquote(password)
    match = _QUERY_PASSWORD.search(url)
    if match is None:
        return None
    return unquote(url[match.end(1):match.end()]) or None
