"""PORTICO_TEST_PORT_BASE: the tests and the demo take their loopback ports from a range, beside another gateway."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import procs
from tests.fakes.listener import Listener
from tests.fakes.net import PORT_BASE_ENV, PORT_SPAN, free_port, listen_port
from tests.fakes.provider import FakeProvider

ROOT = Path(__file__).resolve().parents[2]
BASE = 21000  # below Linux's ephemeral range, so the kernel's own picks for other tests do not land in it


def in_range(port: int) -> bool:
    """Tell whether the port lies in the range the test set."""
    return BASE <= port < BASE + PORT_SPAN


@pytest.fixture()
def port_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask for ports from BASE up."""
    monkeypatch.setenv(PORT_BASE_ENV, str(BASE))


def test_without_a_base_ports_are_free_ephemeral_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORT_BASE_ENV, raising=False)
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # free: a server can take it
        pass
    assert listen_port() == 0  # a socket bound here lets the kernel pick, as before


def test_ports_come_from_the_range_in_increasing_order(port_range: None) -> None:
    ports = [free_port() for _ in range(5)]
    assert all(in_range(port) for port in ports), ports
    assert ports == sorted(set(ports))


def test_a_port_something_listens_on_is_skipped(port_range: None) -> None:
    first = free_port()
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", first + 1))
        busy.listen(1)
    except OSError:
        pass  # already taken by something else: skipped all the same
    with busy:
        second = free_port()
    assert in_range(second) and second > first + 1


def test_another_process_never_gets_the_same_ports(port_range: None) -> None:
    mine = {free_port() for _ in range(3)}
    wanted = max(mine) - BASE + 1  # enough that, counting from the base alone, it would reach ours
    script = ("import json\nfrom tests.fakes.net import free_port\n"
              f"print(json.dumps([free_port() for _ in range({wanted})]))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), capture_output=True,
                         text=True, timeout=30, check=True).stdout
    theirs = set(json.loads(out))
    assert all(in_range(port) for port in theirs), theirs
    assert not mine & theirs


def test_servers_and_the_demo_take_ports_from_the_range(port_range: None) -> None:
    with FakeProvider() as fake, Listener() as listener:
        assert in_range(fake.port) and in_range(listener.port)
    assert in_range(procs.free_port())  # the demo's and the benchmark's ports


@pytest.mark.parametrize("value", ["abc", "80", "65000", "-1"])
def test_a_bad_base_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(PORT_BASE_ENV, value)
    with pytest.raises(ValueError, match=f"{PORT_BASE_ENV} must be a port from 1024 to"):
        free_port()
