"""The translation section: what translating the unified chat route costs, and how fast a translated stream flows."""

from __future__ import annotations

import http.client
import json
import statistics
import time
from pathlib import Path

from bench.config_engine import Variant, alternate, checked, extra_pct, print_table
from bench.plan import Plan
from bench.procs import LOOPBACK, BenchError
from bench.report import Report, verdict
from bench.sections import warn_noise
from bench.targets import BENCH_KEY, Server
from bench.upstreams import CHAT_PATH, Upstream

COST_MAX_PCT = 15.0
EVENT_DELAY_MAX_MS = 2.0
CONNECTIONS = 16
CHAT_BODY = json.dumps({"model": "bench-model", "max_tokens": 64,
                        "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Tell me about the weather in Paris today."}]},
                       separators=(",", ":"))
STREAM_EVENTS = 8
STREAM_INTERVAL_MS = 20


def provider_headers(provider: str, upstream_url: str) -> dict[str, str]:
    """Return the headers of a unified chat call to upstream_url as the given provider."""
    return {"x-portkey-api-key": BENCH_KEY, "x-portkey-provider": provider,
            "x-portkey-custom-host": f"{upstream_url}/v1", "Authorization": "Bearer x", "x-api-key": "x"}


def translation_cost(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> list[bool]:
    """Compare the unified chat route translated to Anthropic with the OpenAI passthrough at c=16."""
    report.section("Translation (unified chat route; wrk, POST /v1/chat/completions)")
    if not upstream.serves_chat:
        report.say("skipped: needs nginx as the upstream (fixed chat and message answers)")
        return []
    report.say(f"1. cost at c={CONNECTIONS}: passthrough = provider openai (nginx answers a chat.completion); "
               "translated = provider anthropic (request to Anthropic's Messages format, nginx answers the same "
               "text as a message, translated back); same client body and answer text")
    variants = [
        Variant("passthrough", portico.port, portico.proc.pid, provider_headers("openai", upstream.url),
                path=CHAT_PATH, body=CHAT_BODY, seconds=plan.config_seconds),
        Variant("translated", portico.port, portico.proc.pid, provider_headers("anthropic", upstream.url),
                path=CHAT_PATH, body=CHAT_BODY, seconds=plan.config_seconds),
    ]
    if not checked(report, variants) or not same_answer(report, variants):
        return [False]
    tallies = alternate(plan, workdir, variants, CONNECTIONS)
    print_table(report, plan, tallies, CONNECTIONS)
    plain, translated = tallies["passthrough"], tallies["translated"]
    extra = extra_pct(translated, plain)
    ok = extra <= COST_MAX_PCT
    report.say(f"translation cost per call at c={CONNECTIONS}: {translated.cpu_us:.0f} us vs passthrough "
               f"{plain.cpu_us:.0f} us = {extra:+.1f} % (target <= +{COST_MAX_PCT:.0f} %)  {verdict(ok)}")
    report.say(f"  same from rps: translated/passthrough {translated.rps:.0f}/{plain.rps:.0f} = "
               f"{translated.rps / plain.rps if plain.rps else 0.0:.2f}")
    warn_noise(report, plan, tallies.values())
    return [ok]


def same_answer(report: Report, variants: list[Variant]) -> bool:
    """Check that both variants answer the same message text (so they are the same size of work)."""
    texts = []
    for variant in variants:
        conn = http.client.HTTPConnection(LOOPBACK, variant.port, timeout=10)
        try:
            conn.request("POST", variant.path, variant.body, {"Content-Type": "application/json", **variant.headers})
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        texts.append(body["choices"][0]["message"]["content"])
    ok = len(set(texts)) == 1
    if not ok:
        report.say(f"the two variants answered different texts: {texts}  {verdict(False)}")
    return ok


# --------------------------------------------------------------------------- streamed translation


def stamped_stream(port: int, path: str, headers: dict[str, str], body: str) -> list[float]:
    """Make one streamed call; return, for each content event, ms from the fake's stamp to its arrival here."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"stream via port {port}{path} answered {response.status}: {response.read()[:300]!r}")
        delays: list[float] = []
        pending = b""
        while chunk := response.read1(65536):
            now = time.time()
            pending += chunk
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                stamp = _stamp(event)
                if stamp is not None:
                    delays.append((now - stamp) * 1000)
        return delays
    finally:
        conn.close()


def _stamp(event: bytes) -> float | None:
    """Return the send time the fake wrote as the text of a content event (either format), if any."""
    data = event.partition(b"data: ")[2]
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    text = None
    if isinstance(payload, dict) and payload.get("type") == "content_block_delta":
        text = payload.get("delta", {}).get("text")
    elif isinstance(payload, dict) and payload.get("choices"):
        text = (payload["choices"][0].get("delta") or {}).get("content")
    try:
        return float(text) if text else None
    except ValueError:
        return None


def stream_delay(report: Report, plan: Plan, fake: Upstream, portico: Server) -> list[bool]:
    """Time each streamed event from the fake's send to the client: direct, passthrough proxy, translated."""
    report.say()
    report.say(f"2. streamed translation: the fake provider streams {STREAM_EVENTS} Anthropic text deltas "
               f"{STREAM_INTERVAL_MS} ms apart, each carrying its send time (x-fake-stamp); the client notes when "
               f"each arrives; {plan.stream_calls} calls per route, round-robin")
    pace = {"x-fake-stamp": "1", "x-fake-events": str(STREAM_EVENTS),
            "x-fake-event-interval-ms": str(STREAM_INTERVAL_MS)}
    forward = {"x-portkey-forward-headers": ",".join(pace)}
    body = json.loads(CHAT_BODY)
    chat = json.dumps({**body, "stream": True})
    native = json.dumps({**body, "stream": True, "system": "Be brief.", "messages": body["messages"][1:]})
    anthropic = {**provider_headers("anthropic", fake.url), **pace, **forward}
    routes = {"direct": (fake.port, "/v1/messages", {"x-api-key": "x", "anthropic-version": "2023-06-01", **pace},
                         native),
              "proxy": (portico.port, "/v1/proxy/messages", anthropic, native),
              "translated": (portico.port, CHAT_PATH, anthropic, chat)}
    sides: dict[str, list[float]] = {name: [] for name in routes}
    for index in range(plan.stream_calls + 2):
        for name, route in routes.items():
            delays = stamped_stream(*route)
            if len(delays) != STREAM_EVENTS:
                raise BenchError(f"{name}: {len(delays)} stamped events, expected {STREAM_EVENTS}")
            if index >= 2:  # two warm-up calls per route
                sides[name] += delays
    median = {name: statistics.median(values) for name, values in sides.items()}
    p99 = {name: sorted(values)[int(len(values) * 0.99) - 1] for name, values in sides.items()}
    for name in routes:
        report.say(f"   {name:<11} send-to-arrival per event: median {median[name]:.2f} ms, p99 {p99[name]:.2f} ms")
    added = median["translated"] - median["direct"]
    ok = added <= EVENT_DELAY_MAX_MS
    proxy = median["proxy"] - median["direct"]
    report.say(f"translated event delay over direct: median {added:+.2f} ms (proxy {proxy:+.2f}), "
               f"p99 {p99['translated'] - p99['direct']:+.2f} ms (target median <= +{EVENT_DELAY_MAX_MS:.0f} ms)  "
               f"{verdict(ok)}")
    return [ok]
