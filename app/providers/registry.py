"""Provider slugs: base URL, auth style, native format and provider-specific headers (SPEC 4.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import BadRequest

BEARER = "bearer"
ANTHROPIC = "anthropic"
AZURE = "azure"
GOOGLE = "google"
SIGV4 = "sigv4"

OPENAI_FORMAT = "openai"
ANTHROPIC_FORMAT = "anthropic"

# x-portkey-* header suffix → option name, per provider: read only for that provider (SPEC 2).
_OPENAI_OPTIONS = {"openai-organization": "openai_organization", "openai-project": "openai_project"}
_ANTHROPIC_OPTIONS = {"anthropic-version": "anthropic_version", "anthropic-beta": "anthropic_beta"}
_AZURE_OPTIONS = {"azure-resource-name": "resource_name", "azure-deployment-id": "deployment_id",
                  "azure-api-version": "api_version"}
_AWS_OPTIONS = {"aws-region": "aws_region", "aws-access-key-id": "aws_access_key_id",
                "aws-secret-access-key": "aws_secret_access_key", "aws-session-token": "aws_session_token"}
_VERTEX_OPTIONS = {"vertex-project-id": "vertex_project_id", "vertex-region": "vertex_region"}


@dataclass(frozen=True)
class Provider:
    """How to reach one provider: where, how to authenticate, which unified format it speaks natively."""

    slug: str
    base_url: str | None
    auth: str = BEARER
    native_format: str | None = OPENAI_FORMAT
    option_headers: Mapping[str, str] | None = None

    def base_for(self, options: Mapping[str, str]) -> str:
        """Return the base URL, filling in resource or region from the options."""
        if self.slug == "azure-openai":
            resource = _required(options, "resource_name", "x-portkey-azure-resource-name", self.slug)
            return f"https://{resource}.openai.azure.com/openai"
        if self.slug == "vertex-ai":
            region = _required(options, "vertex_region", "x-portkey-vertex-region", self.slug)
            # The global endpoint has no region prefix.
            return "https://aiplatform.googleapis.com" if region == "global" else f"https://{region}-aiplatform.googleapis.com"
        if self.slug == "bedrock":
            region = _required(options, "aws_region", "x-portkey-aws-region", self.slug)
            return f"https://bedrock-runtime.{region}.amazonaws.com"
        if self.base_url is None:
            raise BadRequest(f"Provider {self.slug} needs a custom host: send x-portkey-custom-host "
                             "or set custom_host in the config or catalog entry")
        return self.base_url

    def auth_headers(self, credential: str | None, options: Mapping[str, str],
                     client_headers: Mapping[str, str]) -> dict[str, str]:
        """Return the headers that authenticate to this provider with the credential."""
        headers: dict[str, str] = {}
        if self.auth == BEARER and credential:
            headers["Authorization"] = f"Bearer {credential}"
        elif self.auth == ANTHROPIC:
            if credential:
                headers["x-api-key"] = credential
            version = options.get("anthropic_version") or client_headers.get("anthropic-version")
            headers["anthropic-version"] = version or "2023-06-01"
            if options.get("anthropic_beta"):
                headers["anthropic-beta"] = options["anthropic_beta"]
        elif self.auth == AZURE and credential:
            headers["api-key"] = credential
        elif self.auth == GOOGLE and credential:
            # The header form keeps the key out of URLs (and so out of every log that prints one).
            headers["x-goog-api-key"] = credential
        # SIGV4: the request is signed whole, once its URL and body are final (app.providers.aws).
        if self.slug == "openai":
            if options.get("openai_organization"):
                headers["OpenAI-Organization"] = options["openai_organization"]
            if options.get("openai_project"):
                headers["OpenAI-Project"] = options["openai_project"]
        return headers

    def unified_path(self, rest: str, options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """Return the upstream path and extra query parameters of a unified call."""
        if self.auth == AZURE:
            deployment = _required(options, "deployment_id", "x-portkey-azure-deployment-id", self.slug)
            version = _required(options, "api_version", "x-portkey-azure-api-version", self.slug)
            return f"/deployments/{deployment}{rest}", {"api-version": version}
        return rest, {}


def _required(options: Mapping[str, str], name: str, header: str, slug: str) -> str:
    value = options.get(name)
    if not value:
        raise BadRequest(f"{slug} needs {name}: send the {header} header or set it in the catalog entry")
    return value


def _bearer(slug: str, base_url: str | None) -> Provider:
    return Provider(slug, base_url)


PROVIDERS: dict[str, Provider] = {p.slug: p for p in (
    Provider("openai", "https://api.openai.com/v1", option_headers=_OPENAI_OPTIONS),
    Provider("anthropic", "https://api.anthropic.com/v1", ANTHROPIC, ANTHROPIC_FORMAT, _ANTHROPIC_OPTIONS),
    Provider("azure-openai", None, AZURE, OPENAI_FORMAT, _AZURE_OPTIONS),
    Provider("cohere", "https://api.cohere.ai/v1", native_format=None),
    Provider("google", "https://generativelanguage.googleapis.com", GOOGLE, None),
    Provider("vertex-ai", None, BEARER, None, _VERTEX_OPTIONS),
    Provider("bedrock", None, SIGV4, None, _AWS_OPTIONS),
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
    """Return the provider for a slug; an unknown slug is a 400."""
    provider = PROVIDERS.get(slug.strip().lower())
    if provider is None:
        raise BadRequest("Invalid provider passed", errors=[f"unknown provider slug: {slug[:64]!r}"])
    return provider


def header_options(provider: Provider, headers: Mapping[str, str]) -> dict[str, str]:
    """Return the provider options sent as x-portkey-* headers, for this provider only."""
    options: dict[str, str] = {}
    for suffix, name in (provider.option_headers or {}).items():
        value = headers.get(f"x-portkey-{suffix}")
        if value:
            options[name] = value
    return options
