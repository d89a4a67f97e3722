"""Routing: run a config tree (single, fallback, loadbalance, conditional; nested) with retries at each leaf."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from app import translate
from app.cache import ResponseCache
from app.call.answer import Answer
from app.call.context import RequestContext, ResolvedTarget
from app.config.models import RetryPolicy, Strategy, Target
from app.errors import BadRequest, GatewayError, UpstreamTimeout, UpstreamUnreachable
from app.guardrails import GuardrailHTTP
from app.http.body import Body
from app.http.headers import forward_list
from app.pipeline import cache_stage
from app.pipeline.backoff import next_wait
from app.pipeline.conditions import pick_conditional
from app.pipeline.guardrail_stage import LeafHooks, leaf_hooks, run_after, run_before
from app.pipeline.resolve import leaf_body, merged, resolve_leaf
from app.settings import Settings
from app.translate.call import Translator

log = logging.getLogger(__name__)
# Failures of the upstream itself: they are retried and they move a fallback on. Any other
# GatewayError is the gateway's own (a bad custom host, an unsupported endpoint) and stops the chain.
UPSTREAM_FAILURES = (UpstreamTimeout, UpstreamUnreachable)
_RNG = random.Random()  # one per process: seeding a new one per call costs more than the pick

SendFn = Callable[[RequestContext, ResolvedTarget, "Body | None", "int | None", tuple[str, ...]], Answer]


@dataclass
class Outcome:
    """What one target answered: an upstream answer (body unread but for its first chunk) or an error."""

    path: str
    target: ResolvedTarget
    answer: Answer | None = None
    error: GatewayError | None = None
    retries: int = 0
    on_complete: Callable[[bytes], None] | None = None  # stores the relayed body in the cache

    @property
    def status(self) -> int:
        """Return the answer's status, or the error's status (408, 502)."""
        if self.answer is not None:
            return self.answer.status
        assert self.error is not None
        return self.error.status

    def discard(self) -> None:
        """Let go of an answer that will not be relayed."""
        if self.answer is not None:
            self.answer.discard()


@dataclass(frozen=True)
class LeafExtras:
    """What leaves use besides the upstream: the response cache and the HTTP client of guardrail checks."""

    cache: ResponseCache | None = None
    cache_key: Callable[[RequestContext, ResolvedTarget, Body | None], str] = lambda ctx, target, body: ""
    hooks_http: GuardrailHTTP | None = None


class Router:
    """Walks one call's config tree: picks targets by strategy, retries leaves, falls back in order."""

    def __init__(self, ctx: RequestContext, settings: Settings, send: SendFn, extras: LeafExtras | None = None,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.ctx = ctx
        self.settings = settings
        self.send = send
        self.extras = extras or LeafExtras()
        self.rng = rng or _RNG
        self.sleep = sleep
        # Every retry made, on every target tried: the request log and metrics count them all, while an
        # outcome's `retries` is the answering target's own (x-portkey-retry-attempt-count, docs/configs.md).
        self.retries_made = 0

    def run(self, config: Target) -> Outcome:
        """Return the answering target's outcome for the whole config."""
        return self._node(config, Target(), "config")

    def _node(self, node: Target, parent: Target, path: str) -> Outcome:
        node = merged(parent, node)
        if node.is_leaf:
            return self._leaf(node, path)
        strategy = node.strategy or Strategy()
        children = node.targets
        if strategy.mode == "fallback":
            return self._fallback(node, strategy, path)
        if strategy.mode == "loadbalance":
            index = self._weighted(children)
        elif strategy.mode == "conditional":
            index = pick_conditional(strategy, children, self.ctx.condition_context())
        else:
            index = 0
        return self._node(children[index], node, f"{path}.targets[{index}]")

    def _fallback(self, node: Target, strategy: Strategy, path: str) -> Outcome:
        outcome: Outcome | None = None
        for index, child in enumerate(node.targets):
            if outcome is not None:
                outcome.discard()
            outcome = self._node(child, node, f"{path}.targets[{index}]")
            if not moves_on(outcome, strategy):
                return outcome
            self.ctx.fell_back = True
            log.info("trace_id=%s fallback: %s answered %s, trying the next target", self.ctx.trace_id,
                     outcome.path, outcome.status)
        assert outcome is not None
        return outcome  # every target failed: the last one's answer is the call's

    def _weighted(self, children: tuple[Target, ...]) -> int:
        weights = [max(child.weight, 0.0) for child in children]
        if not any(weights):
            raise BadRequest("All targets of the loadbalance have weight 0; at least one must be above 0")
        return self.rng.choices(range(len(children)), weights=weights)[0]

    def _leaf(self, leaf: Target, path: str) -> Outcome:
        """Run one leaf: before hooks, cache lookup, the upstream with retries, cache store, after hooks."""
        ctx = self.ctx
        target = resolve_leaf(leaf, ctx, self.settings)
        translator = translate.translator_for(ctx, target, leaf.strict_open_ai_compliance)
        body = leaf_body(leaf, ctx)
        hooks = leaf_hooks(leaf)
        before_failed = False
        if hooks is not None:
            body, denied, before_failed = run_before(ctx, hooks, body, target.provider.slug, self.extras.hooks_http)
            if denied is not None:
                return Outcome(path, target, answer=denied)
        ctx.native = None
        if translator is not None:
            # The client's body in the provider's own format; hooks above saw (and may have changed) the unified one.
            body = translator.request(ctx.body_json() if body is ctx.body else _parsed(body))
            ctx.native = translator.native
        ctx.cache_status, cacheable = cache_stage.plan(ctx, leaf.cache)
        key = None
        if cacheable and self.extras.cache is not None and leaf.cache is not None:
            key = self.extras.cache_key(ctx, target, body)
            hit = cache_stage.lookup(self.extras.cache, key) if ctx.cache_status == cache_stage.MISS else None
            if hit is not None:
                ctx.cache_status = cache_stage.HIT
                return self._finish(Outcome(path, target, answer=hit), hooks, before_failed, None)
        outcome = self._upstream(leaf, target, body, path, translator)
        store = None
        if key is not None and outcome.answer is not None and leaf.cache is not None:
            store = cache_stage.storer(self.extras.cache, key, outcome.answer, leaf.cache)  # type: ignore[arg-type]
        return self._finish(outcome, hooks, before_failed, store)

    def _finish(self, outcome: Outcome, hooks: LeafHooks | None, before_failed: bool,
                store: Callable[[bytes], None] | None) -> Outcome:
        """Attach the cache store, and let after hooks shape a successful answer."""
        answer = outcome.answer
        if answer is None or not 200 <= answer.status < 300:
            return outcome
        if hooks is None:
            outcome.on_complete = store
            return outcome
        if store is not None and answer.read_all(self.settings.cache_max_entry_bytes):
            store(answer.first_chunk)  # the upstream's own bytes, before hooks add their results
        outcome.answer = run_after(self.ctx, hooks, answer, before_failed, outcome.target.provider.slug,
                                   self.extras.hooks_http)
        return outcome

    def _upstream(self, leaf: Target, target: ResolvedTarget, body: Body | None, path: str,
                  translator: Translator | None = None) -> Outcome:
        """Call the upstream, retrying as the leaf's retry policy says."""
        ctx = self.ctx
        timeout_ms = ctx.timeout_ms or leaf.request_timeout
        forward = forward_list(None, ctx.forward + leaf.forward_headers) if leaf.forward_headers else ctx.forward
        policy = leaf.retry or RetryPolicy()
        started = time.monotonic()
        retries = 0
        while True:
            outcome = self._attempt(target, body, timeout_ms, forward, path, translator)
            retryable = outcome.error is not None or outcome.status in policy.on_status_codes
            if not retryable:
                outcome.retries = retries
                return outcome
            wait = None
            if retries < policy.attempts:
                headers = dict(outcome.answer.headers) if outcome.answer is not None else None
                wait = next_wait(policy, outcome.status, headers, retries + 1, self.settings.backoff_base_ms,
                                 time.monotonic() - started)
            if wait is None:
                # Out of attempts (or of the 60 s budget) with an answer that is still retryable.
                outcome.retries = -1 if policy.attempts else 0
                return outcome
            outcome.discard()
            retries += 1
            self.retries_made += 1
            log.info("trace_id=%s retry %d of %s after %s, waiting %.3f s", ctx.trace_id, retries, path,
                     outcome.status, wait)
            if wait > 0:
                self.sleep(wait)

    def _attempt(self, target: ResolvedTarget, body: Body | None, timeout_ms: int | None,
                 forward: tuple[str, ...], path: str, translator: Translator | None = None) -> Outcome:
        """Make one upstream attempt; a transport failure becomes an outcome, to retry or fall back on."""
        try:
            answer = self.send(self.ctx, target, body, timeout_ms, forward)
            if translator is not None:
                answer = translator.answer(answer)
            return Outcome(path, target, answer=answer)
        except UPSTREAM_FAILURES as err:
            return Outcome(path, target, error=err)


def _parsed(body: Body | None) -> object:
    """Return a body rewritten by hooks or override_params, parsed again."""
    try:
        return json.loads(body.bytes()) if body is not None else None
    except ValueError:
        return None


def moves_on(outcome: Outcome, strategy: Strategy) -> bool:
    """Return True when a fallback should try its next target after this outcome."""
    if outcome.error is not None:
        return True  # timeouts and network errors always move on
    if strategy.on_status_codes:
        return outcome.status in strategy.on_status_codes
    return not 200 <= outcome.status < 300

