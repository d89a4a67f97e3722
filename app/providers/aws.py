"""AWS SigV4 request signing for bedrock calls, done by botocore (the AWS SDK's own signer).

The request is signed once its URL, headers and body are final (app.pipeline.upstream.send), so
what is signed is what is sent: the exact URL string, the body bytes (or the spooled body file,
hashed in pieces without reading it into memory), and the values of the signed headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from app.errors import BadRequest

if TYPE_CHECKING:
    from botocore.credentials import Credentials

SERVICE = "bedrock"  # the signing name of bedrock-runtime, whatever the host
# Headers a client (on the proxy route) may have sent from its own signing: stale once re-signed.
_STALE = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
# Headers that are signed besides host: the body's type and AWS's own (x-amz-*, x-amzn-bedrock-*...).
# Other headers are sent unsigned, which SigV4 allows: nothing on the way can then break the signature
# by normalising a header the service does not care about.
_SIGNED_PREFIXES = ("x-amz-", "x-amzn-")
_NEVER_SIGNED = frozenset({"x-amzn-trace-id"})  # botocore's rule: tracers rewrite it on the way
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CREDENTIAL_HEADERS = (("aws_access_key_id", "x-portkey-aws-access-key-id"),
                       ("aws_secret_access_key", "x-portkey-aws-secret-access-key"))


def authorize(prepared: requests.PreparedRequest, options: Mapping[str, str], api_key: str | None) -> None:
    """Sign the request with the target's AWS keys; without keys, send its Bedrock API key as a Bearer token."""
    if api_key and not api_key.startswith("AWS4-") and not any(options.get(name) for name, _ in _CREDENTIAL_HEADERS):
        for name in _STALE:
            prepared.headers.pop(name, None)
        prepared.headers["Authorization"] = f"Bearer {api_key}"
        return
    sign(prepared, options)


def sign(prepared: requests.PreparedRequest, options: Mapping[str, str]) -> None:
    """Sign the prepared request in place with the target's AWS credentials and region."""
    region = options.get("aws_region")
    if not region:
        raise BadRequest("bedrock needs aws_region: send the x-portkey-aws-region header "
                         "or set it in the catalog entry or config target")
    sign_request(prepared, credentials_from(options), region)


def credentials_from(options: Mapping[str, str]) -> Credentials:
    """Return the AWS credentials of the target's options; a missing key or secret is a 400 (naming no value)."""
    from botocore.credentials import Credentials  # botocore loads on the first bedrock call, not at start-up

    missing = [header for name, header in _CREDENTIAL_HEADERS if not options.get(name)]
    if missing:
        raise BadRequest("bedrock needs AWS credentials to sign the request: send the " + " and ".join(missing)
                         + " header" + ("s" if len(missing) > 1 else "") + " (and x-portkey-aws-session-token for "
                         "temporary credentials), or set aws_access_key_id and aws_secret_access_key in the "
                         "catalog entry or config target; or send a Bedrock API key as Authorization: Bearer")
    return Credentials(options["aws_access_key_id"], options["aws_secret_access_key"],
                       options.get("aws_session_token") or None)


def sign_request(prepared: requests.PreparedRequest, credentials: Credentials, region: str,
                 service: str = SERVICE) -> None:
    """Add Authorization, X-Amz-Date (and X-Amz-Security-Token) to the prepared request, signed by botocore."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    url = prepared.url or ""
    headers = prepared.headers
    for name in _STALE:
        headers.pop(name, None)
    # The Host header is set here, not left to the HTTP client, so the signed value is the sent one.
    headers["Host"] = host_of(url)
    signed = {name: value for name, value in headers.items() if _is_signed(name.lower())}
    request = AWSRequest(method=prepared.method, url=url, headers=signed, data=prepared.body)
    # botocore hashes a file body in 1 MiB reads and seeks it back to where it was.
    SigV4Auth(credentials, service, region).add_auth(request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value


def host_of(url: str) -> str:
    """Return the Host header of a URL: lower-case name, port only when not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _is_signed(name: str) -> bool:
    if name in ("host", "content-type"):
        return True
    return name.startswith(_SIGNED_PREFIXES) and name not in _NEVER_SIGNED
