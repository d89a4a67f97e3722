"""AWS SigV4 request signing for bedrock (placeholder until the bedrock adapter lands)."""

from __future__ import annotations

from collections.abc import Mapping

import requests

from app.errors import BadRequest


def sign(prepared: requests.PreparedRequest, options: Mapping[str, str]) -> None:
    """Sign the prepared request in place with the target's AWS credentials."""
    raise BadRequest("bedrock needs AWS SigV4 request signing, which this version of the gateway does not do yet")
