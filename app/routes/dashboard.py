"""The admin dashboard: traffic, errors, latency, tokens and cost by provider, the keys, and the latest requests.

One server-rendered page at /admin/dashboard behind the admin key (a browser gets a Basic-auth prompt).
The chart data is embedded in the page as JSON and drawn by the vendored uPlot; nothing loads from elsewhere.
The keys section reads the state store (limits, spend, use in the last minute) and the request log (top models);
it shows what the admin API's key listing shows, never a secret or its hash.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

from app.errors import BadRequest
from app.governance.keys import KeyRecord
from app.governance.store import StateUnavailable
from app.routes.admin import read_logs, require_admin_key
from app.routes.common import gateway
from app.routes.keys import key_view

_HERE = Path(__file__).resolve().parent
bp = Blueprint("dashboard", __name__, template_folder=str(_HERE.parent / "templates"),
               static_folder=str(_HERE.parent / "static"), static_url_path="/admin/static")


@dataclass(frozen=True)
class Range:
    """A selectable time range: how far back it reaches and how wide each chart bucket is."""

    name: str
    label: str
    span_s: int
    step_s: int
    step_label: str


RANGES: dict[str, Range] = {r.name: r for r in (
    Range("1h", "1 h", 3600, 60, "1 min"),             # 60 buckets
    Range("24h", "24 h", 24 * 3600, 900, "15 min"),    # 96 buckets
    Range("7d", "7 d", 7 * 24 * 3600, 7200, "2 h"),    # 84 buckets
)}
DEFAULT_RANGE = "24h"
LATEST_ROWS = 50
NO_PROVIDER = "(none)"  # calls refused before a provider was known
TOP_MODELS = 3  # per key, by calls over the selected range
# Each shown key costs a state-store read per page; past this many the page says so and the admin API lists them all.
MAX_KEY_ROWS = 200
# A budget's bar turns amber past this share of it, red past the second.
BUDGET_WARN, BUDGET_ALERT = 0.8, 0.95
# The page shows only what the store holds (no keys, no bodies); it must never be framed, cached or leak a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@bp.before_request
def guard() -> None:
    """Require the admin key for the page; the vendored scripts and styles (no data in them) are public."""
    if request.endpoint != "dashboard.static":
        require_admin_key()


@bp.get("/admin/dashboard")
def dashboard() -> Response:
    """Render the dashboard over ?range=1h|24h|7d (default 24h)."""
    name = request.args.get("range") or DEFAULT_RANGE
    chosen = RANGES.get(name)
    if chosen is None:
        raise BadRequest(f"Query parameter range must be one of {', '.join(RANGES)}")
    now = time.time()
    store = current_app.extensions["portico"].log_store
    view = read_logs(lambda: _collect(store, chosen, now)) if store is not None else None
    keys = _keys(now, view["by_key"] if view is not None else None)
    html = render_template("dashboard.html", ranges=RANGES.values(), chosen=chosen, view=view, keys=keys,
                           latest_rows=LATEST_ROWS, updated=_clock(now, seconds=True))
    response = Response(html, mimetype="text/html")
    response.headers.update(SECURITY_HEADERS)
    return response


# -- data ------------------------------------------------------------------------------------------------


def _collect(store: Any, chosen: Range, now: float) -> dict[str, Any]:
    """Return everything the template shows: totals, per-provider summary, chart series, latest requests."""
    step = chosen.step_s
    count = chosen.span_s // step
    end = (math.floor(now / step) + 1) * step  # the end of the bucket now falls in
    since = end - count * step
    xs = [since + i * step for i in range(count)]
    summary = store.analytics(since=since, until=end, group_by="provider")  # busiest provider first
    providers = list(dict.fromkeys(_label(group["group"]) for group in summary))
    # One grouped pass finds the buckets that hold anything; only those are broken down by provider.
    busy = {int(g["group"]) for g in store.analytics(since=since, until=end, group_by=f"time:{step}")}
    metrics = ("requests", "error_rate", "p50_ms", "p95_ms", "tokens", "cost_usd")
    series: dict[str, dict[str, list[float | None]]] = {
        m: {p: [0 if m in ("requests", "tokens", "cost_usd") else None] * count for p in providers} for m in metrics}
    for i, start in enumerate(xs):
        if start not in busy:
            continue
        for group in store.analytics(since=start, until=start + step, group_by="provider"):
            provider = _label(group["group"])
            if provider not in series["requests"]:  # written between the two reads: shown next time
                continue
            requests = group["requests"]
            series["requests"][provider][i] = requests
            series["error_rate"][provider][i] = round(100 * group["errors"] / requests, 2) if requests else None
            series["p50_ms"][provider][i] = _round(group["p50_ms"])
            series["p95_ms"][provider][i] = _round(group["p95_ms"])
            series["tokens"][provider][i] = group["input_tokens"] + group["output_tokens"]
            series["cost_usd"][provider][i] = group["cost_usd"] or 0
    totals = _totals(summary)
    return {
        "totals": totals,
        "providers": [_provider_row(group) for group in summary],
        "latest": [_request_row(row) for row in store.query(since=since, limit=LATEST_ROWS)],
        "chart": {"range": chosen.name, "step": step, "x": xs, "providers": providers, "series": series}
        if totals["requests"] else None,
        "by_key": _by_key(store.analytics(since=since, until=end, group_by="key+model")),
    }


def _by_key(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return per key name: calls and cost over the range, and its top models by calls (busiest first).

    The request log keeps a call's key by name (as the access line and the metrics do): keys that share a name share
    these figures, and a renamed key's earlier calls stay under its old name.
    """
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "cost": None, "models": []})
    for group in groups:  # busiest first, as analytics sorts them
        name, model = json.loads(group["group"])
        if name is None:
            continue  # calls without a key (an open gateway, or refused before the key was known)
        entry = out[name]
        entry["calls"] += group["requests"]
        if group["cost_usd"] is not None:  # None: no call of the group had a known price
            entry["cost"] = (entry["cost"] or 0.0) + group["cost_usd"]
        if model is not None and len(entry["models"]) < TOP_MODELS:
            entry["models"].append({"model": str(model), "calls": f"{group['requests']:,}"})
    return dict(out)


def _keys(now: float, by_key: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Return the keys section: one row per key (live ones first), or the note saying why there are none."""
    governance = gateway().governance
    records = sorted(governance.index.all(), key=lambda record: record.refusal(now) is not None)  # stable
    try:
        rows = [_key_row(record, key_view(record, governance.store, now), now, by_key)
                for record in records[:MAX_KEY_ROWS]]
    except StateUnavailable as err:
        # The rest of the page is the request log's: it still renders, with this note in the keys' place.
        return {"rows": [], "total": len(records), "problem": f"The state store is unavailable, so the keys' limits, "
                f"spend and use cannot be shown right now ({err}). Calls of keys without limits or a budget are still "
                "served."}
    return {"rows": rows, "total": len(records), "problem": None}


def _key_row(record: KeyRecord, view: dict[str, Any], now: float,
             by_key: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Return one key as display text: its public fields and use (key_view), never a secret or a hash."""
    usage = view["usage"]
    refusal = record.refusal(now)  # None, "revoked" or "expired at <time>"
    state = "active" if refusal is None else "revoked" if record.revoked else "expired"
    state_note = refusal if state == "expired" else f"expires {view['expires_at']}" if view["expires_at"] else ""
    limits = record.limits
    logged = by_key.get(record.name) if by_key is not None else None
    return {
        "id": view["id"], "name": view["name"], "state": state, "state_note": state_note,
        "limits": " · ".join(text for text in (
            f"{limits.rpm:,} rpm" if limits.rpm is not None else "",
            f"{limits.tpm:,} tpm" if limits.tpm is not None else "",
            f"{limits.max_concurrent:,} concurrent" if limits.max_concurrent is not None else "") if text) or "—",
        "budget": _budget(record, usage),
        "requests": f"{usage['requests_last_60s']:,}", "tokens": f"{usage['tokens_last_60s']:,}",
        # Slots are held only for keys with max_concurrent: for the others the store does not count calls in flight.
        "in_flight": f"{usage['in_flight']:,}" if limits.max_concurrent is not None else "—",
        "logged": None if by_key is None else {
            "calls": f"{logged['calls']:,}" if logged else "0",
            "cost": _money(logged["cost"]) if logged else "—",
            "models": logged["models"] if logged else [],
        },
    }


def _budget(record: KeyRecord, usage: dict[str, Any]) -> dict[str, Any] | None:
    """Return a key's budget as text (`0.42 / 5.00 USD (month)`) and the numbers of its bar, or None without one."""
    budget = record.budget
    if budget is None:
        return None
    spent, reserved = usage["spent_usd"], usage["reserved_usd"]
    # Cents for a budget of dollars; a budget of cents (or less) is shown to the digits it has.
    places = 2 if budget.usd >= 1 or budget.usd == 0 else 4 if budget.usd >= 0.01 else 6
    # A zero budget allows nothing: its bar is full. A meter needs max above min, so it is drawn as 1 of 1.
    top = budget.usd if budget.usd > 0 else 1.0
    value = min(spent, budget.usd) if budget.usd > 0 else 1.0
    share = spent / budget.usd if budget.usd > 0 else 1.0
    return {
        "text": f"{_usd(spent, places)} / {_usd(budget.usd, places)} USD ({budget.period})",
        "title": f"{100 * share:.1f} % of the budget "
                 + ("(all time)" if budget.period == "total" else f"for {usage['period']}"),
        "reserved": f"+{_usd(reserved, places)} reserved by calls in flight" if reserved > 0 else "",
        "value": value, "max": top, "low": BUDGET_WARN * top, "high": BUDGET_ALERT * top,
    }


def _totals(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the range's totals over every provider, as numbers and display text."""
    requests = sum(g["requests"] for g in summary)
    errors = sum(g["errors"] or 0 for g in summary)
    tokens = sum(g["input_tokens"] + g["output_tokens"] for g in summary)
    priced = [g["cost_usd"] for g in summary if g["cost_usd"] is not None]
    unknown = sum(g["unknown_price"] or 0 for g in summary)
    return {
        "requests": requests, "requests_text": f"{requests:,}",
        "errors_text": f"{errors:,}", "error_rate_text": _percent(errors, requests),
        "tokens_text": f"{tokens:,}",
        "cost_text": _money(sum(priced)) if priced else "—",
        "unknown_price": unknown,
    }


def _provider_row(group: dict[str, Any]) -> dict[str, str]:
    """Return one provider's totals as display text."""
    return {
        "provider": _label(group["group"]),
        "requests": f"{group['requests']:,}",
        "error_rate": _percent(group["errors"] or 0, group["requests"]),
        "p50": _millis(group["p50_ms"]), "p95": _millis(group["p95_ms"]),
        "tokens": f"{group['input_tokens'] + group['output_tokens']:,}",
        "cost": _money(group["cost_usd"]),
    }


def _request_row(row: dict[str, Any]) -> dict[str, Any]:
    """Return one logged request as display text (the template escapes every value)."""
    status = int(row["status"])
    return {
        "time": _clock(row["ts"], seconds=True), "iso": datetime.fromtimestamp(row["ts"], UTC).isoformat(),
        "trace_id": row["trace_id"], "client_ip": row.get("client_ip") or "—",
        "provider": _label(row["provider"]), "model": row.get("model") or "",
        "method": row["method"], "path": row["path"], "status": status,
        "status_class": "ok" if status < 400 else "client" if status < 500 else "server",
        "latency": _millis(row["latency_ms"]),
        "tokens": "—" if row.get("total_tokens") is None else f"{row['total_tokens']:,}",
        "cost": _money(row.get("cost_usd")),
    }


# -- formatting ------------------------------------------------------------------------------------------


def _label(provider: Any) -> str:
    """Return a provider's name for display; calls without one are grouped together."""
    return str(provider) if provider not in (None, "") else NO_PROVIDER


def _round(value: float | None) -> float | None:
    """Return a latency rounded to 0.1 ms, keeping None."""
    return None if value is None else round(value, 1)


def _clock(ts: float, *, seconds: bool) -> str:
    """Return a Unix time as UTC text."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _percent(part: int, whole: int) -> str:
    """Return part/whole as a percentage, or a dash when whole is zero."""
    if not whole:
        return "—"
    share = 100 * part / whole
    return f"{share:.0f} %" if share == 0 or share >= 10 else f"{share:.1f} %"


def _millis(value: float | None) -> str:
    """Return a latency in milliseconds for display."""
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _usd(value: float, places: int) -> str:
    """Return a USD amount without the sign to `places` decimals; a smaller one not as 0 but to a millionth."""
    if value == 0 or abs(value) >= 10 ** -places:
        return f"{value:,.{places}f}"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else "<0.000001"


def _money(value: float | None) -> str:
    """Return a USD amount with enough digits to see small per-call prices."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:.4f}"
    return f"${value:.6f}" if abs(value) >= 0.000001 else "<$0.000001"
