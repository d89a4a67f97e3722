"""Guardrail hooks around a leaf's upstream call: deny (446), flag (246), mutate (docs/guardrails.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.call.answer import Answer
from app.call.context import RequestContext
from app.config.compiled import CompiledTarget, LeafHooks, expanded_hooks
from app.config.models import Target
from app.errors import openai_error
from app.guardrails import GuardrailHTTP, HookContext, run_hooks, skipped_results
from app.http.body import Body
from app.jsonwire import compact_bytes

BEFORE_ENDPOINTS = frozenset({"chatComplete", "complete", "messages", "embed"})
AFTER_ENDPOINTS = frozenset({"chatComplete", "complete", "messages"})
DENY_MESSAGE = ("The guardrail checks defined in the config failed. You can find more information in the "
                "`hook_results` object.")
MAX_HOOKED_BODY = 16 * 1024 * 1024  # answers larger than this are relayed without after hooks
_JSON = [("Content-Type", "application/json")]


def leaf_hooks(leaf: Target) -> LeafHooks | None:
    """Return the leaf's hooks (with guardrail shorthand expanded), or None when it has none."""
    if isinstance(leaf, CompiledTarget):
        return leaf.hooks  # expanded once, when its config was compiled
    return expanded_hooks(leaf)  # a tree built in code rather than loaded: nothing to reuse


def run_before(ctx: RequestContext, hooks: LeafHooks, body: Body | None, provider: str,
               http: GuardrailHTTP | None) -> tuple[Body | None, Answer | None, bool]:
    """Run before-request hooks: return the body to send, a 446 answer when denied, and whether one failed."""
    if not hooks.before:
        return body, None, False
    if ctx.endpoint not in BEFORE_ENDPOINTS:
        ctx.hook_results["before_request_hooks"] = skipped_results(hooks.before)
        return body, None, False
    request_json = _json_object(body.bytes() if body is not None else b"")
    run = run_hooks(hooks.before, _context(ctx, "before", request_json, None, provider, http))
    ctx.hook_results["before_request_hooks"] = run.results
    if run.denied:
        return body, denied_answer(ctx), True
    if run.request_json is not None:
        body = Body(compact_bytes(run.request_json))
    return body, None, not run.verdict


def run_after(ctx: RequestContext, hooks: LeafHooks, answer: Answer, before_failed: bool, provider: str,
              http: GuardrailHTTP | None) -> Answer:
    """Run after-request hooks on a 200 answer and shape what the client gets: 446, 246 or the answer."""
    streaming = _is_stream(answer)
    if streaming or not answer.read_all(MAX_HOOKED_BODY):
        if hooks.after:
            ctx.hook_results["after_request_hooks"] = skipped_results(hooks.after)
        return _flagged(answer, before_failed)
    if not hooks.after:
        return _with_results(ctx, answer, before_failed)
    # Inflated to the same bound as it was read to: a compressed answer costs no more (docs/security.md).
    response_json = _json_object(answer.decoded_body(MAX_HOOKED_BODY))
    after_failed = False
    if hooks.after and answer.status == 200 and ctx.endpoint in AFTER_ENDPOINTS and response_json is not None:
        request_json = ctx.body_json() if isinstance(ctx.body_json(), Mapping) else None
        run = run_hooks(hooks.after, _context(ctx, "after", request_json, response_json, provider, http))
        ctx.hook_results["after_request_hooks"] = run.results
        if run.denied:
            return denied_answer(ctx)
        response_json = run.response_json if run.response_json is not None else response_json
        after_failed = not run.verdict
    elif hooks.after:
        ctx.hook_results["after_request_hooks"] = skipped_results(hooks.after)
    if response_json is None:
        return _flagged(answer, before_failed)
    status = 246 if answer.status == 200 and (before_failed or after_failed) else answer.status
    body = {**response_json, "hook_results": ctx.hook_results}
    return answer.with_body(status, compact_bytes(body))


def _with_results(ctx: RequestContext, answer: Answer, failed: bool) -> Answer:
    """Add hook_results to a JSON object answer by splicing text: no parse and re-serialise of the body."""
    if answer.header("content-encoding") not in (None, "identity"):
        return _flagged(answer, failed)
    body = answer.first_chunk.strip()
    if not body.startswith(b"{") or not body.endswith(b"}"):
        return _flagged(answer, failed)
    results = compact_bytes(ctx.hook_results)
    joiner = b"," if body[1:-1].strip() else b""
    status = 246 if failed and answer.status == 200 else answer.status
    return answer.with_body(status, body[:-1] + joiner + b'"hook_results":' + results + b"}")


def denied_answer(ctx: RequestContext) -> Answer:
    """Return the 446 answer of a denied guardrail, with the hook results so far."""
    body = {"error": openai_error(DENY_MESSAGE, "hooks_failed"),
            "hook_results": ctx.hook_results}
    return Answer.whole(446, compact_bytes(body), list(_JSON), "Guardrail Denied")


def _flagged(answer: Answer, failed: bool) -> Answer:
    """Mark a failed, non-denying check on an answer whose body is relayed as it is: 246, stream intact."""
    if failed and answer.status == 200:
        answer.status, answer.reason = 246, "Guardrail Failed"
    return answer


def _is_stream(answer: Answer) -> bool:
    return (answer.header("content-type") or "").startswith("text/event-stream")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _context(ctx: RequestContext, event: str, request_json: Mapping[str, Any] | None,
             response_json: Mapping[str, Any] | None, provider: str, http: GuardrailHTTP | None) -> HookContext:
    return HookContext(event=event, endpoint=ctx.endpoint or "proxy", request_json=request_json,
                       response_json=response_json, metadata=ctx.metadata,
                       headers={k.lower(): v for k, v in ctx.header_items}, provider=provider, http=http)
