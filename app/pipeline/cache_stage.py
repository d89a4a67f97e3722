"""The response cache around a leaf (docs/cache.md): look up before the call, store a complete 2xx answer after."""

from __future__ import annotations

from collections.abc import Callable

from app.cache import CachedAnswer, ResponseCache
from app.call.answer import Answer
from app.call.context import RequestContext
from app.config.models import CachePolicy

DISABLED, MISS, HIT, REFRESH = "DISABLED", "MISS", "HIT", "REFRESH"
DEFAULT_MAX_AGE_S = 24 * 3600  # Portkey documents a day when max_age is not given
_CACHED_METHODS = frozenset({"GET", "POST"})


def plan(ctx: RequestContext, policy: CachePolicy | None) -> tuple[str, bool]:
    """Return the call's cache status before the lookup, and whether it may use the store at all."""
    if policy is None:
        return DISABLED, False
    body = ctx.body_json()
    streaming = isinstance(body, dict) and body.get("stream") is True
    # semantic needs a semantic backend, which this gateway does not have: accepted, always a miss.
    usable = policy.mode == "simple" and ctx.method in _CACHED_METHODS and not streaming
    refresh = usable and "x-portkey-cache-force-refresh" in ctx.headers
    return (REFRESH if refresh else MISS), usable


def lookup(cache: ResponseCache, key: str) -> Answer | None:
    """Return the stored answer for the key, if any."""
    hit = cache.get(key)
    if hit is None:
        return None
    return Answer.whole(hit.status, hit.body, list(hit.headers))


def storer(cache: ResponseCache, key: str, answer: Answer, policy: CachePolicy) -> Callable[[bytes], None] | None:
    """Return what stores this answer's complete body, or None when the answer must not be stored."""
    if not 200 <= answer.status < 300:
        return None  # error answers are never cached (deliberate difference from the reference)
    if (answer.header("content-type") or "").startswith("text/event-stream"):
        return None
    max_age = policy.max_age if policy.max_age is not None else DEFAULT_MAX_AGE_S
    status, headers = answer.status, answer.replay_headers()

    def store(body: bytes) -> None:
        cache.put(key, CachedAnswer(status=status, headers=headers, body=body), max_age)
    return store
