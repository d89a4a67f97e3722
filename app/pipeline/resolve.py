"""Provider resolution: the config of a call, and each leaf target into provider, credential and host (SPEC 4, 8)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from app.config.models import Target
from app.config.schema import parse_config
from app.errors import BadRequest
from app.http.body import Body
from app.pipeline.context import UNIFIED, RequestContext, ResolvedTarget
from app.providers.registry import get_provider, header_options
from app.settings import Settings

NO_PROVIDER = ("Either x-portkey-provider needs to be passed. Or the x-portkey-config header should have a valid "
               "config with provider details in it.")


def load_config(ctx: RequestContext, settings: Settings) -> None:
    """Set the call's config: from x-portkey-config (JSON or saved id), else a single-provider one."""
    raw_config = ctx.headers.get("x-portkey-config")
    if raw_config:
        text = raw_config.strip()
        saved = settings.configs.get(text)
        ctx.config = saved if isinstance(saved, Target) else parse_config_text(text)
        ctx.option_index = "config"
    elif ctx.headers.get("x-portkey-provider") or _catalog_model(ctx):
        ctx.config = Target()
    else:
        raise BadRequest("Either x-portkey-config or x-portkey-provider header is required")


@lru_cache(maxsize=512)
def parse_config_text(text: str) -> Target:
    """Parse and validate a config header; memoised by its text, since clients resend the same one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadRequest("Invalid config passed. You need to pass a valid json") from None
    return parse_config(data)


def resolve_leaf(leaf: Target, ctx: RequestContext, settings: Settings) -> ResolvedTarget:
    """Return where a leaf target sends its call: its provider, else a body `@name/model`, else the header's."""
    provider_ref = leaf.provider
    if not provider_ref:
        catalog_model = _catalog_model(ctx)
        provider_ref = catalog_model[0] if catalog_model else (ctx.headers.get("x-portkey-provider") or "").strip()
    if not provider_ref:
        raise BadRequest(NO_PROVIDER)
    fields: dict[str, str] = dict(leaf.provider_options)
    if leaf.api_key:
        fields["api_key"] = leaf.api_key
    if leaf.custom_host:
        fields["custom_host"] = leaf.custom_host
    return build_target(provider_ref, fields, ctx, settings)


def leaf_body(leaf: Target, ctx: RequestContext) -> Body | None:
    """Return the body a leaf sends: the client's, or its JSON with override_params and a catalog model applied."""
    catalog_model = None if leaf.provider else _catalog_model(ctx)
    if not leaf.override_params and not catalog_model:
        return ctx.body
    data = ctx.body_json()
    if not isinstance(data, dict):
        return ctx.body  # override_params apply to JSON object bodies only
    changed = {**data, **(leaf.override_params or {})}
    if catalog_model and "model" not in (leaf.override_params or {}):
        changed["model"] = catalog_model[1]
    return Body(json.dumps(changed, separators=(",", ":")).encode())


def _catalog_model(ctx: RequestContext) -> tuple[str, str] | None:
    """Return (`@name`, model id) when a unified JSON body's model reads `@name/model-id`."""
    if ctx.route != UNIFIED:
        return None
    data = ctx.body_json()
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, str) and model.startswith("@") and "/" in model:
        name, _, model_id = model.partition("/")
        if len(name) > 1 and model_id:
            return name, model_id
    return None


def build_target(provider_ref: str, fields: Mapping[str, str], ctx: RequestContext,
                 settings: Settings) -> ResolvedTarget:
    """Return the ResolvedTarget for a slug or `@name`, with its credential, options and custom host."""
    catalog_name = None
    credential = fields.get("api_key")
    custom_host = fields.get("custom_host")
    options = {k: v for k, v in fields.items() if k not in ("api_key", "custom_host")}
    if provider_ref.startswith("@"):
        entry = settings.catalog.get(provider_ref[1:])
        if entry is None:
            raise BadRequest(f"Unknown Model Catalog entry {provider_ref[:80]!r}: no [catalog.{provider_ref[1:80]}] "
                             "in the gateway file")
        catalog_name = entry.name
        provider = get_provider(entry.provider)
        credential = credential or entry.api_key
        custom_host = custom_host or entry.custom_host
        options = {**entry.options, **options}
    else:
        provider = get_provider(provider_ref)
    options = {**options, **header_options(provider, ctx.headers)}
    if credential is None:
        credential = client_credential(ctx.headers)
    header_host = ctx.headers.get("x-portkey-custom-host")
    return ResolvedTarget(provider=provider, credential=credential, options=options,
                          custom_host=header_host or custom_host, catalog_name=catalog_name)


def client_credential(headers: Mapping[str, str]) -> str | None:
    """Return the provider secret the client sent: Authorization (Bearer or bare), else x-api-key."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.strip().partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest else auth.strip()
    return headers.get("x-api-key") or None


def merged(parent: Target, child: Target) -> Target:
    """Return the child with what it inherits from its parent filled in (SPEC 8.3)."""
    changes: dict[str, Any] = {}
    if parent.override_params:
        changes["override_params"] = {**parent.override_params, **(child.override_params or {})}
    for name in ("retry", "cache", "request_timeout", "custom_host", "forward_headers", "strict_open_ai_compliance",
                 "before_request_hooks", "after_request_hooks", "input_guardrails", "output_guardrails"):
        if getattr(child, name) is None and getattr(parent, name) is not None:
            changes[name] = getattr(parent, name)
    if not changes:
        return child
    return replace(child, **changes)
