"""Guardrail hooks (docs/guardrails.md): expand shorthand, validate hook lists, run hooks, report hook_results.

    before, after = expand_hooks(t.before_request_hooks, t.after_request_hooks,
                                 t.input_guardrails, t.output_guardrails)
    run = run_hooks(before, HookContext("before", "chatComplete", body, None, metadata, headers, "openai", http))
    if run.denied: answer 446 with {"before_request_hooks": run.results, ...}
    body = run.request_json or body

Modules: `shorthand` (expand_hooks), `validation` (validate_hooks), `hooks` (the runner), `checks`
(pure checks and the registry), `mutators` (addPrefix, regexReplace), `remote` (webhook, jwt),
`params` (parameter specs), `text` (where the checked text lives), `pool` (shared I/O threads).
"""

from __future__ import annotations

from app.guardrails.checks import CHECKS
from app.guardrails.context import EVENTS, HOOK_ENDPOINTS, GuardrailHTTP, HookContext, HookRun
from app.guardrails.hooks import run_hooks, skipped_results, split_async
from app.guardrails.shorthand import expand_hooks
from app.guardrails.validation import validate_hooks

__all__ = [
    "CHECKS", "EVENTS", "HOOK_ENDPOINTS", "GuardrailHTTP", "HookContext", "HookRun", "expand_hooks",
    "run_hooks", "skipped_results", "split_async", "validate_hooks",
]
