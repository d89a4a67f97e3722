"""A leaf's call as an ordered list of stages (docs/architecture.md): each stage takes the call and the rest.

    govern -> guardrails -> translate -> cache -> retry -> the attempt (send, then translate the answer)

`translate` ends by building the leaf's one UpstreamRequest (URL, pinned address, headers, body): the cache
key reads it and every attempt sends it.

A stage is a function `stage(env, call, rest) -> Outcome`: it may change the call on the way in, answer
without calling `rest` (a denied request, a cache hit), call `rest` more than once (retries), and shape
the outcome on the way back (after-request hooks, the cache store). The order lives in LEAF_STAGES only;
a new stage (limits, budgets, a circuit breaker) is one function and one line there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.cache import ResponseCache
from app.call.answer import Answer
from app.call.context import RequestContext, ResolvedTarget
from app.call.native import NativeRequest
from app.config.models import RetryPolicy, Target
from app.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from app.guardrails import GuardrailHTTP
from app.http.body import Body
from app.pipeline import cache_stage
from app.pipeline.backoff import Retry
from app.pipeline.guardrail_stage import LeafHooks, run_after, run_before
from app.pipeline.upstream import UpstreamRequest
from app.settings import Settings
from app.translate.call import Translator

log = logging.getLogger(__name__)
# Failures of the upstream itself: they are retried and they move a fallback on. Any other
# GatewayError is the gateway's own (a bad custom host, an unsupported endpoint) and stops the chain.
UPSTREAM_FAILURES = (UpstreamTimeout, UpstreamUnreachable)

SendFn = Callable[[RequestContext, ResolvedTarget, UpstreamRequest, "int | None"], Answer]
BuildFn = Callable[[RequestContext, ResolvedTarget, "Body | None", tuple[str, ...], "NativeRequest | None"],
                   UpstreamRequest]


@dataclass
class Outcome:
    """What one target answered: an upstream answer (body unread but for its first chunk) or an error."""

    path: str
    target: ResolvedTarget
    answer: Answer | None = None
    error: GatewayError | None = None
    retry: Retry | None = None  # the answering leaf's retries (None: it made no attempt upstream)

    @property
    def status(self) -> int:
        """Return the answer's status, or the error's status (408, 502)."""
        if self.answer is not None:
            return self.answer.status
        assert self.error is not None
        return self.error.status

    @property
    def retries(self) -> int:
        """Return the retry count clients see (x-portkey-retry-attempt-count): -1 once retries ran out."""
        return self.retry.reported if self.retry is not None else 0

    def discard(self) -> None:
        """Let go of an answer that will not be relayed."""
        if self.answer is not None:
            self.answer.discard()


@dataclass(frozen=True)
class LeafExtras:
    """What leaves use besides the upstream: the response cache and the HTTP client of guardrail checks."""

    cache: ResponseCache | None = None
    cache_key: Callable[[RequestContext, ResolvedTarget, UpstreamRequest], str] = lambda ctx, target, request: ""
    hooks_http: GuardrailHTTP | None = None
    # The key's allow-list and budget for a target (Governance.check_target): raises Refused.
    check_target: Callable[[RequestContext, ResolvedTarget, object], None] | None = None


@dataclass
class LeafCall:
    """One leaf's call on its way down the stages; `body` is what goes upstream (hooks and translation rewrite it)."""

    leaf: Target
    target: ResolvedTarget
    path: str
    body: Body | None
    hooks: LeafHooks | None
    translator: Translator | None
    timeout_ms: int | None
    forward: tuple[str, ...]
    before_failed: bool = field(default=False)  # a before-request hook failed without denying
    request: UpstreamRequest | None = None  # built by the translate stage, once the body is final


class LeafEnv(Protocol):
    """What the stages use of the call's router."""

    ctx: RequestContext
    settings: Settings
    extras: LeafExtras
    send: SendFn
    build: BuildFn
    sleep: Callable[[float], None]
    retries_made: int


Rest = Callable[[LeafCall], Outcome]
Stage = Callable[[LeafEnv, LeafCall, Rest], Outcome]


def govern(env: LeafEnv, call: LeafCall, rest: Rest) -> Outcome:
    """Refuse a target the call's key may not use, or that its budget cannot take; reserve its estimated cost."""
    check = env.extras.check_target
    if env.ctx.grant is not None and check is not None:
        check(env.ctx, call.target, env.ctx.body_json() if call.body is env.ctx.body else _parsed(call.body))
    return rest(call)


def guardrails(env: LeafEnv, call: LeafCall, rest: Rest) -> Outcome:
    """Run before-request hooks (a 446 answers at once); after-request hooks shape a successful answer."""
    hooks = call.hooks
    if hooks is None:
        return rest(call)
    call.body, denied, call.before_failed = run_before(env.ctx, hooks, call.body, call.target.provider.slug,
                                                       env.extras.hooks_http)
    if denied is not None:
        return Outcome(call.path, call.target, answer=denied)
    outcome = rest(call)
    answer = outcome.answer
    if answer is None or not 200 <= answer.status < 300:
        return outcome
    # The cache stage (inside this one) stored the upstream's own bytes already, before hooks add their results.
    outcome.answer = run_after(env.ctx, hooks, answer, call.before_failed, call.target.provider.slug,
                               env.extras.hooks_http)
    return outcome


def translate(env: LeafEnv, call: LeafCall, rest: Rest) -> Outcome:
    """Put the body in the provider's own format (hooks saw, and may have changed, the unified one)."""
    ctx = env.ctx
    native = None
    if call.translator is not None:
        call.body = call.translator.request(ctx.body_json() if call.body is ctx.body else _parsed(call.body))
        native = call.translator.native
    call.request = env.build(ctx, call.target, call.body, call.forward, native)
    return rest(call)


def cache(env: LeafEnv, call: LeafCall, rest: Rest) -> Outcome:
    """Answer from the response cache when it holds the call (docs/cache.md); store a complete 2xx answer."""
    ctx, policy, store = env.ctx, call.leaf.cache, env.extras.cache
    ctx.cache_status, cacheable = cache_stage.plan(ctx, policy)
    if not cacheable or store is None or policy is None:
        return rest(call)
    assert call.request is not None
    key = env.extras.cache_key(ctx, call.target, call.request)
    hit = cache_stage.lookup(store, key) if ctx.cache_status == cache_stage.MISS else None
    if hit is not None:
        ctx.cache_status = cache_stage.HIT
        return Outcome(call.path, call.target, answer=hit)
    outcome = rest(call)
    answer = outcome.answer
    if answer is not None and 200 <= answer.status < 300:
        store_body = cache_stage.storer(store, key, answer, policy)
        # Stored before the client has its answer, so a repeat sent the moment it arrives is a hit. An answer
        # over the entry limit is never stored: read_all leaves the rest to be relayed as it comes.
        if store_body is not None and answer.read_all(env.settings.cache_max_entry_bytes):
            store_body(answer.first_chunk)
    return outcome


def retry(env: LeafEnv, call: LeafCall, rest: Rest) -> Outcome:
    """Attempt the upstream, again after a wait while the answer is retryable and the policy allows."""
    state = Retry(call.leaf.retry or RetryPolicy(), env.settings.backoff_base_ms, time.monotonic())
    while True:
        outcome = rest(call)
        outcome.retry = state
        if outcome.error is None and not state.wants(outcome.status):
            return outcome
        headers = dict(outcome.answer.headers) if outcome.answer is not None else None
        wait = state.wait(outcome.status, headers, time.monotonic())
        if wait is None:
            outcome.retry = state.give_up()  # out of attempts (or of the 60 s budget), still retryable
            return outcome
        outcome.discard()
        state = state.increment()
        env.retries_made += 1
        log.info("trace_id=%s retry %d of %s after %s, waiting %.3f s", env.ctx.trace_id, state.count, call.path,
                 outcome.status, wait)
        if wait > 0:
            env.sleep(wait)


def attempt(env: LeafEnv, call: LeafCall) -> Outcome:
    """Make one upstream attempt; a transport failure becomes an outcome, to retry or fall back on."""
    assert call.request is not None
    try:
        answer = env.send(env.ctx, call.target, call.request, call.timeout_ms)
        if call.translator is not None:
            answer = call.translator.answer(answer)
        return Outcome(call.path, call.target, answer=answer)
    except UPSTREAM_FAILURES as err:
        return Outcome(call.path, call.target, error=err)


LEAF_STAGES: tuple[Stage, ...] = (govern, guardrails, translate, cache, retry)


def run_leaf(env: LeafEnv, call: LeafCall) -> Outcome:
    """Run a leaf's call through the stages, in order, and then the attempt."""
    stages = LEAF_STAGES

    def rest_from(index: int) -> Rest:
        if index == len(stages):
            return lambda leaf_call: attempt(env, leaf_call)
        return lambda leaf_call: stages[index](env, leaf_call, rest_from(index + 1))
    return rest_from(0)(call)


def _parsed(body: Body | None) -> object:
    """Return a body rewritten by hooks or override_params, parsed again."""
    try:
        return json.loads(body.bytes()) if body is not None else None
    except ValueError:
        return None

