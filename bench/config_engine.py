"""The config engine section: what a fallback hop costs at c=1, and what parsing and routing a config cost at c=16."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.config.schema import parse_config
from bench.loadgen import RERANK_BODY, write_script
from bench.plan import Plan
from bench.procs import LOOPBACK
from bench.report import Report, verdict
from bench.sections import LoadTarget, Tally, measured_round, table_header, table_row, warn_noise
from bench.targets import BENCH_KEY, Server, portico_headers
from bench.upstreams import FAIL_PATH, Upstream

FALLBACK_RATIO_MAX = 1.5
CONFIG_EXTRA_MAX_PCT = 10.0
PARSE_MAX_MS = 1.0  # a typical three-target config, parsed in-process (was a unit test; a busy machine failed it)
PARSE_CONFIG: dict[str, Any] = {
    "strategy": {"mode": "fallback", "on_status_codes": [429, 500]},
    "retry": {"attempts": 2}, "request_timeout": 30000, "override_params": {"model": "gpt-4o"},
    "targets": [
        {"provider": "openai", "api_key": "sk-1", "weight": 0.7},
        {"provider": "@anthropic-prod", "override_params": {"model": "claude-3-5-haiku"}},
        {"strategy": {"mode": "loadbalance"}, "targets": [{"provider": "groq"}, {"provider": "cohere", "weight": 0}]},
    ],
}
PATH = "/v1/rerank"  # not a unified route: Portico serves it on the catch-all proxy
NAME_WIDTH = 20


@dataclass(frozen=True)
class Variant:
    """One way of making the call: where, with which headers, and what a sample call must answer."""

    name: str
    port: int
    pid: int
    headers: dict[str, str]
    on_server_cores: bool = True
    path: str = PATH
    body: str = RERANK_BODY
    status: int = 200
    option_index: str | None = None  # the x-portkey-last-used-option-index a sample answer must carry
    seconds: float | None = None  # measured seconds per round, when not the plan's

    def load_target(self, workdir: Path) -> LoadTarget:
        """Write this variant's wrk script and return it as a wrk target."""
        slug = "".join(c if c.isalnum() else "-" for c in self.name)
        script = write_script(workdir / f"config-{slug}.lua", self.headers, self.body)
        return LoadTarget(f"http://{LOOPBACK}:{self.port}", script, self.pid, self.on_server_cores, self.path)


def compact(config: dict[str, Any]) -> str:
    """Return a config as the compact JSON a client sends in x-portkey-config."""
    return json.dumps(config, separators=(",", ":"))


def fallback_config(upstream_url: str) -> dict[str, Any]:
    """Return the fallback config: the first target answers 503 at once, the second 200."""
    return {"strategy": {"mode": "fallback"},
            "targets": [{"provider": "openai", "custom_host": f"{upstream_url}/fail/v1"},
                        {"provider": "openai", "custom_host": f"{upstream_url}/v1"}]}


def single_config(upstream_url: str, override: bool) -> dict[str, Any]:
    """Return the single-target config, with or without override_params (which re-serialise the JSON body)."""
    config: dict[str, Any] = {"provider": "openai", "custom_host": f"{upstream_url}/v1", "retry": {"attempts": 2}}
    if override:
        config["override_params"] = {"top_n": 3}
    return config


def config_headers(config: dict[str, Any]) -> dict[str, str]:
    """Return the headers of a Portico call routed by config alone."""
    return {"x-portkey-api-key": BENCH_KEY, "x-portkey-config": compact(config), "Authorization": "Bearer x"}


def sample(variant: Variant) -> str | None:
    """Make one call with http.client; return what is wrong with its answer, or None."""
    conn = http.client.HTTPConnection(LOOPBACK, variant.port, timeout=10)
    try:
        conn.request("POST", variant.path, variant.body, {"Content-Type": "application/json", **variant.headers})
        response = conn.getresponse()
        body = response.read()
    except OSError as err:
        return f"{variant.name}: {err}"
    finally:
        conn.close()
    index = response.getheader("x-portkey-last-used-option-index")
    if response.status != variant.status:
        return f"{variant.name}: status {response.status}, expected {variant.status}: {body[:300]!r}"
    if variant.option_index is not None and index != variant.option_index:
        return f"{variant.name}: x-portkey-last-used-option-index {index!r}, expected {variant.option_index!r}"
    return None


def checked(report: Report, variants: list[Variant]) -> bool:
    """Make one sample call per variant; print and return whether every answer was as expected."""
    problems = [problem for problem in map(sample, variants) if problem]
    for problem in problems:
        report.say(f"sample call failed, not timed: {problem}  {verdict(False)}")
    return not problems


def alternate(plan: Plan, workdir: Path, variants: list[Variant], connections: int,
              rounds: int | None = None) -> dict[str, Tally]:
    """Measure the variants in alternating rounds (each warmed up before its first); return their tallies."""
    targets = {variant.name: variant.load_target(workdir) for variant in variants}
    tallies = {variant.name: Tally() for variant in variants}
    for index in range(rounds or plan.config_rounds):
        for variant in variants:
            result, wall, cpu, others = measured_round(targets[variant.name], connections, plan,
                                                       variant.seconds or plan.config_seconds, warmup=index == 0)
            if variant.status != 200:
                result = replace(result, bad_status=0)  # the answers it is meant to give are not errors
            tallies[variant.name].add(result, wall, cpu, others)
    return tallies


def print_table(report: Report, plan: Plan, tallies: dict[str, Tally], connections: int) -> None:
    """Print one row per variant."""
    report.say(table_header("variant", NAME_WIDTH))
    for name, tally in tallies.items():
        report.say(table_row(name, connections, tally=tally, cores=len(plan.server_cores), width=NAME_WIDTH))


# --------------------------------------------------------------------------- fallback cost at c=1


def fallback_cost(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> bool:
    """Compare a fallback over a 503 at c=1 with a plain call plus one upstream round trip; return the verdict."""
    report.say()
    report.say(f"1. fallback at c=1: x-portkey-config {compact(fallback_config(upstream.url))}")
    report.say(f"   targets[0] ({FAIL_PATH}) answers 503 at once, targets[1] 200; headers: the same call with "
               "x-portkey-provider + x-portkey-custom-host to the 200 location; nginx 503: wrk straight to "
               f"{FAIL_PATH} (one upstream round trip)")
    variants = [
        Variant("fallback", portico.port, portico.proc.pid, config_headers(fallback_config(upstream.url)),
                option_index="config.targets[1]"),
        Variant("headers", portico.port, portico.proc.pid, portico_headers(upstream.url)),
        Variant("nginx 503", upstream.port, upstream.proc.pid, {"Authorization": "Bearer x"}, on_server_cores=False,
                path=FAIL_PATH, status=503, seconds=1.0),
    ]
    if not checked(report, variants):
        return False
    report.say("   sample call: 200 with x-portkey-last-used-option-index: config.targets[1]")
    tallies = alternate(plan, workdir, variants, 1)
    print_table(report, plan, tallies, 1)
    return fallback_verdict(report, plan, tallies)


def spread(tally: Tally) -> str:
    """Return the rounds' p50s, e.g. '1.14 1.15 1.17'."""
    return " ".join(f"{p50:.2f}" for p50 in tally.p50s)


def fallback_verdict(report: Report, plan: Plan, tallies: dict[str, Tally]) -> bool:
    """Print fallback p50 / (plain p50 + upstream p50) against its target; return whether it passed."""
    fallback, plain, upstream = tallies["fallback"], tallies["headers"], tallies["nginx 503"]
    base = plain.p50 + upstream.p50
    ratio = fallback.p50 / base if base else float("inf")
    ok = ratio <= FALLBACK_RATIO_MAX
    report.say(f"fallback p50 {fallback.p50:.3f} ms; a = headers p50 {plain.p50:.3f} ms, b = nginx 503 p50 "
               f"{upstream.p50:.3f} ms; fallback / (a + b) = {ratio:.2f} (target <= {FALLBACK_RATIO_MAX})  "
               f"{verdict(ok)}")
    report.say(f"  for context: the failed hop adds {fallback.p50 - plain.p50:+.3f} ms at p50 and "
               f"{fallback.cpu_us - plain.cpu_us:+.0f} us of gateway CPU per call "
               f"(fallback {fallback.cpu_us:.0f} us, headers {plain.cpu_us:.0f} us)")
    report.say(f"  p50 of each round, ms: fallback {spread(fallback)}; headers {spread(plain)}")
    warn_noise(report, plan, tallies.values())
    return ok


# --------------------------------------------------------------------------- config overhead at c=16


def config_overhead(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> bool:
    """Compare the proxy path at c=16 with a single-target config on every call and without; return the verdict."""
    report.say()
    report.say(f"2. config at c=16: x-portkey-config {compact(single_config(upstream.url, override=True))}")
    report.say("   on every call (config); the same without override_params, so the body goes through untouched "
               "(config -override); headers: x-portkey-provider + x-portkey-custom-host, no config")
    variants = [
        Variant("headers", portico.port, portico.proc.pid, portico_headers(upstream.url)),
        Variant("config", portico.port, portico.proc.pid, config_headers(single_config(upstream.url, True)),
                option_index="config"),
        Variant("config -override", portico.port, portico.proc.pid,
                config_headers(single_config(upstream.url, False)), option_index="config"),
    ]
    if not checked(report, variants):
        return False
    tallies = alternate(plan, workdir, variants, 16)
    print_table(report, plan, tallies, 16)
    return overhead_verdict(report, plan, tallies)


def extra_pct(tally: Tally, base: Tally) -> float:
    """Return how much more CPU per call tally took than base, %."""
    return (tally.cpu_us / base.cpu_us - 1) * 100 if base.cpu_us else float("inf")


def overhead_verdict(report: Report, plan: Plan, tallies: dict[str, Tally]) -> bool:
    """Print the config's extra CPU per call (primary) and rps ratio (secondary); return whether it passed."""
    plain, config, bare = tallies["headers"], tallies["config"], tallies["config -override"]
    extra = extra_pct(config, plain)
    ok = extra <= CONFIG_EXTRA_MAX_PCT
    report.say(f"config cost per call at c=16: {config.cpu_us:.0f} us vs headers {plain.cpu_us:.0f} us = "
               f"{extra:+.1f} % (target <= +{CONFIG_EXTRA_MAX_PCT:.0f} %)  {verdict(ok)}")
    report.say(f"  same from rps: config/headers {config.rps:.0f}/{plain.rps:.0f} = "
               f"{config.rps / plain.rps if plain.rps else 0.0:.2f} (>= {1 - CONFIG_EXTRA_MAX_PCT / 100:.2f} "
               "on a saturated core)")
    report.say(f"  without override_params: {bare.cpu_us:.0f} us = {extra_pct(bare, plain):+.1f} %, rps "
               f"{bare.rps:.0f} = {bare.rps / plain.rps if plain.rps else 0.0:.2f} of headers; override_params "
               f"(body parsed and re-serialised) add {config.cpu_us - bare.cpu_us:+.0f} us")
    warn_noise(report, plan, tallies.values())
    return ok


def parse_cost(report: Report) -> bool:
    """Print the time to parse a typical three-target config (best of 5 batches of 200) against its target."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            parse_config(PARSE_CONFIG)
        batches.append((time.perf_counter() - started) / 200 * 1000)
    ok = min(batches) < PARSE_MAX_MS
    report.say(f"config parse (three targets, in-process): {min(batches) * 1000:.0f} us, best of 5 batches of 200 "
               f"(target < {PARSE_MAX_MS * 1000:.0f} us)  {verdict(ok)}")
    return ok


def config_engine(report: Report, plan: Plan, workdir: Path, portico: Server, upstream: Upstream) -> list[bool]:
    """Run both config engine measurements against a running Portico; return their verdicts."""
    report.section("Config engine (x-portkey-config; wrk, POST /v1/rerank on the proxy path)")
    parsed = parse_cost(report)  # in-process: needs no upstream
    if not upstream.serves_fail:
        report.say("skipped: needs nginx as the upstream (the 503 location of the fallback runs)")
        return [parsed]
    report.say(f"each variant warmed up {plan.warmup:.0f} s, then {plan.config_rounds} alternating rounds x "
               f"{plan.config_seconds:.0f} s (so background load hits all alike); p50, p99: means over the rounds")
    return [parsed, fallback_cost(report, plan, workdir, portico, upstream),
            config_overhead(report, plan, workdir, portico, upstream)]
