"""The admin dashboard through gunicorn: auth, HTML, the keys view, vendored assets, a real headless Chromium render."""

from __future__ import annotations

import hashlib
import html as htmlib
import json
import re
import shutil
import struct
import subprocess
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app.governance.store import StateUnavailable
from app.settings import hash_key
from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BASIC = ("admin", ADMIN_KEY)
CHROMIUM = "/usr/bin/chromium"
UPLOT_BANNER = b"/*! https://github.com/leeoniya/uPlot (v1.6.32) */"
# A trace id is whatever the client sends: the page must show it as text, never as markup.
# Where the requests chart's plot area sits in a 1280 px wide screenshot (between its caption and its legend).
PLOT_TOP, PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT = 220, 400, 90, 600
HOSTILE = '<b id="pwned">"x"&amp;</b>'
HOSTILE_KEY = '<b id="pwned-key">k</b>'  # a key's name is the operator's text: shown as text too
# The keys table's spend bar (--spend in dashboard.css), drawn where the spend is under 80 % of the budget.
SPEND_COLOUR = bytes((0x70, 0x48, 0xE8))


def via(fake: FakeProvider, provider: str, trace_id: str, **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider,
            "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}",
            "x-portkey-trace-id": trace_id, **extra}


@pytest.fixture(scope="module")
def traffic(gateway: Gateway, fake: FakeProvider) -> dict[str, Any]:
    """Send 30 calls (cohere and openai, some failing upstream) and wait until the request log has them all."""
    run = uuid.uuid4().hex[:8]
    traces: list[str] = []
    session = requests.Session()

    def call(method: str, path: str, provider: str, body: Any = None, **extra: str) -> None:
        trace = f"dash-{run}-{len(traces):02d}"
        traces.append(trace)
        session.request(method, gateway.url + path, json=body, headers=via(fake, provider, trace, **extra), timeout=10)

    rerank = {"model": "rerank-v3.5", "query": "q", "documents": ["a", "b"]}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
    for i in range(12):  # proxy route: x-fake-status reaches the fake
        status = {3: "429", 5: "500", 11: "500"}.get(i)
        call("POST", "/v1/rerank", "cohere", rerank, **({"x-fake-status": status} if status else {}))
    for _ in range(10):
        call("POST", "/v1/chat/completions", "openai", chat)
    for _ in range(4):
        call("GET", "/v1/models", "openai", None, **{"x-fake-status": "503"})
    for _ in range(3):
        call("POST", "/v1/embeddings", "openai", {"model": "text-embedding-3-small", "input": "hi"})
    hostile = f"dash-{run}-{HOSTILE}"
    traces.append(hostile)
    session.post(gateway.url + "/v1/rerank", json=rerank, headers=via(fake, "cohere", hostile), timeout=10)

    deadline = time.monotonic() + 10
    while True:
        res = requests.get(f"{gateway.url}/admin/logs", params={"limit": 1000}, headers=ADMIN, timeout=5)
        rows = res.json()["logs"]
        seen = {row["trace_id"] for row in rows}
        if seen >= set(traces):
            break
        assert time.monotonic() < deadline, f"missing from the request log: {set(traces) - seen}"
        time.sleep(0.1)
    return {"traces": traces, "rows": [row for row in rows if row["trace_id"] in set(traces)]}


@pytest.fixture(scope="module")
def keyed(gateway: Gateway, fake: FakeProvider) -> dict[str, Any]:
    """Create a managed key with limits and a budget, call with it, and set its budget to twice what it spent.

    Also a key with a hostile name, a revoked one and an expired one. Returns the key's id, name, secret and use.
    """
    run = uuid.uuid4().hex[:8]

    def admin(method: str, path: str, body: Any = None) -> dict[str, Any]:
        res = requests.request(method, gateway.url + path, json=body, headers=ADMIN, timeout=5)
        assert res.status_code in (200, 201), res.text
        return res.json()  # type: ignore[no-any-return]

    created = admin("POST", "/admin/keys", {"name": f"dash-keys-{run}", "limits": {"rpm": 600, "max_concurrent": 4},
                                            "budget": {"usd": 5, "period": "month"}})
    secret = created["key"]
    admin("POST", "/admin/keys", {"name": HOSTILE_KEY})
    admin("DELETE", f"/admin/keys/{admin('POST', '/admin/keys', {'name': f'dash-revoked-{run}'})['id']}")
    admin("POST", "/admin/keys", {"name": f"dash-expired-{run}", "expires_at": "2020-01-02T03:04:05Z"})
    # About 2,000 prompt tokens each (the fake counts a quarter of the messages' JSON), priced as gpt-4o: cents.
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 1600}]}
    small = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    for index, body in enumerate((big, big, big, small)):
        res = requests.post(gateway.url + "/v1/chat/completions", json=body, timeout=10, headers={
            **via(fake, "openai", f"dash-key-{run}-{index}"), "x-portkey-api-key": secret})
        assert res.status_code == 200, res.text
    deadline = time.monotonic() + 10
    while True:  # the key's spend reaches the state store at once (a budgeted key), the log within a second
        usage = admin("GET", f"/admin/keys/{created['id']}")["usage"]
        rows = requests.get(f"{gateway.url}/admin/logs", params={"key": f"dash-keys-{run}"}, headers=ADMIN,
                            timeout=5).json()["logs"]
        if usage["spent_usd"] > 0.01 and usage["reserved_usd"] == 0 and len(rows) == 4:
            break
        assert time.monotonic() < deadline, (usage, len(rows))
        time.sleep(0.1)
    budget = round(2 * usage["spent_usd"], 6)  # the bar then stands at half, in the spend colour
    admin("PATCH", f"/admin/keys/{created['id']}", {"budget": {"usd": budget, "period": "month"}})
    return {"id": created["id"], "name": created["name"], "secret": secret, "spent": usage["spent_usd"],
            "budget": budget}


def key_row(page: str, key_id: str) -> str:
    """Return the keys table's row of a key (its HTML, from the page or Chromium's DOM)."""
    match = re.search(rf'<tr data-key-id="{re.escape(key_id)}">(.*?)</tr>', page, re.S)
    assert match is not None, f"no row for {key_id} in the keys table"
    return match.group(1)


def row_text(row: str) -> str:
    """Return a table row's text: tags dropped, entities decoded, white space folded."""
    return " ".join(htmlib.unescape(re.sub(r"<[^>]+>", " ", row)).split())


def assert_spend(text: str, keyed: dict[str, Any]) -> None:
    """Check a row shows the key's spend against its budget: `<spent> / <budget> USD (month)`."""
    match = re.search(r"([0-9.,]+) / ([0-9.,]+) USD \(month\)", text)
    assert match is not None, text
    assert float(match.group(1)) == pytest.approx(keyed["spent"], abs=0.00005)  # a budget of cents: 4 decimals
    assert float(match.group(2)) == pytest.approx(keyed["budget"], abs=0.00005)


# -- plain HTTP ------------------------------------------------------------------------------------------


def test_dashboard_needs_the_admin_key(gateway: Gateway) -> None:
    res = requests.get(f"{gateway.url}/admin/dashboard")
    assert res.status_code == 401
    assert res.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(f"{gateway.url}/admin/dashboard", auth=("admin", "wrong")).status_code == 401
    assert requests.get(f"{gateway.url}/admin/dashboard", headers={"x-portkey-api-key": GATEWAY_KEY}).status_code == 401
    assert requests.get(f"{gateway.url}/admin/dashboard", headers=ADMIN).status_code == 200


def test_dashboard_renders_html_with_the_latest_requests(gateway: Gateway, traffic: dict[str, Any]) -> None:
    res = requests.get(f"{gateway.url}/admin/dashboard", auth=BASIC)
    assert res.status_code == 200
    assert res.headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
    assert res.headers["Cache-Control"] == "no-store"
    html = res.text
    assert f'data-trace-id="{traffic["traces"][-2]}"' in html
    for chart in ("chart-requests", "chart-errors", "chart-latency", "chart-tokens", "chart-cost"):
        assert f'id="{chart}"' in html
    data = json.loads(re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>',
                                html, re.S).group(1))  # type: ignore[union-attr]
    assert {"cohere", "openai"} <= set(data["providers"])
    assert len(data["x"]) == 96 and data["step"] == 900  # 24 h in quarter-hours, the default
    assert sum(data["series"]["requests"]["cohere"]) >= 13
    assert max(v or 0 for v in data["series"]["error_rate"]["cohere"]) > 0
    assert any(v for v in data["series"]["tokens"]["openai"])
    # Escaped as text in the table, and as JSON-safe text nowhere else; no secret ever reaches the page.
    assert HOSTILE not in html and "&lt;b id=&#34;pwned&#34;&gt;" in html
    for secret in (ADMIN_KEY, GATEWAY_KEY, PROVIDER_SECRET, "co-catalog-secret-123", "sk-catalog-openai-secret"):
        assert secret not in html


def test_the_keys_view_shows_each_key_with_its_limits_spend_and_models(gateway: Gateway,
                                                                        keyed: dict[str, Any]) -> None:
    res = requests.get(f"{gateway.url}/admin/dashboard", params={"range": "1h"}, auth=BASIC)
    assert res.status_code == 200
    assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
    page = res.text
    assert 'id="keys-table"' in page and 'id="keys-unavailable"' not in page

    text = row_text(key_row(page, keyed["id"]))
    assert text.startswith(f"{keyed['name']} {keyed['id']} active 600 rpm · 4 concurrent "), text
    assert_spend(text, keyed)
    # Requests and tokens in the last minute (4 calls, about 6,500 tokens), none in flight; then the log's view.
    match = re.search(r"USD \(month\) 50\.0 % of the budget for \d{4}-\d\d (\d+) requests ([\d,]+) tokens 0 "
                      r"4 calls \$[0-9.]+ gpt-4o 3 gpt-4o-mini 1$", text)
    assert match is not None, text
    assert int(match.group(1)) == 4 and int(match.group(2).replace(",", "")) > 6000
    # The static key of the gateway file: no limits, no budget, no in-flight count; its calls (this module's traffic,
    # and whatever other tests of the session sent with it) and models from the log.
    static = row_text(key_row(page, "static:it-team"))
    assert re.fullmatch(r"it-team static:it-team active — no budget [\d,]+ requests [\d,]+ tokens — [\d,]+ calls "
                        r"\$[0-9.]+( \S+ [\d,]+){3}", static), static
    assert "rerank-v3.5" in static and "gpt-4o-mini" in static
    # Key names are text; a revoked or expired key says so and comes after the live ones.
    assert HOSTILE_KEY not in page and "&lt;b id=&#34;pwned-key&#34;&gt;k&lt;/b&gt;" in page
    revoked = re.search(r'<tr data-key-id="[^"]+">\s*<th[^>]*><span>dash-revoked-.*?</tr>', page, re.S)
    expired = re.search(r'<tr data-key-id="[^"]+">\s*<th[^>]*><span>dash-expired-.*?</tr>', page, re.S)
    assert revoked is not None and ">revoked<" in revoked.group(0)
    assert expired is not None and 'title="expired at 2020-01-02T03:04:05Z">expired<' in expired.group(0)
    assert page.index(keyed["id"]) < min(revoked.start(), expired.start())
    # Never a secret or a hash: the managed key's, the gateway file's, the admin key's.
    for secret in (keyed["secret"], GATEWAY_KEY, ADMIN_KEY, PROVIDER_SECRET):
        assert secret not in page
        assert hashlib.sha256(secret.encode()).hexdigest() not in page


def test_an_unavailable_state_store_is_a_note_not_an_error(app_factory: Callable[..., Flask], tmp_path: Path) -> None:
    class DownStore:
        """A state store whose every read fails, as a Redis that went away does."""

        def __getattr__(self, name: str) -> Callable[..., Any]:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise StateUnavailable("redis://127.0.0.1:1: connection refused")
            return fail

    app = app_factory(logs_path=str(tmp_path / "logs.sqlite"), admin_key_sha256=hash_key(ADMIN_KEY))
    governance = app.extensions["portico"].governance
    governance.store = governance.index.store = DownStore()
    res = app.test_client().get("/admin/dashboard", headers=ADMIN)
    assert res.status_code == 200
    page = res.get_data(as_text=True)
    assert 'id="keys-unavailable"' in page and "The state store is unavailable" in page
    assert "connection refused" in page and 'id="keys-table"' not in page
    assert "No requests logged in the last 24 h" in page  # the rest of the page is still there


def test_range_is_validated(gateway: Gateway) -> None:
    for name, buckets in (("1h", 60), ("24h", 96), ("7d", 84)):
        res = requests.get(f"{gateway.url}/admin/dashboard", params={"range": name}, auth=BASIC)
        assert res.status_code == 200, name
        match = re.search(r'id="dashboard-data">(.*?)</script>', res.text, re.S)
        assert match is None or len(json.loads(match.group(1))["x"]) == buckets
    for bad in ("2h", "30d", "<script>", "1H"):
        res = requests.get(f"{gateway.url}/admin/dashboard", params={"range": bad}, auth=BASIC)
        assert res.status_code == 400, bad
        assert "range must be one of 1h, 24h, 7d" in res.json()["message"]


def test_vendored_assets_are_served_without_credentials(gateway: Gateway) -> None:
    """Scripts and styles hold no data, so they are public; everything else under /admin needs the key."""
    js = requests.get(f"{gateway.url}/admin/static/vendor/uplot/uPlot.iife.min.js")
    assert js.status_code == 200 and js.content.startswith(UPLOT_BANNER)
    assert "javascript" in js.headers["Content-Type"]
    css = requests.get(f"{gateway.url}/admin/static/vendor/uplot/uPlot.min.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css") and b".uplot" in css.content
    for own in ("dashboard.js", "dashboard.css"):
        assert requests.get(f"{gateway.url}/admin/static/{own}").status_code == 200
    assert requests.get(f"{gateway.url}/admin/static/vendor/uplot/LICENSE").status_code == 200
    assert requests.get(f"{gateway.url}/admin/static/nope.js").status_code == 404
    for escape in ("/admin/static/../routes/dashboard.py", "/admin/static/..%2f..%2froutes/dashboard.py",
                   "/admin/static/%2e%2e/templates/dashboard.html"):
        res = requests.get(gateway.url + escape)
        assert res.status_code in (400, 401, 404), escape
        assert b"Blueprint" not in res.content and b"{%" not in res.content


def test_empty_and_disabled_logs_show_text_not_errors(app_factory: Callable[..., Flask], tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    empty = app_factory(logs_path=str(tmp_path / "logs.sqlite"), admin_key_sha256=hash_key(ADMIN_KEY))
    res = empty.test_client().get("/admin/dashboard?range=1h", headers=auth)
    assert res.status_code == 200
    html = res.get_data(as_text=True)
    assert "No requests in the last 1 h yet" in html and "No requests logged in the last 1 h" in html
    assert 'id="dashboard-data"' not in html
    keys = row_text(key_row(html, "static:team-a"))
    # No use, no in-flight count without max_concurrent, no calls, cost or models yet.
    assert keys == "team-a static:team-a active — no budget 0 requests 0 tokens — 0 calls — —", keys
    off = app_factory(admin_key_sha256=hash_key(ADMIN_KEY))
    res = off.test_client().get("/admin/dashboard", headers=auth)
    assert res.status_code == 200 and "The request log is off" in res.get_data(as_text=True)
    # The keys come from the state store: still shown, with the log's columns saying it is off.
    assert "request log off" in row_text(key_row(res.get_data(as_text=True), "static:team-a"))
    assert app_factory().test_client().get("/admin/dashboard", headers=auth).status_code == 403  # no admin key


# -- a real browser --------------------------------------------------------------------------------------


def chromium() -> str:
    """Return the Chromium binary, failing (not skipping) when it is missing."""
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not found:
        pytest.fail("install chromium (apt-get install chromium)")
    return found


def browse(url: str, tmp: Path, name: str, *mode: str) -> subprocess.Popen[str]:
    """Start headless Chromium on url with its own profile; the caller collects stdout/stderr."""
    profile = tmp / f"profile-{name}"
    profile.mkdir()
    args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,1600",
            *mode, "--enable-logging=stderr", "--v=0", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def console_errors(stderr: str) -> list[str]:
    """Return Chromium's console lines that report a problem: uncaught exceptions, CSP blocks, failed loads.

    Chromium logs every console message at INFO (`INFO:CONSOLE:<line>] "message", source: ...`), errors
    included, so the message text tells them apart; the page itself never writes to the console.
    """
    return [line for line in stderr.splitlines() if "CONSOLE" in line
            and re.search(r"Uncaught|Error|error|Refused|violates|blocked|Failed", line)]


def png_rows(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG: width, height and every row of pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prev = bytearray(stride)
    rows: list[bytes] = []
    for y in range(height):
        kind_ = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind_ == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind_ == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind_ == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind_ == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp], prev[i], prev[i - bpp]) if i >= bpp else (0, prev[i], 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3)))
        prev = line
    return width, height, rows


def test_chromium_renders_the_dashboard(gateway: Gateway, traffic: dict[str, Any], keyed: dict[str, Any],
                                       tmp_path: Path) -> None:
    url = f"http://admin:{ADMIN_KEY}@127.0.0.1:{gateway.port}/admin/dashboard"
    shot = tmp_path / "dashboard.png"
    # Two runs side by side: one screenshot, one serialised DOM after the scripts ran.
    shooting = browse(url, tmp_path, "shot", f"--screenshot={shot}")
    dumping = browse(url, tmp_path, "dom", "--dump-dom")
    shot_out, shot_err = shooting.communicate(timeout=60)
    dom, dom_err = dumping.communicate(timeout=60)
    print(f"dashboard screenshot: {shot}")
    assert shooting.returncode == 0, shot_err[-3000:]
    assert dumping.returncode == 0, dom_err[-3000:]
    assert console_errors(shot_err) == [] and console_errors(dom_err) == [], console_errors(shot_err + dom_err)

    # The scripts ran: five uPlot charts with their canvases, and the table lists the calls just sent.
    assert dom.count('class="uplot') >= 5, dom[:2000]
    assert dom.count("<canvas") >= 5
    assert f'data-trace-id="{traffic["traces"][-2]}"' in dom
    assert '<b id="pwned">' not in dom and '&lt;b id="pwned"&gt;' in dom  # the hostile trace id stayed text
    assert "cohere" in dom and "openai" in dom
    # The keys view: the managed key's row with its name and its spend against the budget.
    assert 'id="keys-table"' in dom
    row = key_row(dom, keyed["id"])
    assert "<meter" in row
    text = row_text(row)
    assert text.startswith(f"{keyed['name']} {keyed['id']} active"), text
    assert_spend(text, keyed)
    assert '<b id="pwned-key">' not in dom

    # A real picture: the right size, many colours, the dark header bar on top, the charts' provider colours.
    assert shot.stat().st_size > 20_000
    width, height, rows = png_rows(shot)
    assert (width, height) == (1280, 1600)
    pixels: Counter[bytes] = Counter()
    for y in range(0, height, 40):
        row = rows[y]
        pixels.update(row[x:x + 3] for x in range(0, len(row), 3))
    assert len(pixels) > 50, f"only {len(pixels)} colours: a blank page?"
    assert pixels.most_common(1)[0][1] < 0.9 * sum(pixels.values())
    header = Counter(rows[5][x:x + 3] for x in range(0, len(rows[5]), 3))
    assert header.most_common(1)[0][0] == bytes((0x1D, 0x23, 0x30)), header.most_common(3)
    # The plot area of the first chart (above its legend) holds lines in the busiest provider's colour (--c0).
    plot = [rows[y][x:x + 3] for y in range(PLOT_TOP, PLOT_BOTTOM) for x in range(3 * PLOT_LEFT, 3 * PLOT_RIGHT, 3)]
    near = sum(1 for p in plot if max(abs(p[0] - 0x34), abs(p[1] - 0x51), abs(p[2] - 0xB2)) < 48)
    assert near >= 20, f"only {near} pixels of the first series' colour in the requests chart"
    # The key's budget bar, half full, in the spend colour (nothing else on the page has it).
    bar = sum(1 for row in rows if SPEND_COLOUR in row for x in range(0, len(row), 3) if row[x:x + 3] == SPEND_COLOUR)
    assert bar >= 200, f"only {bar} pixels of the spend bar's colour: is the keys table on the screen?"
