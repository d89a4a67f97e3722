"""Tests for the Prometheus metrics (app.metrics): values, bounded labels, multiprocess aggregation."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.call.record import CallRecord
from app.metrics import (
    LATENCY_BUCKETS,
    MULTIPROC_ENV,
    OTHER,
    GatewayMetrics,
    get_metrics,
    mark_worker_dead,
    prepare_multiprocess_dir,
    render_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    """Return every sample of an exposition text by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """Return one sample's value, or None when it is absent."""
    return samples.get((name, frozenset(labels.items())))


def label_sets(samples: Samples, name: str) -> set[frozenset[tuple[str, str]]]:
    """Return the label sets a sample name has."""
    return {labels for sample, labels in samples if sample == name}


def call_record(route: str = "unified", provider: str | None = "openai", status: int = 200, latency_s: float = 0.3,
                upstream_s: float | None = 0.28, model: str | None = None, tokens: dict[str, Any] | None = None,
                **changes: Any) -> CallRecord:
    """Return a finished call whose model is labelled `model` (a price-table name, or `other`)."""
    priced_as = f"{provider}/{model}" if model not in (None, OTHER) else None
    counts = {f"{kind}_tokens": count for kind, count in (tokens or {}).items()}
    return CallRecord(route=route, provider=provider, status=status, latency_s=latency_s, upstream_s=upstream_s,
                      model=model, priced_as=priced_as, **counts, **changes)


def finished(m: GatewayMetrics, **changes: Any) -> None:
    """Record one call: a 200 on the unified route from openai unless changed."""
    m.call_started()
    m.call_finished(call_record(**changes))


@pytest.fixture
def single(monkeypatch: pytest.MonkeyPatch) -> GatewayMetrics:
    """Return fresh single-process metrics (no multiprocess directory)."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return GatewayMetrics()


# --- single process -------------------------------------------------------------------------------


def test_counters_histograms_and_in_flight(single: GatewayMetrics) -> None:
    single.call_started()
    single.call_started()
    assert value(parse(single.render()[0]), "portico_in_flight_requests") == 2
    single.call_finished(call_record(route="unified", provider="openai", status=200, latency_s=0.3, upstream_s=0.28,
                                     retries=2, fell_back=True, cache_status="MISS", model="gpt-4o-mini",
                                     tokens={"input": 120, "output": 40, "cache_read": 0}, cost_usd=0.0025))
    single.call_finished(call_record(route="unified", provider="openai", status=200, latency_s=0.004, upstream_s=None,
                                     retries=0, fell_back=False, cache_status="HIT", model=None, tokens=None,
                                     cost_usd=None))
    finished(single, route="proxy", provider="anthropic", status=502, latency_s=2.0, upstream_s=1.99,
             cache_status="DISABLED")

    body, content_type = single.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    s = parse(body)
    assert value(s, "portico_in_flight_requests") == 0
    assert value(s, "portico_requests_total", route="unified", provider="openai", status="200", key="") == 2
    assert value(s, "portico_requests_total", route="proxy", provider="anthropic", status="502", key="") == 1
    by_openai = {"route": "unified", "provider": "openai"}
    assert value(s, "portico_request_duration_seconds_count", **by_openai) == 2
    assert value(s, "portico_request_duration_seconds_sum", **by_openai) == pytest.approx(0.304)
    assert value(s, "portico_request_duration_seconds_bucket", **by_openai, le="0.005") == 1
    assert value(s, "portico_request_duration_seconds_bucket", **by_openai, le="0.25") == 1
    assert value(s, "portico_request_duration_seconds_bucket", **by_openai, le="0.5") == 2
    assert value(s, "portico_request_duration_seconds_bucket", **by_openai, le="120.0") == 2
    # The cache hit never reached the upstream: no upstream or overhead observation for it.
    assert value(s, "portico_upstream_duration_seconds_count", **by_openai) == 1
    assert value(s, "portico_gateway_overhead_seconds_count", **by_openai) == 1
    assert value(s, "portico_gateway_overhead_seconds_sum", **by_openai) == pytest.approx(0.02)
    assert value(s, "portico_gateway_overhead_seconds_bucket", **by_openai, le="0.01") == 0
    assert value(s, "portico_gateway_overhead_seconds_bucket", **by_openai, le="0.025") == 1
    assert value(s, "portico_retries_total", **by_openai) == 2
    assert value(s, "portico_fallbacks_total", **by_openai) == 1
    assert value(s, "portico_fallbacks_total", route="proxy", provider="anthropic") == 0
    assert value(s, "portico_cache_results_total", **by_openai, status="MISS") == 1
    assert value(s, "portico_cache_results_total", **by_openai, status="HIT") == 1
    assert label_sets(s, "portico_cache_results_total") == {
        frozenset({**by_openai, "status": "MISS"}.items()), frozenset({**by_openai, "status": "HIT"}.items())}
    assert value(s, "portico_tokens_total", provider="openai", model="gpt-4o-mini", kind="input", key="") == 120
    assert value(s, "portico_tokens_total", provider="openai", model="gpt-4o-mini", kind="output", key="") == 40
    assert value(s, "portico_tokens_total", provider="openai", model="gpt-4o-mini", kind="cache_read", key="") is None
    assert value(s, "portico_cost_usd_total", provider="openai", model="gpt-4o-mini", key="") == pytest.approx(0.0025)


def test_label_values_are_bounded(single: GatewayMetrics) -> None:
    long_model = "ft:gpt-4o-2024-08-06:" + "x" * 200
    finished(single, provider=None, status=401, upstream_s=None)
    finished(single, route="/v1/some/unbounded/path", model=long_model, tokens={"output": 5},
             cost_usd=0.01)
    finished(single, tokens={"input": 3}, cost_usd=-1.0)  # no model in the answer; a negative cost is not counted
    s = parse(single.render()[0])

    assert value(s, "portico_requests_total", route="unified", provider="none", status="401", key="") == 1
    assert value(s, "portico_requests_total", route="other", provider="openai", status="200", key="") == 1
    assert value(s, "portico_tokens_total", provider="openai", model=long_model[:64], kind="output", key="") == 5
    assert value(s, "portico_tokens_total", provider="openai", model="none", kind="input", key="") == 3
    assert value(s, "portico_cost_usd_total", provider="openai", model=long_model[:64], key="") == pytest.approx(0.01)
    assert label_sets(s, "portico_cost_usd_total") == {
        frozenset({"provider": "openai", "model": long_model[:64], "key": ""}.items())}
    kinds = {dict(labels)["kind"] for labels in label_sets(s, "portico_tokens_total")}
    assert kinds == {"input", "output"}
    for (_, labels), _v in s.items():
        names = {name for name, _ in labels}
        assert names <= {"route", "provider", "status", "model", "kind", "key", "le"}
        assert all(len(v) <= 64 for _, v in labels)


def test_odd_values_neither_poison_nor_raise(single: GatewayMetrics, caplog: pytest.LogCaptureFixture) -> None:
    finished(single, latency_s=math.nan, upstream_s=-1.0)  # NaN would stick in the sum forever
    finished(single, status=1000)
    finished(single, tokens={"input": "many"})  # a bug upstream of metrics: logged once, not raised
    finished(single, tokens={"input": "many"})
    s = parse(single.render()[0])

    # NaN counted as 0; the two faulty calls still recorded everything before the tokens.
    assert value(s, "portico_request_duration_seconds_sum", route="unified", provider="openai") == pytest.approx(0.9)
    assert value(s, "portico_gateway_overhead_seconds_sum", route="unified", provider="openai") == pytest.approx(0.06)
    assert value(s, "portico_requests_total", route="unified", provider="openai", status="other", key="") == 1
    assert value(s, "portico_in_flight_requests") == 0
    assert sum("recording metrics failed" in r.getMessage() for r in caplog.records) == 1


def test_get_metrics_is_one_per_process_and_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    m = get_metrics()
    assert get_metrics() is m
    p1 = {"route": "proxy", "provider": "p1", "status": "204", "key": ""}
    before = value(parse(render_metrics()[0]), "portico_requests_total", **p1)
    finished(m, route="proxy", provider="p1", status=204)
    body, content_type = render_metrics()
    after = value(parse(body), "portico_requests_total", **p1)
    assert (before or 0) + 1 == after
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_refuses_multiprocess_when_prometheus_client_was_imported_first(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    # This test process imported prometheus_client without the variable: its values live in memory only.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="prepare_multiprocess_dir"):
        GatewayMetrics()


# --- prepare_multiprocess_dir ---------------------------------------------------------------------


def test_prepare_creates_a_temp_dir_once() -> None:
    environ: dict[str, str] = {}
    path = prepare_multiprocess_dir(environ)
    try:
        assert os.path.isdir(path) and environ[MULTIPROC_ENV] == path
        Path(path, "counter_1.db").write_bytes(b"live")
        assert prepare_multiprocess_dir(environ) == path  # gunicorn re-reads its config on HUP
        assert Path(path, "counter_1.db").exists()
    finally:
        shutil.rmtree(path)


def test_prepare_wipes_stale_files_of_a_given_dir(tmp_path: Path) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    for name in ("counter_11.db", "gauge_livesum_11.db", "histogram_12.db", "README"):
        (given / name).write_bytes(b"old")
    environ = {MULTIPROC_ENV: str(given)}
    assert prepare_multiprocess_dir(environ) == str(given)
    assert sorted(p.name for p in given.iterdir()) == ["README"]


def test_prepare_makes_a_missing_given_dir(tmp_path: Path) -> None:
    given = tmp_path / "not" / "yet"
    assert prepare_multiprocess_dir({MULTIPROC_ENV: str(given)}) == str(given)
    assert given.is_dir()


def test_prepare_leaves_an_inherited_temp_dir_to_its_master(tmp_path: Path) -> None:
    # gunicorn USR2: the new master inherits the old master's variables, the dir stays the old master's.
    old = tmp_path / "old"
    old.mkdir()
    (old / "counter_5.db").write_bytes(b"old master's worker")
    environ = {MULTIPROC_ENV: str(old), "PORTICO_METRICS_DIR_OWNER": str(os.getpid() + 1)}
    path = prepare_multiprocess_dir(environ)
    try:
        assert path != str(old) and environ[MULTIPROC_ENV] == path
        assert (old / "counter_5.db").exists()
    finally:
        shutil.rmtree(path)


def test_mark_worker_dead_without_multiprocess_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    mark_worker_dead(12345)


# --- multiprocess ---------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys
    from app.call.record import CallRecord
    from app.metrics import get_metrics
    index, calls, leave_open = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    m = get_metrics()
    for i in range(calls):
        m.call_started()
        m.call_finished(CallRecord(route="unified", provider="openai", status=200 if i % 4 else 429,
                                   latency_s=0.05 * (index + 1), upstream_s=0.04 * (index + 1), retries=1,
                                   fell_back=i % 2 == 0, cache_status="MISS", model=f"model-{index}",
                                   priced_as=f"openai/model-{index}", input_tokens=10, output_tokens=3,
                                   cost_usd=0.001))
    for _ in range(leave_open):
        m.call_started()
    print(json.dumps({"pid": os.getpid()}))
""")


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Return an empty multiprocess directory, set for this test's rendering."""
    path = tmp_path / "prom"
    path.mkdir()
    monkeypatch.setenv(MULTIPROC_ENV, str(path))
    yield path


def run_worker(path: Path, index: int, calls: int, leave_open: int = 0) -> int:
    """Run one worker process that records calls; return its pid."""
    env = {**os.environ, MULTIPROC_ENV: str(path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", WORKER, str(index), str(calls), str(leave_open)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout.strip().splitlines()[-1])["pid"])


def test_counters_sum_across_processes(multiproc_dir: Path) -> None:
    calls = 200
    pids = [run_worker(multiproc_dir, index, calls, leave_open=2 if index == 2 else 0) for index in range(3)]
    s = parse(render_metrics()[0])
    openai = {"route": "unified", "provider": "openai"}

    assert value(s, "portico_requests_total", **openai, status="200", key="") == 3 * 150
    assert value(s, "portico_requests_total", **openai, status="429", key="") == 3 * 50
    assert value(s, "portico_retries_total", **openai) == 3 * calls
    assert value(s, "portico_fallbacks_total", **openai) == 3 * calls / 2
    assert value(s, "portico_cache_results_total", **openai, status="MISS") == 3 * calls
    assert value(s, "portico_request_duration_seconds_count", **openai) == 3 * calls
    assert value(s, "portico_request_duration_seconds_sum", **openai) == pytest.approx(calls * (0.05 + 0.1 + 0.15))
    assert value(s, "portico_request_duration_seconds_bucket", **openai, le="0.05") == calls
    assert value(s, "portico_request_duration_seconds_bucket", **openai, le="0.1") == 2 * calls
    assert value(s, "portico_request_duration_seconds_bucket", **openai, le="0.25") == 3 * calls
    assert value(s, "portico_upstream_duration_seconds_count", **openai) == 3 * calls
    for index in range(3):
        by_model = {"provider": "openai", "model": f"model-{index}", "kind": "input", "key": ""}
        assert value(s, "portico_tokens_total", **by_model) == 10 * calls
    total_cost = sum(v for (name, _), v in s.items() if name == "portico_cost_usd_total")
    assert total_cost == pytest.approx(3 * calls * 0.001)
    # Two calls were still open when the third worker exited (killed mid-request, as far as the gauge knows).
    assert value(s, "portico_in_flight_requests") == 2

    mark_worker_dead(pids[2])
    after = parse(render_metrics()[0])
    assert value(after, "portico_in_flight_requests") in (0, None)
    counters = {key: v for key, v in s.items() if key[0].endswith(("_total", "_count", "_sum", "_bucket"))}
    assert {key: after[key] for key in counters} == counters


MASTER = textwrap.dedent("""
    import json, os, sys
    from app.metrics import mark_worker_dead, prepare_multiprocess_dir
    assert "prometheus_client" not in sys.modules, "importing app.metrics must not import prometheus_client"
    path = prepare_multiprocess_dir(os.environ)
    children = []
    for index in range(2):  # the workers fork from the master, as under gunicorn
        pid = os.fork()
        if pid == 0:
            from app.call.record import CallRecord
            from app.metrics import get_metrics
            m = get_metrics()
            for _ in range(25):
                m.call_started()
                m.call_finished(CallRecord(route="proxy", provider="openai", status=200, latency_s=0.01,
                                           upstream_s=0.005))
            m.call_started()
            m.flush()  # as the flusher thread does every 0.25 s; a worker killed sooner loses its last calls
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    from app.metrics import render_metrics
    before = render_metrics()[0].decode()
    for pid in children:
        mark_worker_dead(pid)
    print(json.dumps({"path": path, "before": before, "after": render_metrics()[0].decode()}))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_gunicorn_like_master_and_forked_workers() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (MULTIPROC_ENV, "PORTICO_METRICS_DIR_OWNER")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", MASTER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = parse(out["before"].encode()), parse(out["after"].encode())
    labels = {"route": "proxy", "provider": "openai"}
    assert value(before, "portico_requests_total", **labels, status="200", key="") == 50
    assert value(before, "portico_in_flight_requests") == 2
    assert value(after, "portico_requests_total", **labels, status="200", key="") == 50
    assert value(after, "portico_in_flight_requests") in (0, None)
    assert not os.path.exists(out["path"])  # the master removed its temp dir at exit



def test_calls_reach_the_values_in_batches_identical_to_one_by_one(single: GatewayMetrics) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    latencies = [0.001, 0.005, 0.0051, 0.3, 0.3, 7.0, 500.0, 0.0]
    for latency in latencies:
        finished(single, latency_s=latency, upstream_s=None, cache_status="HIT")
    s = parse(single.render()[0])  # /metrics applies what is queued first
    assert not single._pending

    reference = Histogram("ref", "one by one", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for latency in latencies:
        reference.observe(latency)
    expected = {sample.labels["le"]: sample.value for sample in reference.collect()[0].samples
                if sample.name == "ref_bucket"}
    labels = {"route": "unified", "provider": "openai"}
    for le, count in expected.items():
        assert value(s, "portico_request_duration_seconds_bucket", **labels, le=le) == count
    assert value(s, "portico_request_duration_seconds_sum", **labels) == pytest.approx(sum(latencies))
    assert value(s, "portico_cache_results_total", **labels, status="HIT") == len(latencies)
    assert value(s, "portico_in_flight_requests") == 0


def test_the_flusher_applies_queued_calls_without_a_scrape(single: GatewayMetrics) -> None:
    single.call_started()
    deadline = time.monotonic() + 5
    while single._pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not single._pending
    assert single.in_flight._value.get() == 1
