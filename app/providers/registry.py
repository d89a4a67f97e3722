"""The providers: one object each, owning its base URL rules, auth, options and adapters (docs/providers.md)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from requests.auth import AuthBase

from app.errors import BadRequest
from app.providers.auth import API_KEY, BEARER, GOOGLE_API_KEY, SIGV4, X_API_KEY, AuthKind

OPENAI_FORMAT = "openai"
ANTHROPIC_FORMAT = "anthropic"
CHAT = "chatComplete"  # the unified endpoints, by Portkey's names
EMBED = "embed"

# x-portkey-* header suffix → option name, per provider: read only for that provider (docs/providers.md).
_OPENAI_OPTIONS = {"openai-organization": "openai_organization", "openai-project": "openai_project"}
_ANTHROPIC_OPTIONS = {"anthropic-version": "anthropic_version", "anthropic-beta": "anthropic_beta"}
_AZURE_OPTIONS = {"azure-resource-name": "resource_name", "azure-deployment-id": "deployment_id",
                  "azure-api-version": "api_version"}
_AWS_OPTIONS = {"aws-region": "aws_region", "aws-access-key-id": "aws_access_key_id",
                "aws-secret-access-key": "aws_secret_access_key", "aws-session-token": "aws_session_token"}
_VERTEX_OPTIONS = {"vertex-project-id": "vertex_project_id", "vertex-region": "vertex_region"}
# Every provider option, the one list the config schema, the gateway file's catalog and the headers share.
OPTION_NAMES: tuple[str, ...] = tuple(name for group in (
    _AZURE_OPTIONS, _AWS_OPTIONS, _VERTEX_OPTIONS, _OPENAI_OPTIONS, _ANTHROPIC_OPTIONS) for name in group.values())
_SHOWN = 64  # how much of a refused option value an error echoes


@dataclass(frozen=True)
class OptionForm:
    """The form a provider option must have, because it becomes part of an upstream host, path or query."""

    pattern: re.Pattern[str]
    expected: str


def _form(pattern: str, expected: str) -> OptionForm:
    return OptionForm(re.compile(pattern, re.ASCII), expected)


# Every provider option that ends up in an upstream URL, with its real grammar: letters, digits and
# the few separators each name allows, so none can add a host, port, userinfo, path, query or
# fragment (docs/security.md). Checked wherever an option enters: headers, configs, catalog entries.
URL_OPTIONS: Mapping[str, OptionForm] = {
    "resource_name": _form(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}[A-Za-z0-9]",
                           "an Azure resource name: 2-64 letters, digits and hyphens, "
                           "not starting or ending with a hyphen (e.g. my-resource)"),
    "deployment_id": _form(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                           "an Azure deployment name: up to 64 letters, digits, '-', '_' and '.', "
                           "starting with a letter or digit (e.g. gpt-4o-prod)"),
    "api_version": _form(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:-[a-z0-9]{1,16})?|[a-z0-9]{1,16}",
                         "an Azure API version (e.g. 2024-10-21, 2024-10-01-preview or preview)"),
    "aws_region": _form(r"[a-z]{2}(?:-[a-z]{1,16}){1,3}-[0-9]{1,2}",
                        "an AWS region (e.g. us-east-1 or us-gov-west-1)"),
    "vertex_region": _form(r"global|[a-z]{1,20}-[a-z]{1,20}[0-9]{1,2}",
                           "a Google Cloud region (e.g. us-central1 or europe-west4) or global"),
    # A project id (6-30 characters), a project number, or a legacy domain-scoped id (example.com:my-project).
    "vertex_project_id": _form(r"(?:[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
                               r"|[0-9]{1,20}",
                               "a Google Cloud project id: 6-30 lowercase letters, digits and hyphens, "
                               "starting with a letter (e.g. my-project-123), or a project number"),
}


def option_problem(name: str, value: str) -> str | None:
    """Return why a provider option cannot go into an upstream URL, or None when it can."""
    form = URL_OPTIONS.get(name)
    if form is None or form.pattern.fullmatch(value):
        return None
    shown = repr(value[:_SHOWN]) + ("..." if len(value) > _SHOWN else "")
    return f"must be {form.expected}; got {shown}"


BaseRule = Callable[["Provider", Mapping[str, str]], str]
PathRule = Callable[["Provider", str, Mapping[str, str]], tuple[str, dict[str, str]]]
HeaderRule = Callable[[Mapping[str, str], Mapping[str, str]], dict[str, str]]


def custom_host_or_fixed(provider: Provider, options: Mapping[str, str]) -> str:
    """Return the provider's one base URL; a provider without one is reached only through a custom host."""
    if provider.base_url is None:
        raise BadRequest(f"Provider {provider.slug} needs a custom host: send x-portkey-custom-host "
                         "or set custom_host in the config or catalog entry")
    return provider.base_url


def same_path(provider: Provider, rest: str, options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Return a unified call's path as it is, with no extra query."""
    return rest, {}


def no_headers(options: Mapping[str, str], client_headers: Mapping[str, str]) -> dict[str, str]:
    """Return no option headers: the provider takes none."""
    return {}


@dataclass(frozen=True)
class Provider:
    """One provider: where it is, how to authenticate, the options it reads, the adapters that translate to it."""

    slug: str
    base_url: str | None
    auth: AuthKind = BEARER
    native_format: str | None = OPENAI_FORMAT
    option_headers: Mapping[str, str] = field(default_factory=dict)  # x-portkey-* suffix → option name
    # The option naming the one account a credential belongs to (an Azure key opens one resource): with a
    # credential held on the gateway only the operator may set it (docs/security.md).
    account_option: str | None = None
    base_rule: BaseRule = custom_host_or_fixed
    path_rule: PathRule = same_path
    header_rule: HeaderRule = no_headers  # the headers its options become upstream
    # Unified endpoint → "module:ADAPTER" translating to the native API, imported on first use (app.translate).
    adapters: Mapping[str, str] = field(default_factory=dict)

    def base_for(self, options: Mapping[str, str]) -> str:
        """Return the base URL, filling in resource or region from the options."""
        return self.base_rule(self, options)

    def unified_path(self, rest: str, options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """Return the upstream path and extra query parameters of a unified call."""
        return self.path_rule(self, rest, options)

    def sent_headers(self, options: Mapping[str, str], client_headers: Mapping[str, str]) -> dict[str, str]:
        """Return the provider-specific headers its options become (OpenAI-Organization, anthropic-version...)."""
        return self.header_rule(options, client_headers)

    def auth_for(self, credential: str | None, options: Mapping[str, str]) -> AuthBase:
        """Return the auth object of one call, applied to the prepared request (app.providers.auth)."""
        return self.auth.for_call(credential, options)

    def required(self, options: Mapping[str, str], name: str) -> str:
        """Return an option an upstream URL needs; a missing or malformed one is a 400 naming its header."""
        header = next(f"x-portkey-{suffix}" for suffix, option in self.option_headers.items() if option == name)
        value = options.get(name)
        if not value:
            raise BadRequest(f"{self.slug} needs {name}: send the {header} header or set it in the catalog entry")
        # Checked where options enter too; checked again here, where the URL is built, whatever the source.
        problem = option_problem(name, value)
        if problem:
            raise BadRequest(f"Invalid {name} ({header}): {problem}")
        return value


def _azure_base(provider: Provider, options: Mapping[str, str]) -> str:
    return f"https://{provider.required(options, 'resource_name')}.openai.azure.com/openai"


def _azure_path(provider: Provider, rest: str, options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    deployment = provider.required(options, "deployment_id")
    version = provider.required(options, "api_version")
    return f"/deployments/{deployment}{rest}", {"api-version": version}


def _vertex_base(provider: Provider, options: Mapping[str, str]) -> str:
    region = provider.required(options, "vertex_region")
    # The global endpoint has no region prefix.
    return "https://aiplatform.googleapis.com" if region == "global" else f"https://{region}-aiplatform.googleapis.com"


def _bedrock_base(provider: Provider, options: Mapping[str, str]) -> str:
    return f"https://bedrock-runtime.{provider.required(options, 'aws_region')}.amazonaws.com"


def _openai_headers(options: Mapping[str, str], client_headers: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if options.get("openai_organization"):
        headers["OpenAI-Organization"] = options["openai_organization"]
    if options.get("openai_project"):
        headers["OpenAI-Project"] = options["openai_project"]
    return headers


def _anthropic_headers(options: Mapping[str, str], client_headers: Mapping[str, str]) -> dict[str, str]:
    version = options.get("anthropic_version") or client_headers.get("anthropic-version")
    headers = {"anthropic-version": version or "2023-06-01"}
    if options.get("anthropic_beta"):
        headers["anthropic-beta"] = options["anthropic_beta"]
    return headers


def _bearer(slug: str, base_url: str | None) -> Provider:
    return Provider(slug, base_url)


PROVIDERS: dict[str, Provider] = {p.slug: p for p in (
    Provider("openai", "https://api.openai.com/v1", option_headers=_OPENAI_OPTIONS, header_rule=_openai_headers),
    Provider("anthropic", "https://api.anthropic.com/v1", X_API_KEY, ANTHROPIC_FORMAT, _ANTHROPIC_OPTIONS,
             header_rule=_anthropic_headers, adapters={CHAT: "app.translate.anthropic:CHAT"}),
    Provider("azure-openai", None, API_KEY, OPENAI_FORMAT, _AZURE_OPTIONS, account_option="resource_name",
             base_rule=_azure_base, path_rule=_azure_path),
    Provider("cohere", "https://api.cohere.ai/v1", native_format=None,
             adapters={CHAT: "app.translate.cohere:CHAT", EMBED: "app.translate.cohere:EMBED"}),
    Provider("google", "https://generativelanguage.googleapis.com", GOOGLE_API_KEY, None,
             adapters={CHAT: "app.translate.gemini:GOOGLE_CHAT", EMBED: "app.translate.gemini:GOOGLE_EMBED"}),
    Provider("vertex-ai", None, BEARER, None, _VERTEX_OPTIONS, base_rule=_vertex_base,
             adapters={CHAT: "app.translate.vertex:CHAT",  # Gemini, or Claude by the model name
                       EMBED: "app.translate.gemini:VERTEX_EMBED"}),
    Provider("bedrock", None, SIGV4, None, _AWS_OPTIONS, base_rule=_bedrock_base,
             adapters={CHAT: "app.translate.bedrock:CHAT", EMBED: "app.translate.bedrock:EMBED"}),
    _bearer("mistral-ai", "https://api.mistral.ai/v1"),
    _bearer("groq", "https://api.groq.com/openai/v1"),
    _bearer("together-ai", "https://api.together.xyz/v1"),
    _bearer("fireworks-ai", "https://api.fireworks.ai/inference/v1"),
    _bearer("deepseek", "https://api.deepseek.com/v1"),
    _bearer("x-ai", "https://api.x.ai/v1"),
    _bearer("perplexity-ai", "https://api.perplexity.ai"),
    _bearer("openrouter", "https://openrouter.ai/api/v1"),
    _bearer("jina", "https://api.jina.ai/v1"),
    _bearer("voyage", "https://api.voyageai.com/v1"),
    Provider("ollama", None),  # no auth of its own; a client Authorization still reaches a proxy in front of it
)}


def get_provider(slug: str) -> Provider:
    """Return the provider for a slug; an unknown slug is a 400 whose message names it (SDKs show only that)."""
    provider = PROVIDERS.get(slug.strip().lower())
    if provider is None:
        raise BadRequest(f"Invalid provider passed: {slug[:_SHOWN]!r}{did_you_mean(slug)}",
                         errors=[f"unknown provider slug: {slug[:_SHOWN]!r}"])
    return provider


def did_you_mean(slug: str) -> str:
    """Return ` (did you mean 'openai'?)` for a slug close to a known one, else an empty string."""
    close = difflib.get_close_matches(slug[:_SHOWN].strip().lower(), PROVIDERS, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def header_options(provider: Provider, headers: Mapping[str, str]) -> dict[str, str]:
    """Return the provider options sent as x-portkey-* headers, for this provider only; a malformed one is a 400."""
    options: dict[str, str] = {}
    for suffix, name in provider.option_headers.items():
        value = headers.get(f"x-portkey-{suffix}")
        if value:
            odd = odd_character(value)  # the HTTP parser keeps out CR and LF, not every control (docs/security.md)
            if odd is not None:
                raise BadRequest(f"Invalid x-portkey-{suffix} header: it {odd}", errors=[f"x-portkey-{suffix}: {odd}"])
            problem = option_problem(name, value)
            if problem:
                raise BadRequest(f"Invalid x-portkey-{suffix} header: {problem}")
            options[name] = value
    return options


_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_BEYOND_LATIN_1 = re.compile("[^\x00-\xff]")


def odd_character(text: str, in_header: bool = True) -> str | None:
    """Return what keeps text out of an upstream header or URL part, or None when nothing does.

    CR and LF would split a header (requests refuses them), other controls and lone surrogates
    cannot be sent or encoded, and a header carries Latin-1 only (docs/security.md).
    """
    found = _CONTROL_OR_SURROGATE.search(text)
    if found is not None:
        code = ord(found.group())
        kind = "a lone surrogate" if code >= 0xD800 else "a control character"
        return f"contains {kind} (U+{code:04X})"
    found = _BEYOND_LATIN_1.search(text) if in_header else None
    if found is not None:
        return f"contains a character an HTTP header cannot carry (U+{ord(found.group()):04X})"
    return None
