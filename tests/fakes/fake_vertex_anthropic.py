"""Claude on Vertex AI: rawPredict / streamRawPredict under publishers/anthropic, answering as Anthropic does.

Vertex takes an OAuth bearer token, the model in the path and `anthropic_version: vertex-2023-10-16` in the
body; the rest of the body, the answer and the stream are Anthropic's Messages API (tests.fakes.provider).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from tests.fakes.fake_gemini import google_error
from tests.fakes.native import route
from tests.fakes.provider import _anthropic_error, _anthropic_messages, _bearer_token, _json_object

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
_PATH = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/anthropic/models/(?P<model>[^/:]+)"


@route("POST", _PATH + r":(?P<method>rawPredict|streamRawPredict)")
def raw_predict(ctx: Any, match: re.Match[str]) -> Any:
    """Answer a Claude call on Vertex."""
    request = ctx.request
    if not _bearer_token(request.headers):
        return google_error(401, "UNAUTHENTICATED", "Request is missing required authentication credential.")
    payload = _json_object(request.body)
    if payload is None:
        return _anthropic_error(400, "invalid_request_error", "There was an error parsing the body of your request")
    if payload.get("anthropic_version") != VERTEX_ANTHROPIC_VERSION:
        return _anthropic_error(400, "invalid_request_error",
                                f"anthropic_version: must be {VERTEX_ANTHROPIC_VERSION!r} on Vertex AI")
    if (match["method"] == "streamRawPredict") != (payload.get("stream") is True):
        return _anthropic_error(400, "invalid_request_error", "stream must be true on streamRawPredict, and only there")
    # The Messages API handler checks what Anthropic's own endpoint needs: give it the model and headers.
    body = {**{k: v for k, v in payload.items() if k != "anthropic_version"}, "model": match["model"]}
    headers = {**request.headers, "x-api-key": "vertex-oauth", "anthropic-version": "2023-06-01"}
    return _anthropic_messages(replace(ctx, request=replace(request, headers=headers,
                                                            body=json.dumps(body).encode())))
