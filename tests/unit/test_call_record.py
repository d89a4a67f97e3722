"""One CallRecord per call, handed to every sink: the access line, the request log and the metrics agree on it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.call.answer import Answer, Relay
from app.call.context import RequestContext, ResolvedTarget
from app.call.record import CallRecord
from app.logs import access_lines
from app.metrics import MULTIPROC_ENV, GatewayMetrics
from app.observe import CallObserver
from app.providers.registry import PROVIDERS
from app.server import inflight
from app.usage import PricingTable, UsageTap
from tests.unit.test_stream_accounting import EVENTS, Upstream, UpstreamResponse

ANSWER = b'{"model":"gpt-4o-mini","usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}'


class Counting:
    """A sink that keeps every record it is handed."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def write(self, record: CallRecord) -> None:
        self.records.append(record)


class Records:
    """A request log that keeps its records, or fails every one when `broken`."""

    def __init__(self, broken: bool = False) -> None:
        self.rows: list[Any] = []
        self.broken = broken

    def record(self, rec: Any) -> None:
        if self.broken:
            raise OSError("disk full")
        self.rows.append(rec)


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> GatewayMetrics:
    """Return fresh single-process metrics."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return GatewayMetrics()


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample /metrics would show, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.render()[0].decode()) for s in family.samples}


def started(observer: CallObserver, trace_id: str) -> RequestContext:
    ctx = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={}, route="unified",
                         trace_id=trace_id)
    ctx.target = ResolvedTarget(provider=PROVIDERS["openai"], credential="sk-test-record-0001")
    observer.started(ctx)
    ctx.upstream_status = 200
    return ctx


def answered(observer: CallObserver, trace_id: str) -> RequestContext:
    """Return a call that ended with a whole JSON answer reporting usage (recorded by the caller)."""
    ctx = started(observer, trace_id)
    tap = UsageTap("application/json", None)
    tap.feed(ANSWER)
    ctx.usage = tap
    return ctx


def test_each_call_is_recorded_once_however_it_ends() -> None:
    observer = CallObserver(PricingTable.default(), None, None, access_lines=False)
    counting = Counting()
    observer.register(counting)

    observer.finished(started(observer, "whole"), 200)()

    left = started(observer, "left")
    answer = Answer(200, "OK", [("Content-Type", "text/event-stream")], EVENTS[0],
                    UpstreamResponse(Upstream(EVENTS[1:])))  # type: ignore[arg-type]
    body = Relay(answer, left, on_close=observer.finished(left, 200))
    next(body)
    next(body)
    body.close()  # the client went away with [DONE] still to come

    cut = started(observer, "cut")
    end_of_cut = observer.finished(cut, 200)
    inflight.cut_all()  # the worker's graceful period ran out
    end_of_cut()  # the stream's own end comes later: no second record

    assert [(r.trace_id, r.status, r.upstream_status, r.error) for r in counting.records] == [
        ("whole", 200, 200, None), ("left", 499, 200, "client closed"), ("cut", 499, 200, "shutdown")]


def test_a_failing_sink_does_not_stop_the_next_one(metrics: GatewayMetrics,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The request log comes before the metrics: its failure must not cost the call its metrics.
    observer = CallObserver(PricingTable.default(), Records(broken=True), metrics, access_lines=False)  # type: ignore[arg-type]
    counting = Counting()
    observer.register(counting)
    metrics.call_started()
    with caplog.at_level(logging.ERROR, logger="app.observe"):
        observer.finished(answered(observer, "sinks-1"), 200)()

    labels = frozenset({"route": "unified", "provider": "openai", "status": "200", "key": ""}.items())
    assert samples(metrics)[("portico_requests_total", labels)] == 1
    assert [r.trace_id for r in counting.records] == ["sinks-1"]
    assert any("sinks-1" in r.getMessage() and "could not record" in r.getMessage() for r in caplog.records)


def test_the_three_sinks_agree_on_one_call(metrics: GatewayMetrics, capsys: pytest.CaptureFixture[str]) -> None:
    log = Records()
    observer = CallObserver(PricingTable.default(), log, metrics, access_lines=True)  # type: ignore[arg-type]
    metrics.call_started()
    observer.finished(answered(observer, "agree-1"), 200)()
    access_lines.flush()

    [line] = [json.loads(text) for text in capsys.readouterr().out.splitlines() if '"agree-1"' in text]
    [row] = log.rows
    got = samples(metrics)
    by_model = {"provider": "openai", "model": "gpt-4o-mini", "key": ""}
    metric_tokens = {kind: got[("portico_tokens_total", frozenset({**by_model, "kind": kind}.items()))]
                     for kind in ("input", "output")}
    metric_cost = got[("portico_cost_usd_total", frozenset(by_model.items()))]

    assert line["cost_usd"] > 0
    assert (line["status"], line["input_tokens"], line["output_tokens"]) == (200, 1000, 500)
    assert (row.status, row.input_tokens, row.output_tokens) == (200, 1000, 500)
    assert got[("portico_requests_total", frozenset({"route": "unified", "provider": "openai",
                                                     "status": "200", "key": ""}.items()))] == 1
    assert metric_tokens == {"input": 1000, "output": 500}
    assert row.cost_usd == line["cost_usd"] == pytest.approx(metric_cost)
    assert (line["model"], row.model) == ("gpt-4o-mini", "gpt-4o-mini")
