"""Measure the request log: record() cost on the hot path, committed rows/s with several writer processes.

Run: .venv/bin/python -m bench.logstore [--processes 4] [--rows 50000] [--calls 200000] [--analytics-rows 0]
(standalone; not one of `bench.run`'s sections)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from app.logstore import LogRecord, LogStore


def sample(trace_id: str, ts: float, i: int = 0) -> LogRecord:
    """Return a typical unified call with tokens, cost and two metadata tags."""
    return LogRecord(
        trace_id=trace_id, ts=ts, key_name=f"team-{i % 5}", provider=("openai", "anthropic", "cohere")[i % 3],
        target_path="config.targets[0]", method="POST", route="unified", path="/v1/chat/completions",
        status=200 if i % 20 else 502, upstream_status=200, latency_ms=50.0 + i % 900, upstream_ms=40.0 + i % 900,
        retries=0, cache_status="MISS", model="gpt-4o-mini", input_tokens=120, output_tokens=300,
        cache_read_tokens=None, cache_write_tokens=None, search_units=None, cost_usd=0.00021, unknown_price=False,
        metadata={"team": "search", "env": "prod"}, error=None)


def hot_path_us(path: str, calls: int) -> float:
    """Return the mean cost of record() in microseconds while the writer drains in the background."""
    store = LogStore(path, retention_days=None, queue_max=calls + 1)
    records = [sample(f"hot-{i}", time.time(), i) for i in range(calls)]
    store.record(records[0])  # the first call starts the writer; time the steady state
    started = time.perf_counter()
    for rec in records[1:]:
        store.record(rec)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / (calls - 1) * 1e6


def _producer(path: str, worker: int, rows: int, barrier: Barrier, out: Queue[Any]) -> None:
    store = LogStore(path, retention_days=None, queue_max=rows + 1)
    records = [sample(f"p{worker}-{i}", time.time(), i) for i in range(rows)]
    barrier.wait()
    started = time.perf_counter()
    for rec in records:
        store.record(rec)
    flushed = store.flush(timeout_s=300)
    out.put((worker, time.perf_counter() - started, flushed, store.commits, store.dropped, store.failed))
    store.close()


def sustained_rows_per_s(path: str, processes: int, rows: int) -> tuple[float, list[tuple[Any, ...]]]:
    """Return committed rows/s with processes writing rows each at once (wall time to the last flush)."""
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(processes + 1)
    out: Queue[Any] = fork.Queue()
    children = [fork.Process(target=_producer, args=(path, w, rows, barrier, out)) for w in range(processes)]
    for child in children:
        child.start()
    barrier.wait()
    started = time.perf_counter()
    reports = [out.get() for _ in children]
    elapsed = time.perf_counter() - started
    for child in children:
        child.join()
    return processes * rows / elapsed, sorted(reports)


def analytics_s(path: str, rows: int) -> float:
    """Return the seconds analytics(group_by="provider") takes over rows rows."""
    store = LogStore(path, retention_days=None, queue_max=rows + 1, batch_size=5000)
    now = time.time()
    for i in range(rows):
        store.record(sample(f"a-{i}", now - i * 0.001, i))
    store.flush(timeout_s=600)
    started = time.perf_counter()
    store.analytics(since=0, until=now + 1, group_by="provider")
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


def main() -> None:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per process")
    parser.add_argument("--calls", type=int, default=200_000, help="record() calls for the hot-path timing")
    parser.add_argument("--analytics-rows", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"cpus: {os.cpu_count()}")
        print(f"record(): {hot_path_us(os.path.join(tmp, 'hot.sqlite'), args.calls):.2f} us/call")
        rate, reports = sustained_rows_per_s(os.path.join(tmp, 'multi.sqlite'), args.processes, args.rows)
        print(f"{args.processes} processes x {args.rows} rows: {rate:,.0f} committed rows/s")
        for worker, seconds, flushed, commits, dropped, failed in reports:
            print(f"  worker {worker}: {seconds:.2f} s, flushed={flushed}, commits={commits}, "
                  f"dropped={dropped}, failed={failed}")
        if args.analytics_rows:
            seconds = analytics_s(os.path.join(tmp, 'analytics.sqlite'), args.analytics_rows)
            print(f"analytics over {args.analytics_rows:,} rows: {seconds:.2f} s")


if __name__ == "__main__":
    main()
