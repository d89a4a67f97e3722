"""The cache and guardrails section: cache hits vs the proxy path, and what three default.* input checks cost."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from bench.config_engine import Variant, alternate, checked, config_headers, print_table
from bench.loadgen import RERANK_BODY, run_wrk
from bench.plan import Plan
from bench.procs import LOOPBACK
from bench.report import Report, verdict
from bench.sections import Tally, measured_round, warn_noise
from bench.targets import Server
from bench.upstreams import CHAT_PATH, Upstream, requests_served

CACHE_RATIO_MIN = 2.0
HOOKS_COST_MAX_PCT = 15.0
CONNECTIONS = 16
NAMESPACE = "portico-bench"
HIT_STREAK = 8  # consecutive HITs (new connection each) that show the entry is in place
FILL_CALLS_MAX = 64
SETTLE_S = 0.2  # pause before counting nginx calls: Portico may still be finishing the previous run's calls
MISS_SHARE_MAX = 0.01  # of the timed cache-hit calls that may reach nginx (a worker first reached mid-run)
CHAT_BODY = json.dumps({"model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "Tell me about the weather in Paris today."}]},
                       separators=(",", ":"))
CHECKS = {"default.wordCount": {"minWords": 1, "maxWords": 500},
          "default.contains": {"words": ["password"], "operator": "none"},
          "default.regexMatch": {"rule": "\\d{16}", "not": True}}


@dataclass
class Reached:
    """Calls of the cache-hit runs that reached nginx, in the warm-up and in the timed rounds."""

    warmup: int = 0
    timed: int = 0


@dataclass(frozen=True)
class Answer:
    """What one http.client call got back."""

    status: int
    cache_status: str | None
    body: bytes


def openai_config(upstream_url: str, **extra: Any) -> dict[str, Any]:
    """Return a single-target OpenAI config for the nginx upstream, with extra keys."""
    return {"provider": "openai", "custom_host": f"{upstream_url}/v1", **extra}


def post(variant: Variant) -> Answer:
    """Make one call with http.client on a new connection; return status, cache status and body."""
    conn = http.client.HTTPConnection(LOOPBACK, variant.port, timeout=10)
    try:
        conn.request("POST", variant.path, variant.body, {"Content-Type": "application/json", **variant.headers})
        response = conn.getresponse()
        return Answer(response.status, response.getheader("x-portkey-cache-status"), response.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- cache hits vs the proxy path


def fill_cache(variant: Variant) -> tuple[list[str], str | None]:
    """Call until HIT_STREAK HITs in a row (every worker that took a call holds the entry); return statuses, problem."""
    seen: list[str] = []
    while len(seen) < FILL_CALLS_MAX:
        try:
            answer = post(variant)
        except OSError as err:
            return seen, f"{variant.name}: {err}"
        if answer.status != 200:
            return seen, f"{variant.name}: status {answer.status}: {answer.body[:300]!r}"
        seen.append(answer.cache_status or "none")
        if seen[-HIT_STREAK:] == ["HIT"] * HIT_STREAK:
            return seen, None
    return seen, f"{variant.name}: no {HIT_STREAK} HITs in a row in {FILL_CALLS_MAX} calls: {' '.join(seen)}"


def runs_of(statuses: list[str]) -> str:
    """Return statuses in runs, e.g. 'MISS, HIT x 3, MISS, HIT x 8'."""
    counted = [(status, len(list(run))) for status, run in groupby(statuses)]
    return ", ".join(status if count == 1 else f"{status} x {count}" for status, count in counted)


def cache_variants(plan: Plan, portico: Server, upstream: Upstream) -> list[Variant]:
    """Return the proxy call (config without cache) and the same call answered from the cache."""
    cache = {"mode": "simple", "max_age": 3600}
    hit_headers = {**config_headers(openai_config(upstream.url, cache=cache)), "x-portkey-cache-namespace": NAMESPACE}
    return [Variant("proxy", portico.port, portico.proc.pid, config_headers(openai_config(upstream.url)),
                    option_index="config", seconds=plan.cache_seconds),
            Variant("cache hit", portico.port, portico.proc.pid, hit_headers, seconds=plan.cache_seconds)]


def cache_hits(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> bool:
    """Compare cache hits with the proxy path at c=16; return the verdict."""
    proxy, hit = variants = cache_variants(plan, portico, upstream)
    report.say()
    report.say(f"1. cache hits at c=16: POST /v1/rerank ({len(RERANK_BODY)}-byte body); cache hit: x-portkey-config "
               f"{hit.headers['x-portkey-config']} + x-portkey-cache-namespace: {NAMESPACE}; proxy: the same config "
               "without cache (every call goes to nginx)")
    if not checked(report, [proxy]):
        return False
    seen, problem = fill_cache(hit)
    if problem:
        report.say(f"cache fill failed, not timed: {problem}  {verdict(False)}")
        return False
    report.say(f"   cache fill with http.client, a new connection per call: {runs_of(seen)} "
               f"({seen.count('MISS')} MISS for {plan.workers} workers; the 1 s wrk warm-up fills a worker not yet "
               "reached; counted below)")
    tallies, reached = alternate_counted(plan, workdir, variants, upstream)
    print_table(report, plan, tallies, CONNECTIONS)
    return cache_verdict(report, plan, tallies, reached)


def alternate_counted(plan: Plan, workdir: Path, variants: list[Variant],
                      upstream: Upstream) -> tuple[dict[str, Tally], Reached]:
    """Measure as config_engine.alternate does; also count the calls that reached nginx during the cache-hit runs."""
    targets = {variant.name: variant.load_target(workdir) for variant in variants}
    tallies = {variant.name: Tally() for variant in variants}
    reached = {variant.name: Reached() for variant in variants}
    for index in range(plan.cache_rounds):
        for variant in variants:
            target, count = targets[variant.name], reached[variant.name]
            time.sleep(SETTLE_S)
            if index == 0:
                before = requests_served(upstream)
                run_wrk(target.url + target.path, target.script, CONNECTIONS, plan.warmup, plan.wrk_threads,
                        plan.load_cpus)
                time.sleep(SETTLE_S)
                count.warmup += requests_served(upstream) - before - 1  # the status request counts itself
            before = requests_served(upstream)
            tallies[variant.name].add(*measured_round(target, CONNECTIONS, plan, variant.seconds, warmup=False))
            count.timed += requests_served(upstream) - before - 1
    return tallies, reached["cache hit"]


def cache_verdict(report: Report, plan: Plan, tallies: dict[str, Tally], reached: Reached) -> bool:
    """Print cache-hit rps / proxy rps against its target, and the CPU per call ratio; return whether it passed."""
    proxy, hit = tallies["proxy"], tallies["cache hit"]
    ratio = hit.rps / proxy.rps if proxy.rps else 0.0
    hits = reached.timed <= hit.requests * MISS_SHARE_MAX
    ok = ratio >= CACHE_RATIO_MIN and hits
    report.say(f"cache hit/proxy rps at c=16: {hit.rps:.0f}/{proxy.rps:.0f} = {ratio:.2f} "
               f"(target >= {CACHE_RATIO_MIN})  {verdict(ok)}")
    cpu_ratio = proxy.cpu_us / hit.cpu_us if hit.cpu_us else 0.0
    report.say(f"  CPU per call: proxy {proxy.cpu_us:.0f} us, cache hit {hit.cpu_us:.0f} us = {cpu_ratio:.2f} x "
               f"cheaper (saves {proxy.cpu_us - hit.cpu_us:.0f} us); p50 {proxy.p50:.2f} -> {hit.p50:.2f} ms, "
               f"p99 {proxy.p99:.2f} -> {hit.p99:.2f} ms")
    report.say(f"  ratio of each round: {', '.join(f'{ratio:.2f}' for ratio in round_ratios(hit, proxy))}")
    report.say(f"  cache-hit calls that reached nginx: {reached.timed} of {hit.requests} timed (at most "
               f"{MISS_SHARE_MAX:.0%}{'' if hits else ': NOT MET, the rps are not cache hits'}); {reached.warmup} "
               "in the warm-up (no single-flight: a worker's first concurrent calls all miss)")
    warn_noise(report, plan, tallies.values())
    return ok


def round_ratios(tally: Tally, base: Tally) -> list[float]:
    """Return rps / base rps of each round (the variants alternate, so round i of both ran back to back)."""
    return [rps / base_rps if base_rps else 0.0 for rps, base_rps in zip(tally.round_rps, base.round_rps, strict=True)]


# --------------------------------------------------------------------------- input guardrails


def hooks_problem(variant: Variant) -> str | None:
    """Make one call; return what is wrong unless it answers 200 with a passing before-request hook."""
    try:
        answer = post(variant)
    except OSError as err:
        return f"{variant.name}: {err}"
    if answer.status != 200:
        return f"{variant.name}: status {answer.status}: {answer.body[:300]!r}"
    try:
        hooks = json.loads(answer.body)["hook_results"]["before_request_hooks"]
        passed = hooks[0]["verdict"] is True
    except (ValueError, KeyError, IndexError, TypeError) as err:
        return f"{variant.name}: no hook_results.before_request_hooks[0].verdict ({err!r}): {answer.body[:300]!r}"
    return None if passed else f"{variant.name}: before_request_hooks[0].verdict is not true: {answer.body[:300]!r}"


def chat_variant(name: str, plan: Plan, portico: Server, config: dict[str, Any]) -> Variant:
    """Return the small chat call through Portico, routed by config."""
    return Variant(name, portico.port, portico.proc.pid, config_headers(config), path=CHAT_PATH, body=CHAT_BODY,
                   option_index="config", seconds=plan.cache_seconds)


def hook_variants(plan: Plan, portico: Server, upstream: Upstream) -> list[Variant]:
    """Return the chat call without hooks and with the three input checks."""
    return [chat_variant("no hooks", plan, portico, openai_config(upstream.url)),
            chat_variant("3 checks", plan, portico, openai_config(upstream.url, input_guardrails=[CHECKS]))]


def input_checks(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> bool:
    """Compare the chat call with and without three default.* input checks at c=16; return the verdict."""
    bare, hooked = variants = hook_variants(plan, portico, upstream)
    report.say()
    report.say(f"2. input guardrails at c=16: POST {CHAT_PATH} (unified route) {CHAT_BODY}")
    report.say(f"   3 checks: x-portkey-config {hooked.headers['x-portkey-config']}; no hooks: the same without "
               "input_guardrails; nginx answers a fixed chat.completion")
    problem = hooks_problem(hooked)
    if problem:
        report.say(f"sample call failed, not timed: {problem}  {verdict(False)}")
        return False
    if not checked(report, [bare]):
        return False
    report.say("   sample call: 200 with hook_results.before_request_hooks[0].verdict true")
    tallies = alternate(plan, workdir, variants, CONNECTIONS, plan.cache_rounds)
    print_table(report, plan, tallies, CONNECTIONS)
    return hooks_verdict(report, plan, tallies)


def hooks_verdict(report: Report, plan: Plan, tallies: dict[str, Tally]) -> bool:
    """Print the throughput cost of the checks against its target, and their CPU per call; return whether it passed."""
    bare, hooked = tallies["no hooks"], tallies["3 checks"]
    cost = (1 - hooked.rps / bare.rps) * 100 if bare.rps else float("inf")
    ok = cost <= HOOKS_COST_MAX_PCT
    report.say(f"3 checks cost at c=16: 1 - {hooked.rps:.0f}/{bare.rps:.0f} rps = {cost:.1f} % "
               f"(target <= {HOOKS_COST_MAX_PCT:.0f} %)  {verdict(ok)}")
    extra = hooked.cpu_us - bare.cpu_us
    pct = extra / bare.cpu_us * 100 if bare.cpu_us else float("inf")
    capacity = (1 - bare.cpu_us / hooked.cpu_us) * 100 if hooked.cpu_us else float("inf")
    report.say(f"  CPU per call: no hooks {bare.cpu_us:.0f} us, 3 checks {hooked.cpu_us:.0f} us = {extra:+.0f} us "
               f"({pct:+.1f} %); the same as a cost on a saturated core: 1 - {bare.cpu_us:.0f}/{hooked.cpu_us:.0f} "
               f"= {capacity:.1f} % (less disturbed by other load than rps)")
    costs = ", ".join(f"{(1 - ratio) * 100:.1f}" for ratio in round_ratios(hooked, bare))
    report.say(f"  cost of each round, %: {costs}")
    warn_noise(report, plan, tallies.values())
    return ok


def cache_guardrails(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> list[bool]:
    """Run both measurements against a running Portico; return their verdicts."""
    report.section(f"Cache and guardrails (wrk -c{CONNECTIONS}, single-target configs in x-portkey-config)")
    if not upstream.serves_chat:
        report.say(f"skipped: needs nginx as the upstream (the fixed {CHAT_PATH} answer)")
        return []
    report.say(f"each variant warmed up {plan.warmup:.0f} s, then {plan.cache_rounds} alternating rounds x "
               f"{plan.cache_seconds:.0f} s (so background load hits all alike); p50, p99: means over the rounds")
    return [cache_hits(report, plan, workdir, portico, upstream),
            input_checks(report, plan, workdir, portico, upstream)]
