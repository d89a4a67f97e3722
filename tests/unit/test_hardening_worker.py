"""Recording calls cut at shutdown, and the open-mode check on the addresses really bound (docs/deploy.md)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from app.call.context import RequestContext
from app.observe import CallObserver
from app.server import inflight
from app.server.listeners import bound_addresses
from app.settings import SettingsError, check_start, load_settings
from app.usage import PricingTable


class Records:
    """A request log that keeps what it is given."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, rec: Any) -> None:
        self.rows.append(rec)


def call(observer: CallObserver, trace_id: str) -> RequestContext:
    ctx = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={}, route="unified",
                         trace_id=trace_id)
    observer.started(ctx)
    return ctx


def test_a_call_cut_at_shutdown_is_recorded_once_as_499_shutdown() -> None:
    log = Records()
    observer = CallObserver(PricingTable.default(), log, None, access_lines=False)  # type: ignore[arg-type]
    streaming = call(observer, "cut-stream")
    record_at_end = observer.finished(streaming, 200)  # the stream's close() would run this

    assert inflight.cut_all() >= 1  # (other threads' leftovers, if any, are cut too)
    record_at_end()  # the stream's thread ends later: no second row

    assert [(row.trace_id, row.status, row.error) for row in log.rows] == [("cut-stream", 499, "shutdown")]


def test_a_call_that_ended_is_not_cut() -> None:
    log = Records()
    observer = CallObserver(PricingTable.default(), log, None, access_lines=False)  # type: ignore[arg-type]
    done = call(observer, "done")
    observer.finished(done, 200)()

    inflight.cut_all()
    assert [(row.trace_id, row.status) for row in log.rows] == [("done", 200)]


def open_settings(tmp_path: Path) -> Any:
    (tmp_path / "gateway.toml").write_text("")
    return load_settings({}, path=str(tmp_path / "gateway.toml"))


def test_open_mode_is_checked_on_every_address_really_bound(tmp_path: Path) -> None:
    settings = open_settings(tmp_path)  # GATEWAY_BIND: the loopback default
    warning = check_start(settings, ["127.0.0.1:9001", "[::1]:9001", "unix:/run/portico.sock"])
    assert warning is not None and "127.0.0.1:9001" in warning and "unix:/run/portico.sock" in warning
    with pytest.raises(SettingsError, match=r"0\.0\.0\.0:9001 is not loopback"):
        check_start(settings, ["127.0.0.1:9001", "0.0.0.0:9001"])


def test_bound_addresses_are_read_from_the_sockets(tmp_path: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "gw.sock"))
    with tcp, unix:
        assert bound_addresses([tcp, unix], [("0.0.0.0", 8787)]) == [
            f"127.0.0.1:{tcp.getsockname()[1]}", f"unix:{tmp_path / 'gw.sock'}"]
    assert bound_addresses([], [("::", 8787)]) == ["[::]:8787"]  # reuse_port: the master holds no socket
