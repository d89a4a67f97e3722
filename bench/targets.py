"""The two gunicorn targets: the Flask floor (bench/floor_app.py) and Portico itself (gunicorn.conf.py)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from app.metrics import MULTIPROC_ENV
from app.settings import hash_key
from bench.procs import LOOPBACK, Proc, Procs, free_port, pinned, wait_http

ROOT = Path(__file__).resolve().parents[1]
BENCH_KEY = "pk-bench-not-a-secret"


@dataclass
class Server:
    """A running gunicorn: its name, port and master process."""

    name: str
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:54321."""
        return f"http://{LOOPBACK}:{self.port}"


def gateway_toml(workdir: Path, observe: str | None = None) -> str:
    """Return the benchmark's gateway file: one key (auth on), loopback custom hosts, then `observe`.

    `observe` holds the [logs] (and [metrics]) tables; by default a request log in workdir.
    """
    if observe is None:
        observe = f'[logs]\npath = "{workdir / "portico-logs.sqlite"}"\n'
    return f"""[[keys]]
name = "bench"
sha256 = "{hash_key(BENCH_KEY)}"

[custom_hosts]
allow = ["127.0.0.1"]

{observe}"""


def portico_headers(upstream_url: str) -> dict[str, str]:
    """Return the headers a client sends to reach upstream_url through Portico as an OpenAI custom host."""
    return {"x-portkey-api-key": BENCH_KEY, "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"{upstream_url}/v1", "Authorization": "Bearer x"}


def _env(workers: int, threads: int, extra: dict[str, str]) -> dict[str, str]:
    # Each gateway gets its own metrics dir from gunicorn.conf.py: an inherited one would be shared (and wiped).
    inherited = {name: value for name, value in os.environ.items() if name != MULTIPROC_ENV}
    return {**inherited, "GATEWAY_WORKERS": str(workers), "GATEWAY_THREADS": str(threads), **extra}


def start_floor(procs: Procs, workdir: Path, upstream_url: str, workers: int, threads: int,
                cpus: str | None) -> Server:
    """Start the floor app under gunicorn with Portico's worker class, workers, threads and keep-alive."""
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers),
           "--threads", str(threads), "--keep-alive", "75", "--worker-connections", "1000",
           "--bind", f"{LOOPBACK}:{port}", "--error-logfile", "-", "bench.floor_app:app"]
    env = _env(workers, threads, {"FLOOR_UPSTREAM": upstream_url})
    proc = procs.start("floor", pinned(cmd, cpus), env=env, cwd=ROOT, stderr=workdir / "floor.stderr")
    wait_http(proc, port, "/healthz")
    return Server("floor", port, proc)


def start_portico(procs: Procs, workdir: Path, workers: int, threads: int, cpus: str | None,
                  name: str = "portico", observe: str | None = None) -> Server:
    """Start the real gateway (gunicorn -c gunicorn.conf.py) with a gateway file written to workdir."""
    port = free_port()
    config = workdir / f"{name}.gateway.toml"
    config.write_text(gateway_toml(workdir, observe))
    env = _env(workers, threads, {"GATEWAY_CONFIG": str(config), "GATEWAY_BIND": f"{LOOPBACK}:{port}"})
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
    # Access lines (one JSON line per call) go to a file, as they would to a log collector.
    proc = procs.start(name, pinned(cmd, cpus), env=env, cwd=ROOT, stdout=workdir / f"{name}.access.log",
                       stderr=workdir / f"{name}.stderr")
    wait_http(proc, port, "/healthz")
    return Server(name, port, proc)
