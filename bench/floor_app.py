"""The floor of this stack: the least a Flask + requests passthrough can do, run under Portico's gunicorn settings.

    FLOOR_UPSTREAM=http://127.0.0.1:9990 gunicorn -k gthread -w 2 --threads 16 bench.floor_app:app

Every request is forwarded to the same path on FLOOR_UPSTREAM with its body and headers (minus
hop-by-hop ones), and the answer is streamed back as it arrives. No auth, no routing, no logging.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9990").rstrip("/")
THREADS = int(os.environ.get("GATEWAY_THREADS", "16"))
CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "host", "content-length"})

app = Flask(__name__)

# gunicorn imports this module in each worker after the fork (no preload), so this is one pool per process.
session = requests.Session()
session.trust_env = False  # no proxy or netrc lookups per call: Portico does not make them either
session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=max(THREADS, 10), max_retries=0))


@app.get("/healthz")
def healthz() -> Response:
    """Answer the readiness probe without touching the upstream."""
    return Response("ok\n", mimetype="text/plain")


@app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
def passthrough(path: str) -> Response:
    """Forward the request to the upstream's same path and stream the answer back."""
    query = request.query_string.decode("latin-1")
    url = UPSTREAM + request.path + ("?" + query if query else "")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    upstream = session.request(request.method, url, data=request.get_data(), headers=headers,
                               stream=True, allow_redirects=False)
    kept = [(k, v) for k, v in upstream.raw.headers.items() if k.lower() not in HOP_BY_HOP - {"content-length"}]
    return Response(_relay(upstream), status=upstream.status_code, headers=kept, direct_passthrough=True)


def _relay(upstream: requests.Response) -> Iterator[bytes]:
    """Yield the upstream body as it arrives, then hand the connection back to the pool."""
    raw = upstream.raw
    finished = False
    try:
        while chunk := raw.read1(CHUNK, decode_content=False):
            yield chunk
        finished = True
    finally:
        if not finished:
            raw.close()
        raw.release_conn()
