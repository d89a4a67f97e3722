"""Prometheus metrics: per-call counters and histograms, aggregated over gunicorn workers (multiprocess mode).

prometheus_client picks its value storage (in memory, or mmapped files shared by the workers) once, when it
is first imported, from PROMETHEUS_MULTIPROC_DIR. So this module imports it lazily: gunicorn.conf.py may
import it in the master to set the variable before any worker imports prometheus_client.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from app.redact import current_secrets

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from app.call.record import CallRecord

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The pid of the master that made the temp dir: a master re-executed by the old one (gunicorn USR2)
# inherits the variable, but that dir and its clean-up belong to the old master.
_OWNER_ENV = "PORTICO_METRICS_DIR_OWNER"

# From a cached answer (ms) to a long generation or stream; beyond 120 s lands in +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# The gateway's own share is normally well under 5 ms, so it needs finer buckets than the call itself;
# failed attempts and backoff waits before the answering one push it up to seconds.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ROUTES = frozenset({"proxy", "unified"})
CACHE_STATUSES = frozenset({"HIT", "MISS", "REFRESH"})  # DISABLED is not a cache result
TOKEN_KINDS = frozenset({"input", "output", "cache_read", "cache_write"})
MAX_LABEL_CHARS = 64
NONE = "none"
OTHER = "other"
# Every label value comes from a bounded set (docs/security.md). Calls carry provider slugs from the registry
# and models are labelled by their price-table names (model_label); these budgets stop anything else from adding series
# without end. Per process, a provider or a (provider, model) pair first seen after its budget is spent is
# counted as `other`.
MAX_PROVIDERS = 32
MAX_MODEL_PAIRS = 64
# The `key` label (docs/observability.md): the gateway key's name, never its secret. Names come from the keys an
# operator made, but managed keys can be created at run time without end, so per process the first MAX_KEYS names
# get their own value and later ones count as `other` (a key named `other` shares that series). A call without a
# key (an open gateway, or refused before its key was known) is labelled NO_KEY, the empty string: no key name can
# be empty, so it is never mistaken for a key, and PromQL's `key=""` is what "no key" reads as anyway.
MAX_KEYS = 50
NO_KEY = ""
# Status codes worth their own series (the ones alerts and dashboards name); any other is counted by class
# (`4xx`), and one outside 100-599 as `other`.
STATUS_CODES = frozenset({200, 201, 202, 204, 206, 246, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409,
                          410, 413, 415, 422, 429, 446, 499, 500, 501, 502, 503, 504, 529})
# Raw (route, provider, status, key name) lookups cached; past this they are looked up each time.
MAX_CALL_KEYS = 4096
FLUSH_INTERVAL_S = 0.25  # calls reach the shared values this often (and before every /metrics answer)

_prepared: set[str] = set()
_instance: GatewayMetrics | None = None
_instance_lock = threading.Lock()


def prepare_multiprocess_dir(environ: MutableMapping[str, str]) -> str:
    """Make sure PROMETHEUS_MULTIPROC_DIR names a directory free of stale files; return it."""
    path = environ.get(MULTIPROC_ENV, "")
    if path in _prepared:
        return path  # gunicorn re-reads its config on HUP: the live workers' files must stay
    owner = environ.get(_OWNER_ENV)
    if path and owner and owner != str(os.getpid()):
        path = ""  # the old master's temp dir (USR2): take a fresh one rather than wipe its live files
    if path:
        os.makedirs(path, exist_ok=True)
        # Files of a previous run would be summed into this run's counters.
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="portico-metrics-")
        environ[MULTIPROC_ENV] = path
        environ[_OWNER_ENV] = str(os.getpid())
        atexit.register(_remove_dir, path, os.getpid())
    _prepared.add(path)
    return path


def _remove_dir(path: str, owner_pid: int) -> None:
    """Remove the temp dir at the master's exit, not at a forked worker's."""
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's in-flight gauge; its counters and histograms stay in the totals."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def multiprocess_enabled() -> bool:
    """Return whether metrics are shared between processes through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


def _label(value: str | None) -> str:
    """Return a bounded label value: 'none' when absent, at most 64 characters."""
    return value[:MAX_LABEL_CHARS] if value else NONE


def key_name_label(name: str | None) -> str:
    """Return a key name as a label value before its budget: NO_KEY when absent, secrets masked, 64 characters.

    A name is the operator's word for a key, never its secret (the label could not hold that: only its hash is
    kept). The mask is for a name someone set to a credential all the same: the gateway file's by value, any
    other by shape (`sk-...`, Bearer tokens), as log lines are masked (docs/security.md).
    """
    return current_secrets().scrub(name)[:MAX_LABEL_CHARS] if name else NO_KEY


def status_label(status: int) -> str:
    """Return the label of an HTTP status: a common code as itself, any other by its class, or `other`."""
    if status in STATUS_CODES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


class LabelBudget:
    """Admits at most `limit` distinct label values (or combinations of them); refuses any seen after that."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[Any] = set()

    def admits(self, value: Any) -> bool:
        """Return True when the value was admitted before, or is admitted now while the budget lasts."""
        if value in self.admitted:
            return True
        if len(self.admitted) >= self.limit:
            return False
        self.admitted.add(value)
        return True


class GatewayMetrics:
    """The gateway's metrics in one process; use `get_metrics()` for the process-wide instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        if multiprocess_enabled() and not getattr(values.ValueClass, "_multiprocess", False):
            # Values would stay in this process's memory and never reach /metrics: fail at boot, not silently.
            raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_ENV} was set; "
                               "call app.metrics.prepare_multiprocess_dir from gunicorn.conf.py")
        # A private registry: the global one would refuse a second instance (tests build several apps).
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        by_call = ("route", "provider")
        self.requests = Counter("portico_requests",
                                "Gateway calls answered, by route, provider, HTTP status and gateway key name.",
                                ("route", "provider", "status", "key"), registry=reg)
        self.latency = Histogram("portico_request_duration_seconds",
                                 "Whole call, from the request's arrival to the end of the response body.",
                                 by_call, buckets=LATENCY_BUCKETS, registry=reg)
        self.upstream = Histogram("portico_upstream_duration_seconds",
                                  "Answering upstream attempt, from sending it to the end of its body.",
                                  by_call, buckets=LATENCY_BUCKETS, registry=reg)
        self.overhead = Histogram("portico_gateway_overhead_seconds",
                                  "Call duration minus upstream duration: the gateway's share (and failed attempts).",
                                  by_call, buckets=OVERHEAD_BUCKETS, registry=reg)
        self.retries = Counter("portico_retries", "Upstream retries made, on every target of a fallback.", by_call,
                               registry=reg)
        self.fallbacks = Counter("portico_fallbacks", "Calls answered by a target other than the first.",
                                 by_call, registry=reg)
        self.cache = Counter("portico_cache_results", "Response cache results, by status HIT, MISS or REFRESH.",
                             ("route", "provider", "status"), registry=reg)
        self.tokens = Counter("portico_tokens", "Tokens reported by the answers, by kind and gateway key name.",
                              ("provider", "model", "kind", "key"), registry=reg)
        self.cost = Counter("portico_cost_usd", "Estimated cost of the answers in US dollars, by gateway key name.",
                            ("provider", "model", "key"), registry=reg)
        # livesum: the sum over live workers; a dead worker's share goes with mark_worker_dead.
        self.in_flight = Gauge("portico_in_flight_requests", "Gateway calls being served now.",
                               registry=reg, multiprocess_mode="livesum")
        self.log_dropped = Counter("portico_log_records_dropped",
                                   "Request-log records lost: the log file unusable or failing, or the queue full.",
                                   registry=reg)
        # Labelled children by raw label values: labels() validates and locks on every call, a dict hit does not.
        self._call_children: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._providers = LabelBudget(MAX_PROVIDERS)
        self._model_pairs = LabelBudget(MAX_MODEL_PAIRS)
        self._keys = LabelBudget(MAX_KEYS)
        self._failed = False
        # Calls wait here and are applied in batches: one shared-value write per label set and batch instead of
        # six to eleven per call (each a lock and an mmap write in multiprocess mode). None marks a call started.
        self._pending: deque[CallRecord | None] = deque()
        self._flush_lock = threading.Lock()
        self._flusher_pid = -1
        atexit.register(self.flush)

    def log_records_dropped(self, count: int) -> None:
        """Count request-log records lost (the log store calls it per lost batch, from any thread)."""
        self.log_dropped.inc(count)

    def call_started(self) -> None:
        """Count a call as in flight."""
        self._queue(None)

    def call_finished(self, record: CallRecord) -> None:
        """Record a finished call (once per call_started); never raise into the request path.

        The provider should come from a bounded set (the registry's slugs), the key name from the keys made;
        values beyond the budgets are counted as `other` all the same.
        """
        self._queue(record)

    def _queue(self, call: CallRecord | None) -> None:
        self._pending.append(call)
        if self._flusher_pid != os.getpid():  # first call in this process (gunicorn forks after import)
            with self._flush_lock:
                if self._flusher_pid != os.getpid():
                    self._flusher_pid = os.getpid()
                    threading.Thread(target=self._run, name="metrics", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Apply every queued call to the metric values."""
        with self._flush_lock:
            batch = _Batch()
            while True:
                try:
                    call = self._pending.popleft()
                except IndexError:
                    break
                if call is None:
                    batch.in_flight += 1
                    continue
                batch.in_flight -= 1
                try:
                    self._record(batch, call)
                except Exception:  # metrics must not break the gateway; say so once, not per call
                    if not self._failed:
                        self._failed = True
                        log.exception("recording metrics failed (reported once per process)")
            batch.apply(self.in_flight)

    def _record(self, batch: _Batch, call: CallRecord) -> None:
        key = (call.route, call.provider, call.status, call.key_name)
        children = self._call_children.get(key)
        if children is None:
            children = self._make_call_children(*key)
            if len(self._call_children) < MAX_CALL_KEYS:  # raw values are the client's: keep the cache bounded
                self._call_children[key] = children
        route_label, provider_label, key_label, requests, latency, upstream, overhead, retried, fallbacks = children
        batch.add(requests, 1)
        # `x > 0.0 else 0.0` also turns NaN into 0: one NaN in a histogram's sum would stick forever.
        latency_s = call.latency_s if call.latency_s > 0.0 else 0.0
        batch.observe(latency, latency_s)
        if call.upstream_s is not None:
            upstream_s = call.upstream_s if call.upstream_s > 0.0 else 0.0
            batch.observe(upstream, upstream_s)
            spent = latency_s - upstream_s
            batch.observe(overhead, spent if spent > 0.0 else 0.0)
        if call.retries > 0:
            batch.add(retried, call.retries)
        if call.fell_back:
            batch.add(fallbacks, 1)
        if call.cache_status in CACHE_STATUSES:
            batch.add(self._child(self.cache, route_label, provider_label, call.cache_status), 1)
        tokens, cost_usd = call.tokens, call.cost_usd
        if tokens or (cost_usd is not None and cost_usd > 0.0):
            model_label = self._model_label(provider_label, model_label_of(call))
            if tokens:
                for kind, count in tokens.items():
                    if kind in TOKEN_KINDS and count > 0:
                        batch.add(self._child(self.tokens, provider_label, model_label, kind, key_label), count)
            if cost_usd is not None and cost_usd > 0.0:
                batch.add(self._child(self.cost, provider_label, model_label, key_label), cost_usd)

    def _make_call_children(self, route: str, provider: str | None, status: int,
                            key_name: str | None) -> tuple[Any, ...]:
        """Return the bounded route, provider and key labels and the per-call children for one call's raw values."""
        route_label = route if route in ROUTES else OTHER
        provider_label = _label(provider)
        if provider_label != NONE and not self._providers.admits(provider_label):
            provider_label = OTHER
        key_label = key_name_label(key_name)
        if key_label != NO_KEY and not self._keys.admits(key_label):
            key_label = OTHER
        by_call = (route_label, provider_label)
        return (route_label, provider_label, key_label,
                self._child(self.requests, *by_call, status_label(status), key_label),
                self._child(self.latency, *by_call), self._child(self.upstream, *by_call),
                self._child(self.overhead, *by_call), self._child(self.retries, *by_call),
                self._child(self.fallbacks, *by_call))

    def _model_label(self, provider_label: str, model: str | None) -> str:
        """Return the model's label: as given (cut to 64 characters) while its budget lasts, else `other`."""
        label = _label(model)
        if label in (NONE, OTHER) or self._model_pairs.admits((provider_label, label)):
            return label
        return OTHER

    def _child(self, metric: Any, *labels: str) -> Any:
        """Return the metric's child for these bounded label values, cached."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type: all workers' when multiprocess, else this registry."""
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        self.flush()
        if multiprocess_enabled():
            return render_metrics()
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def model_label_of(call: CallRecord) -> str | None:
    """Return the model's label: its price-table name, or `other` (docs/security.md).

    The model is the client's choice: as a label it would add series without bound.
    """
    if call.model is None:
        return None
    return call.priced_as.partition("/")[2] if call.priced_as else OTHER


class MetricsSink:
    """Counts each finished call in the gateway's metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def write(self, record: CallRecord) -> None:
        """Queue the call for the next flush of the metric values."""
        self.metrics.call_finished(record)


class _Batch:
    """The queued calls summed: counter increments and histogram observations by child, the in-flight change."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.counts: dict[int, list[Any]] = {}  # id(child) → [child, amount]
        self.observed: dict[int, tuple[Any, list[float]]] = {}  # id(child) → (child, values)

    def add(self, child: Any, amount: float) -> None:
        """Add to a counter child."""
        entry = self.counts.get(id(child))
        if entry is None:
            self.counts[id(child)] = [child, amount]
        else:
            entry[1] += amount

    def observe(self, child: Any, value: float) -> None:
        """Add an observation to a histogram child."""
        entry = self.observed.get(id(child))
        if entry is None:
            self.observed[id(child)] = (child, [value])
        else:
            entry[1].append(value)

    def apply(self, in_flight: Any) -> None:
        """Write the sums to the metric values."""
        if self.in_flight:
            in_flight.inc(self.in_flight)
        for child, amount in self.counts.values():
            child.inc(amount)
        for child, values in self.observed.values():
            _observe_all(child, values)


def _observe_all(histogram: Any, values: list[float]) -> None:
    """Observe many values with one write per bucket, as Histogram.observe does one by one.

    Uses prometheus_client's histogram fields (`_upper_bounds`, `_buckets`, `_sum`; pinned version): its
    public API writes the sum and a bucket per observation, and writes are what batching saves.
    """
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe() picks it
    histogram._sum.inc(sum(values))
    for index, count in enumerate(counts):
        if count:
            histogram._buckets[index].inc(count)


def get_metrics() -> GatewayMetrics:
    """Return this process's GatewayMetrics (one per process: two would overwrite each other's files)."""
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = GatewayMetrics()
    return _instance


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text (0.0.4 text format) and its content type for /metrics."""
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

    if _instance is not None:
        _instance.flush()  # this worker's queued calls; the others' reach their files within FLUSH_INTERVAL_S
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return generate_latest(get_metrics().registry), CONTENT_TYPE_PLAIN_0_0_4
    from prometheus_client.multiprocess import MultiProcessCollector

    # A fresh registry per scrape: the collector reads every worker's files (live and dead) each time.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
