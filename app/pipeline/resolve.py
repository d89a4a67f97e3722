"""Provider resolution: slug, Model Catalog `@name`, or a config, into one Target (SPEC 4)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.errors import BadRequest, InvalidConfig
from app.pipeline.context import UNIFIED, RequestContext, Target
from app.providers.registry import get_provider, header_options
from app.settings import CATALOG_FIELDS, Settings

_TARGET_FIELDS = frozenset(CATALOG_FIELDS) | {"custom_host"}


def resolve_target(ctx: RequestContext, settings: Settings) -> None:
    """Decide which provider (and credential) this call goes to."""
    raw_config = ctx.headers.get("x-portkey-config")
    provider_header = ctx.headers.get("x-portkey-provider")
    if raw_config:
        ctx.target = _from_config(load_config(raw_config, settings), ctx, settings)
        ctx.option_index = "config"
    elif provider_header:
        ctx.target = build_target(provider_header.strip(), {}, ctx, settings)
    else:
        raise BadRequest("Either x-portkey-config or x-portkey-provider header is required")


def load_config(raw: str, settings: Settings) -> dict[str, Any]:
    """Return the config named by a saved id, or parsed from JSON."""
    text = raw.strip()
    if text in settings.configs:
        return dict(settings.configs[text])
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise BadRequest("Invalid config passed. You need to pass a valid json")
    if "options" in config:
        raise BadRequest("This version of config is not supported in this route. Please migrate to the latest version")
    return config


def _from_config(config: Mapping[str, Any], ctx: RequestContext, settings: Settings) -> Target:
    # Until the config engine lands, a config names exactly one provider at its root.
    if "targets" in config or "strategy" in config:
        raise InvalidConfig("Invalid config passed", errors=[
            "path: strategy, message: routing strategies and targets need the config engine, "
            "not in this version; give provider at the config's root"])
    provider = config.get("provider")
    if not isinstance(provider, str) or not provider:
        raise BadRequest("Either x-portkey-provider needs to be passed. Or the x-portkey-config header "
                         "should have a valid config with provider details in it.")
    fields = {k: v for k, v in config.items() if k in _TARGET_FIELDS and k != "provider"}
    bad = [k for k, v in fields.items() if not isinstance(v, str)]
    if bad:
        raise InvalidConfig("Invalid config passed", errors=[f"path: {bad[0]}, message: must be a string"])
    return build_target(provider, fields, ctx, settings)


def build_target(provider_ref: str, fields: Mapping[str, str], ctx: RequestContext,
                 settings: Settings) -> Target:
    """Return the Target for a slug or `@name`, with its credential, options and custom host."""
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
    return Target(provider=provider, credential=credential, options=options,
                  custom_host=header_host or custom_host, catalog_name=catalog_name)


def client_credential(headers: Mapping[str, str]) -> str | None:
    """Return the provider secret the client sent: Authorization (Bearer or bare), else x-api-key."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.strip().partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest else auth.strip()
    return headers.get("x-api-key") or None


def check_supported(ctx: RequestContext) -> None:
    """Refuse a unified endpoint the target's provider does not speak natively (until translation lands)."""
    if ctx.route != UNIFIED or ctx.target is None:
        return
    provider = ctx.target.provider
    if provider.native_format != ctx.unified_format:
        raise BadRequest(f"{ctx.endpoint} is not supported by {provider.slug}")
