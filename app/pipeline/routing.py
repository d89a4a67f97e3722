"""Routing: walk a config tree (single, fallback, loadbalance, conditional; nested) to the leaves it runs.

Each leaf runs through the leaf stages (app/pipeline/leaf.py): guardrails, translation, cache, retries.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from app import translate
from app.call.context import RequestContext
from app.config.compiled import compile_config
from app.config.models import Strategy, Target
from app.errors import BadRequest
from app.http.headers import forward_list
from app.pipeline.conditions import pick_conditional
from app.pipeline.guardrail_stage import leaf_hooks
from app.pipeline.leaf import BuildFn, LeafCall, LeafExtras, Outcome, SendFn, run_leaf
from app.pipeline.resolve import leaf_body, resolve_leaf
from app.settings import Settings

log = logging.getLogger(__name__)
_RNG = random.Random()  # one per process: seeding a new one per call costs more than the pick


class Router:
    """Walks one call's config tree: picks targets by strategy, retries leaves, falls back in order."""

    def __init__(self, ctx: RequestContext, settings: Settings, build: BuildFn, send: SendFn,
                 extras: LeafExtras | None = None, rng: random.Random | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ctx = ctx
        self.settings = settings
        self.build = build
        self.send = send
        self.extras = extras or LeafExtras()
        self.rng = rng or _RNG
        self.sleep = sleep
        # Every retry made, on every target tried: the request log and metrics count them all, while an
        # outcome's `retries` is the answering target's own (x-portkey-retry-attempt-count, docs/configs.md).
        self.retries_made = 0

    def run(self, config: Target) -> Outcome:
        """Return the answering target's outcome for the whole config."""
        # Configs come compiled (inheritance resolved, hooks expanded) from the cached parse; a tree built in
        # code is compiled here.
        return self._node(compile_config(config), "config")

    def _node(self, node: Target, path: str) -> Outcome:
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
        return self._node(children[index], f"{path}.targets[{index}]")

    def _fallback(self, node: Target, strategy: Strategy, path: str) -> Outcome:
        outcome: Outcome | None = None
        for index, child in enumerate(node.targets):
            if outcome is not None:
                outcome.discard()
            outcome = self._node(child, f"{path}.targets[{index}]")
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
        """Run one leaf through the leaf stages (app/pipeline/leaf.py)."""
        ctx = self.ctx
        target = resolve_leaf(leaf, ctx, self.settings)
        translator = translate.translator_for(ctx, target, leaf.strict_open_ai_compliance)
        body = leaf_body(leaf, ctx)
        forward = forward_list(None, ctx.forward + leaf.forward_headers) if leaf.forward_headers else ctx.forward
        call = LeafCall(leaf, target, path, body, leaf_hooks(leaf), translator, ctx.timeout_ms or leaf.request_timeout,
                        forward)
        return run_leaf(self, call)


def moves_on(outcome: Outcome, strategy: Strategy) -> bool:
    """Return True when a fallback should try its next target after this outcome."""
    if outcome.error is not None:
        return True  # timeouts and network errors always move on
    if strategy.on_status_codes:
        return outcome.status in strategy.on_status_codes
    return not 200 <= outcome.status < 300

