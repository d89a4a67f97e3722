"""The deploy kit's systemd unit and container image, run as docs/deploy.md says (where this machine can).

The unit is checked by `systemd-analyze verify`, and its ExecStart runs the gateway through the binary upgrade of
docs/deploy.md (USR2, then TERM to the old master) with a stream in flight. The image is built and run when a
container engine answers; without one, its CMD and HEALTHCHECK run as the image would run them, from its WORKDIR.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.server.worker import CUT_MARGIN_S
from tests.conftest import GATEWAY_KEY
from tests.fakes.net import free_port
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ROOT, gateway_toml

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "portico.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "portico.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
INSTALL_DIR = "/opt/portico"  # where the unit expects the code, and the venv in .venv
VENV_BIN = Path(sys.executable).parent  # this checkout's venv stands in for /opt/portico/.venv
IMAGE_CODE_DIR = "/app"


def unit_service() -> dict[str, str]:
    """Return the [Service] settings of the unit (the last value of a key wins, as in systemd)."""
    section, values = "", {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def env_example() -> dict[str, str]:
    """Return the variables the env file example sets (commented lines set nothing)."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def installed(text: str) -> str:
    """Return unit text with /opt/portico moved to this checkout and its venv."""
    return text.replace(f"{INSTALL_DIR}/.venv/bin/", f"{VENV_BIN}/").replace(INSTALL_DIR, str(ROOT))


def wait_healthy(url: str, proc: subprocess.Popen[bytes], stderr: Path, timeout: float = 30) -> None:
    """Wait until /healthz answers 200; fail with gunicorn's output if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited {proc.returncode}: {stderr.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.05)
    raise AssertionError("the gateway did not come up: " + stderr.read_text()[-2000:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a gunicorn started here: TERM, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """Run a fake provider for one test."""
    with FakeProvider() as provider:
        yield provider


# --------------------------------------------------------------------------- systemd


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (it comes with systemd)")
    unit = tmp_path / "portico.service"
    unit.write_text(installed(UNIT.read_text()))  # verify checks that ExecStart's binary exists
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on an unknown key or a bad value too, and only says so: any line about the unit counts.
    said = [line for line in (done.stdout + done.stderr).splitlines() if "portico.service" in line]
    assert done.returncode == 0 and not said, done.stdout + done.stderr


def test_systemd_waits_for_streams_longer_than_the_gateway_grace() -> None:
    service = unit_service()
    grace = int(env_example()["GATEWAY_GRACEFUL_TIMEOUT"])
    assert service["KillSignal"] == "SIGTERM"  # gunicorn's graceful stop; INT and QUIT cut calls at once
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # The worker cuts (and records) calls at the grace, the master kills it CUT_MARGIN_S later: systemd's SIGKILL
    # must come after both.
    assert int(service["TimeoutStopSec"]) > grace + CUT_MARGIN_S


def test_the_unit_runs_the_gateway_and_a_binary_upgrade_keeps_a_stream(tmp_path: Path, fake: FakeProvider) -> None:
    service = unit_service()
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(fake.url) + f'\n[logs]\npath = "{tmp_path / "logs.sqlite"}"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **env_example(), "GATEWAY_CONFIG": str(config), "GATEWAY_BIND": f"127.0.0.1:{port}",
           "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "4"}
    stderr = tmp_path / "stderr.log"
    old = subprocess.Popen(shlex.split(installed(service["ExecStart"])), cwd=installed(service["WorkingDirectory"]),
                           env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("wb"))
    new_master: int | None = None
    try:
        wait_healthy(url, old, stderr)
        stream = Stream(url)
        assert stream.first.wait(10), stream.error
        old.send_signal(signal.SIGUSR2)  # docs/deploy.md, Upgrades: a new master and workers, same sockets
        new_master = wait_for_new_master(stderr, old.pid)
        assert stream.thread.is_alive(), "the stream ended before the upgrade: this run shows nothing"
        old.send_signal(signal.SIGTERM)  # the old master stops accepting; its worker finishes the stream
        stream.thread.join(15)
        assert stream.events and stream.events[-1] == b"data: [DONE]", (stream.error, stream.events)
        assert old.wait(timeout=15) == 0
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200  # served by the new master
    finally:
        stop(old)
        if new_master is not None:
            stop_orphan(new_master)


class Stream:
    """A streamed chat read in a thread: 4 events, the finish chunk and [DONE], 0.8 s apart (4 s in all)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[bytes] = []
        self.error: str | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@openai-fake",
                   "x-fake-events": "4", "x-fake-event-interval-ms": "800",
                   "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"}
        body = {"model": "gpt-x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with requests.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, stream=True,
                               timeout=15) as res:
                for line in res.iter_lines():
                    if line.startswith(b"data:"):
                        self.events.append(line)
                        self.first.set()
        except requests.RequestException as err:
            self.error = repr(err)
        finally:
            self.first.set()


def wait_for_new_master(stderr: Path, old_pid: int, timeout: float = 20) -> int:
    """Return the pid of the master started by USR2, once one of its workers has booted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stderr.read_text(errors="replace")
        masters = [int(pid) for pid in re.findall(r"Listening at: \S+ \((\d+)\)", text) if int(pid) != old_pid]
        if masters and text.count("Booting worker") >= 2:
            return masters[0]
        time.sleep(0.05)
    raise AssertionError("USR2 started no new master: " + stderr.read_text()[-2000:])


def stop_orphan(pid: int) -> None:
    """Stop a master that is not our child (its parent, the old master, is gone): TERM, then KILL."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text():
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------- container


def dockerfile() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def image_env() -> dict[str, str]:
    """Return the variables the image's ENV instructions set."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_value(name: str) -> str:
    """Return the arguments of the last instruction called name."""
    return [args for instruction, args in dockerfile() if instruction == name][-1]


def on_this_machine(argv: list[str]) -> list[str]:
    """Return an image command line run from this checkout: /app is the repository, python is this venv's."""
    moved = [arg.replace(IMAGE_CODE_DIR, str(ROOT)) for arg in argv]
    return [str(VENV_BIN / moved[0]) if moved[0] in ("python", "gunicorn") else moved[0], *moved[1:]]


def test_the_build_context_holds_what_the_image_copies_and_nothing_secret() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything stays out unless named
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {args.split()[0].rstrip("/") for instruction, args in dockerfile() if instruction == "COPY"}
    assert copied <= allowed, copied - allowed
    assert not allowed & {"gateway.toml", ".env", ".venv", "tests", "portico-logs.sqlite"}


def test_the_image_runs_as_a_user_who_owns_its_workdir() -> None:
    # The gateway writes its request log (default path: relative) in the WORKDIR; the code in /app stays root's.
    user, workdir = image_value("USER"), image_value("WORKDIR")
    created = [args for instruction, args in dockerfile() if instruction == "RUN" and "useradd" in args]
    assert user not in ("root", "0") and created
    words = shlex.split(created[0])
    assert words[-1] == user and "--create-home" in words and words[words.index("--home-dir") + 1] == workdir
    assert not workdir.startswith(IMAGE_CODE_DIR)


def test_the_image_command_serves_and_keeps_its_request_log_in_the_workdir(tmp_path: Path,
                                                                          fake: FakeProvider) -> None:
    # What `docker run -v ./gateway.toml:/etc/portico/gateway.toml:ro portico` does, without an engine: the CMD with
    # the image's ENV, from its WORKDIR. The gateway file names no [logs] path: the default lands in the WORKDIR.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(fake.url))
    port = free_port()
    env = {key: value.replace(IMAGE_CODE_DIR, str(ROOT)) for key, value in image_env().items()}
    assert env["GATEWAY_BIND"] == "0.0.0.0:8787" and env["GATEWAY_CONFIG"] == "/etc/portico/gateway.toml"
    env = {**os.environ, **env, "GATEWAY_CONFIG": str(config), "GATEWAY_BIND": f"127.0.0.1:{port}",
           "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "4"}
    stderr = tmp_path / "stderr.log"
    cmd = on_this_machine(json.loads(image_value("CMD")))
    healthcheck = on_this_machine(json.loads(image_value("HEALTHCHECK").split("CMD", 1)[1]))
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("wb"))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, stderr)
        assert subprocess.run(healthcheck, cwd=workdir, env=env, timeout=30).returncode == 0
        res = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10,
                           headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@openai-fake"})
        assert res.status_code == 200
    finally:
        stop(proc)
    assert (workdir / "portico-logs.sqlite").exists()
    failed = subprocess.run(healthcheck, cwd=workdir, env=env, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "/healthz" in failed.stderr


def container_engine() -> tuple[str | None, str]:
    """Return a container engine that can build here (docker, else podman), or None and why not."""
    reasons = []
    for name in ("docker", "podman"):
        tool = shutil.which(name)
        if tool is None:
            reasons.append(f"{name} is not installed")
            continue
        probe = subprocess.run([tool, "info"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return tool, ""
        said = (probe.stderr or probe.stdout).strip().splitlines()
        reasons.append(f"`{name} info` failed: {said[-1] if said else probe.returncode}")
    return None, "; ".join(reasons)


def test_the_image_builds_runs_as_non_root_and_reports_healthy(tmp_path: Path) -> None:
    tool, why_not = container_engine()
    if tool is None:
        pytest.skip(f"no container engine to build with: {why_not}")
    tag = f"portico-deploy-test:{os.getpid()}"
    name = f"portico-deploy-test-{os.getpid()}"
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml("http://127.0.0.1:9"))  # keys, so 0.0.0.0 is allowed; no upstream needed
    config.chmod(0o644)
    port = free_port()
    subprocess.run([tool, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)], check=True, timeout=900)
    try:
        subprocess.run([tool, "run", "-d", "--name", name, "--stop-timeout", "40", "-p", f"127.0.0.1:{port}:8787",
                        "-v", f"{config}:/etc/portico/gateway.toml:ro", tag], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            logs = subprocess.run([tool, "logs", name], capture_output=True, text=True).stderr
            raise AssertionError("the container did not answer /healthz: " + logs[-2000:])
        health = ["python", "/app/deploy/healthcheck.py"]
        assert subprocess.run([tool, "exec", name, *health], timeout=30).returncode == 0
        uid = subprocess.run([tool, "exec", name, "id", "-u"], capture_output=True, text=True, timeout=30).stdout
        assert uid.strip() != "0"
    finally:
        subprocess.run([tool, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([tool, "rmi", "-f", tag], capture_output=True, timeout=60)
