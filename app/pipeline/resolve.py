"""Provider resolution: a call's config, and each leaf target's provider, credential and host.

The rules: docs/providers.md and docs/configs.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache

from app.call.context import UNIFIED, RequestContext, ResolvedTarget
from app.config.compiled import CompiledTarget, compile_config
from app.config.models import Target
from app.config.schema import parse_config
from app.errors import BadRequest
from app.http.body import Body
from app.jsonwire import compact_bytes
from app.providers.registry import Provider, get_provider, header_options
from app.redact import CREDENTIAL_OPTIONS, Secrets
from app.settings import Settings

# The config of a call that names its provider outside a config: one leaf that inherits nothing.
NO_CONFIG = compile_config(Target())
NO_PROVIDER = ("Either x-portkey-provider needs to be passed. Or the x-portkey-config header should have a valid "
               "config with provider details in it.")


def load_config(ctx: RequestContext, settings: Settings) -> None:
    """Set the call's config: from x-portkey-config (JSON or saved id), else a single-provider one."""
    raw_config = ctx.headers.get("x-portkey-config")
    if raw_config:
        text = raw_config.strip()
        saved = settings.configs.get(text)
        if isinstance(saved, Target):
            ctx.config = saved  # compiled when the gateway file was loaded
            ctx.held_config = f"saved config {text[:64]!r}"
        else:
            ctx.config = parse_config_text(text)
        ctx.option_index = "config"
    elif ctx.headers.get("x-portkey-provider") or _catalog_model(ctx):
        ctx.config = NO_CONFIG
    elif ctx.grant is not None and ctx.grant.key.default_config is not None:
        _key_default_config(ctx, settings)
    else:
        raise BadRequest("Either x-portkey-config or x-portkey-provider header is required")


def _key_default_config(ctx: RequestContext, settings: Settings) -> None:
    """Use the key's default_config (a saved id or a config object); the operator holds it, like a saved config."""
    key = ctx.grant.key
    default = key.default_config
    ctx.held_config = f"the default_config of key {key.name[:64]!r}"
    if isinstance(default, str):
        saved = settings.configs.get(default)
        if not isinstance(saved, Target):
            raise BadRequest(f"The default_config of key {key.name[:64]!r} names the saved config {default[:64]!r}, "
                             "which the gateway file does not define")
        ctx.config = saved
    else:
        ctx.config = parse_config_text(compact_bytes(default, sort_keys=True).decode())
    ctx.option_index = "config"


def check_providers(ctx: RequestContext, settings: Settings) -> None:
    """Refuse an unknown provider slug or Model Catalog entry before anything else of the call, naming where.

    The router would meet them leaf by leaf, after the content type; a user fixes the provider first
    (docs/decisions.md). A config's slugs were checked by its schema; its `@name`s only exist here.
    """
    assert ctx.config is not None
    named, unnamed_leaf = False, False
    stack: list[tuple[Target, tuple[str | int, ...]]] = [(ctx.config, ())]
    while stack:
        node, path = stack.pop()
        if node.provider:
            named = True
            # The schema checked the config's slugs when it was parsed; only its `@name`s are left to look up.
            if node.provider.startswith("@") and node.provider[1:] not in settings.catalog:
                raise BadRequest(unknown_entry(node.provider, ",".join(str(part) for part in (*path, "provider"))))
        elif node.is_leaf:
            unnamed_leaf = True
        stack.extend((child, (*path, "targets", index)) for index, child in enumerate(node.targets))
    if not unnamed_leaf:
        return
    fallback = _client_provider(ctx)  # what a leaf without a provider of its own uses (resolve_leaf)
    if fallback is not None:
        _check_provider(*fallback, settings)
    elif not named:
        raise BadRequest(NO_PROVIDER)


def _client_provider(ctx: RequestContext) -> tuple[str, str] | None:
    """Return the provider the client named outside a config, and where: a body `@name/model`, else the header."""
    catalog_model = _catalog_model(ctx)
    if catalog_model:
        return catalog_model[0], "the body's model"
    header = (ctx.headers.get("x-portkey-provider") or "").strip()
    return (header, "x-portkey-provider") if header else None


def _check_provider(ref: str, where: str, settings: Settings) -> None:
    """Refuse a provider slug the registry does not know, or an `@name` the catalog does not hold."""
    if not ref.startswith("@"):
        get_provider(ref)
    elif ref[1:] not in settings.catalog:
        raise BadRequest(unknown_entry(ref, where))


def unknown_entry(ref: str, where: str | None = None) -> str:
    """Return the message for a Model Catalog `@name` the gateway file does not define (bounded echo)."""
    place = f" in {where}" if where else ""
    return f"Unknown Model Catalog entry {ref[:80]!r}{place}: no [catalog.{ref[1:80]}] in the gateway file"


@lru_cache(maxsize=512)
def parse_config_text(text: str) -> CompiledTarget:
    """Parse, validate and compile a config header; memoised by its text, since clients resend the same one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        if not text.startswith(("{", "[")):  # an id, not JSON: the saved configs of the gateway file have no such id
            looks_like_id = len(text) <= 64 and text.isascii() and all(c.isalnum() or c in "_.:-" for c in text)
            shown = repr(text) if looks_like_id else "given"
            raise BadRequest(f"There is no saved config with the id {shown}: x-portkey-config takes the id of a "
                             "saved config ([configs.<id>] in the gateway file) or a JSON config") from None
        raise BadRequest("Invalid config passed. You need to pass a valid json") from None
    return compile_config(parse_config(data))


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
    return build_target(provider_ref, fields, ctx, settings, held_by=ctx.held_config)


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
    return Body(compact_bytes(changed))


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


def build_target(provider_ref: str, fields: Mapping[str, str], ctx: RequestContext, settings: Settings,
                 held_by: str | None = None) -> ResolvedTarget:
    """Return the ResolvedTarget for a slug or `@name`, with its credential, options and custom host.

    `fields` (api_key, custom_host, provider options) are held on the gateway by `held_by` (a saved
    config), or sent by the client when it is None.
    """
    catalog_name = None
    layers: list[tuple[Mapping[str, str], str | None]] = []  # (values, who holds them), lowest precedence first
    if provider_ref.startswith("@"):
        entry = settings.catalog.get(provider_ref[1:])
        if entry is None:
            raise BadRequest(unknown_entry(provider_ref))
        catalog_name = entry.name
        provider = get_provider(entry.provider)
        own = {"api_key": entry.api_key, "custom_host": entry.custom_host}
        layers.append(({**entry.options, **{k: v for k, v in own.items() if v}}, f"@{entry.name}"))
    else:
        provider = get_provider(provider_ref)
    layers.append((fields, held_by))
    values, origins = _merge(layers, provider, ctx.headers)
    _check_held_credential(values, origins, provider)
    credential = values.pop("api_key", None)
    custom_host = values.pop("custom_host", None)
    if credential is None:
        credential = client_credential(ctx.headers, ctx.key_headers)
    return ResolvedTarget(provider=provider, credential=credential, options=values,
                          custom_host=custom_host, catalog_name=catalog_name)


# Where a value came from: who holds it on the gateway (None: the client sent it), and how an error names it.
Origin = tuple[str | None, str]
# What reaches a provider that must stay on the gateway when the gateway holds it (docs/security.md).
SECRETS = ("api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _merge(layers: list[tuple[Mapping[str, str], str | None]], provider: Provider,
           headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Origin]]:
    """Return the target's values (later layers win, the client's headers last) and where each came from."""
    values: dict[str, str] = {}
    origins: dict[str, Origin] = {}
    for layer, holder in layers:
        for name, value in layer.items():
            values[name] = value
            origins[name] = (holder, f"{name} in the config")
    sent = header_options(provider, headers)
    names = {name: f"x-portkey-{suffix}" for suffix, name in (provider.option_headers or {}).items()}
    if headers.get("x-portkey-custom-host"):
        sent["custom_host"] = headers["x-portkey-custom-host"]
        names["custom_host"] = "x-portkey-custom-host"
    for name, value in sent.items():
        values[name] = value
        origins[name] = (None, names[name])
    return values, origins


def _check_held_credential(values: Mapping[str, str], origins: Mapping[str, Origin], provider: Provider) -> None:
    """Refuse a client-chosen host for a credential the gateway holds: it only goes to its own host."""
    holder = next((origins[name][0] for name in SECRETS if name in values and origins[name][0]), None)
    if holder is None:
        return
    # What picks the host: a custom host, else the option naming the provider account (Azure's resource).
    host_field = "custom_host" if "custom_host" in values else provider.account_option
    if host_field and host_field in values and origins[host_field][0] is None:
        raise BadRequest(f"{origins[host_field][1]} cannot be used with {holder}: a credential held on the gateway "
                         "only goes to its own host (bring your own provider key to use a host of your choice)")


def client_credential(headers: Mapping[str, str], gateway_keys: tuple[str, ...] = ()) -> str | None:
    """Return the provider secret the client sent: Authorization (Bearer or bare), else x-api-key.

    gateway_keys: the headers that carried a gateway key instead (docs/governance.md): never a provider's.
    """
    auth = headers.get("authorization") if "authorization" not in gateway_keys else None
    if auth:
        scheme, _, rest = auth.strip().partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest else auth.strip()
    return (headers.get("x-api-key") if "x-api-key" not in gateway_keys else None) or None


def held_secrets(settings: Settings) -> Secrets:
    """Return the credentials the gateway file holds: catalog entries' and saved configs' keys."""
    found: list[str | None] = []
    for entry in settings.catalog.values():
        found += [entry.api_key, *(entry.options.get(name) for name in CREDENTIAL_OPTIONS)]
    stack: list[object] = list(settings.configs.values())
    while stack:
        node = stack.pop()
        if not isinstance(node, Target):
            continue
        found += [node.api_key, *(node.provider_options.get(name) for name in CREDENTIAL_OPTIONS)]
        stack.extend(node.targets)
    return Secrets(found)
