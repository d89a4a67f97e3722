"""Compiled configs: every node merged with what it inherits, its hooks expanded (docs/configs.md, Routing).

A config is compiled once: when its text is parsed (x-portkey-config, memoised by that text) or when
the gateway file is loaded (saved configs). Per call the router only walks the compiled tree; what
depends on the request (the catalog's `@name`s, the x-portkey-* headers, the body) is still applied
per call, by the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from app.config.models import Target
from app.guardrails import expand_hooks

# What a child takes from its parent when it does not set its own (override_params merge instead).
INHERITED = ("retry", "cache", "request_timeout", "custom_host", "forward_headers", "strict_open_ai_compliance",
             "before_request_hooks", "after_request_hooks", "input_guardrails", "output_guardrails")
HOOK_FIELDS = ("before_request_hooks", "after_request_hooks", "input_guardrails", "output_guardrails")
_TARGET_FIELDS = tuple(item.name for item in fields(Target))


@dataclass(frozen=True)
class LeafHooks:
    """The hooks a leaf runs, shorthand expanded."""

    before: list[dict[str, Any]]
    after: list[dict[str, Any]]


# eq=False keeps Target's equality: two compiled nodes are equal when their config fields are.
@dataclass(frozen=True, eq=False)
class CompiledTarget(Target):
    """A config node with its inherited fields filled in and its hooks expanded; its targets are compiled too."""

    hooks: LeafHooks | None = field(default=None, repr=False)


def inherit(parent: Target, child: Target) -> Target:
    """Return the child with what it inherits from its parent filled in (docs/configs.md, Routing)."""
    changes: dict[str, Any] = {}
    if parent.override_params:
        changes["override_params"] = {**parent.override_params, **(child.override_params or {})}
    for name in INHERITED:
        if getattr(child, name) is None and getattr(parent, name) is not None:
            changes[name] = getattr(parent, name)
    if not changes:
        return child
    return replace(child, **changes)


def compile_config(root: Target) -> CompiledTarget:
    """Return the config with every node merged with its ancestors and its hooks expanded; a compiled one as is."""
    if isinstance(root, CompiledTarget):
        return root
    return _compiled(root, Target(), None)


def _compiled(node: Target, parent: Target, parent_hooks: LeafHooks | None) -> CompiledTarget:
    """Return node compiled under its (already merged) parent, whose hooks are parent_hooks."""
    own = inherit(parent, node)
    if all(getattr(node, name) is None for name in HOOK_FIELDS):
        hooks = parent_hooks  # every hook list is the parent's: share its expansion
    else:
        hooks = expanded_hooks(own)
    targets = tuple(_compiled(child, own, hooks) for child in node.targets)
    values = {name: getattr(own, name) for name in _TARGET_FIELDS}
    return CompiledTarget(**{**values, "targets": targets}, hooks=hooks)


def expanded_hooks(node: Target) -> LeafHooks | None:
    """Return a node's hooks with guardrail shorthand expanded, or None when it has none."""
    if not (node.before_request_hooks or node.after_request_hooks or node.input_guardrails
            or node.output_guardrails):
        return None
    before, after = expand_hooks(node.before_request_hooks, node.after_request_hooks,
                                 node.input_guardrails, node.output_guardrails)
    return LeafHooks(before, after) if before or after else None
