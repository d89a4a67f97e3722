"""gunicorn settings for Portico: threaded workers (gthread), bound from GATEWAY_* variables."""

from __future__ import annotations

import os
import sys

from app.metrics import mark_worker_dead, prepare_multiprocess_dir
from app.settings import SettingsError, check_start, load_settings

try:
    _settings = load_settings()
    _warning = check_start(_settings)
except SettingsError as err:
    # One line that names the file, the key and the problem; no traceback.
    print(f"portico: {err}", file=sys.stderr)
    sys.exit(1)

# Before anything imports prometheus_client: workers then share counters through files in this dir.
prepare_multiprocess_dir(os.environ)

wsgi_app = "app.wsgi:app"
bind = [_settings.bind]
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
loglevel = _settings.log_level
keepalive = 75          # behind nginx/ALBs, idle client connections are reused for a while
timeout = 120           # the worker heartbeat; long streams run in threads and do not block it
graceful_timeout = 30
worker_connections = 1000
accesslog = None        # the app writes one JSON access line per call itself
errorlog = "-"
control_socket_disable = True  # one shared default path would clash between gateways on one machine


def on_starting(server):  # type: ignore[no-untyped-def]
    """Say once, at start-up, that the gateway runs open (no keys) on loopback."""
    if _warning:
        server.log.warning(_warning)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Drop a dead worker's share of the in-flight gauge; its counters stay."""
    mark_worker_dead(worker.pid)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Write the worker's last request-log records before it goes (graceful shutdown loses none)."""
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("portico")
    if gateway is not None:
        gateway.close()
