"""How a call authenticates to its provider: one auth object per call, in requests' `AuthBase` style.

A provider entry names its auth kind (app.providers.registry); the kind makes the call's auth object from the
credential and the options, and the object is applied to the prepared request once its URL, headers and body
are final (app.pipeline.upstream.send), so SigV4 signs exactly what is sent (docs/providers.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import requests
from requests.auth import AuthBase

from app.providers import aws


class HeaderAuth(AuthBase):
    """Send the credential in one header (Authorization: Bearer, api-key, x-api-key, x-goog-api-key)."""

    __slots__ = ("header", "prefix", "credential")

    def __init__(self, header: str, prefix: str, credential: str | None) -> None:
        self.header = header
        self.prefix = prefix
        self.credential = credential

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the header; without a credential the request goes as it is (a client header may still pass)."""
        if self.credential:
            r.headers[self.header] = self.prefix + self.credential
        return r

    def __repr__(self) -> str:
        return f"HeaderAuth({self.header!r}, credential=<redacted>)"


class SigV4Auth(AuthBase):
    """Sign the whole request with the target's AWS keys; without keys, send a Bedrock API key as a Bearer token."""

    __slots__ = ("options", "credential")

    def __init__(self, options: Mapping[str, str], credential: str | None) -> None:
        self.options = options
        self.credential = credential

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Sign in place (app.providers.aws): the URL, the signed headers and the body are final by now."""
        aws.authorize(r, self.options, self.credential)
        return r

    def __repr__(self) -> str:
        return "SigV4Auth(credential=<redacted>)"


@dataclass(frozen=True)
class HeaderKey:
    """The auth kind of a provider that takes its key in one header."""

    header: str
    prefix: str = ""

    def for_call(self, credential: str | None, options: Mapping[str, str]) -> AuthBase:
        """Return the auth object of one call."""
        return HeaderAuth(self.header, self.prefix, credential)


@dataclass(frozen=True)
class SigV4:
    """The auth kind of AWS: SigV4 signing by botocore, or a Bedrock API key as a Bearer token."""

    def for_call(self, credential: str | None, options: Mapping[str, str]) -> AuthBase:
        """Return the auth object of one call."""
        return SigV4Auth(options, credential)


AuthKind = HeaderKey | SigV4

BEARER = HeaderKey("Authorization", "Bearer ")
API_KEY = HeaderKey("api-key")  # Azure OpenAI
X_API_KEY = HeaderKey("x-api-key")  # Anthropic
# The header form keeps a Google key out of URLs (and so out of every log that prints one).
GOOGLE_API_KEY = HeaderKey("x-goog-api-key")
SIGV4 = SigV4()
