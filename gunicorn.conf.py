"""gunicorn settings for Portico: threaded workers (gthread, as PorticoWorker), bound from GATEWAY_* variables."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import replace

from app.governance.stores import has_managed_keys
from app.metrics import mark_worker_dead, prepare_multiprocess_dir
from app.settings import (
    Settings,
    SettingsError,
    adopt,
    adopted,
    check_logs_path,
    check_start,
    check_state,
    load_settings,
)

# gunicorn reads this file again on HUP, with workers serving: only the master's first read may refuse an
# unusable request-log file; later a bad [logs] path only degrades the log (docs/security.md).
_FIRST_READ = os.environ.get("PORTICO_MASTER_PID") != str(os.getpid())
os.environ["PORTICO_MASTER_PID"] = str(os.getpid())


def _read_settings() -> Settings:
    """Read and check the gateway file; on a HUP re-read, keep the running settings if it is bad.

    A SystemExit here would stop the master, so only the first read may stop: later, one error line and the
    last good settings, which the new workers take too (docs/gateway-file.md, Reloading).
    """
    running = None if _FIRST_READ else adopted()
    try:
        settings = load_settings()
        if running is None:
            check_logs_path(settings)
            check_state(settings)  # before check_start: keys managed in the store make the gateway closed
        # GATEWAY_BIND, before binding; when_ready checks what was really bound
        check_start(settings, managed_keys=has_managed_keys(settings.state_backend, settings.state_path))
    except SettingsError as err:
        if running is None:
            # One line that names the file, the key and the problem; no traceback.
            print(f"portico: {err}", file=sys.stderr)
            sys.exit(1)
        logging.getLogger("gunicorn.error").error("portico: reload refused, keeping the running settings: %s", err)
        return running
    except Exception as err:  # a bug must not take a serving gateway down on HUP either
        if running is None:
            raise
        logging.getLogger("gunicorn.error").error(
            "portico: reload failed, keeping the running settings: %s: %s", type(err).__name__, err)
        return running
    adopt(settings)  # the workers forked from now on build their app from these (app/wsgi.py)
    return settings


_settings = _read_settings()
if _FIRST_READ:
    # Made once the file is accepted (a refused start leaves nothing behind): a directory the workers of this
    # master share, for the host-wide response cache (docs/cache.md). on_exit removes it; a HUP keeps it.
    os.environ["PORTICO_RUN_DIR"] = tempfile.mkdtemp(prefix="portico-run-")
    _settings = replace(_settings, run_dir=os.environ["PORTICO_RUN_DIR"])
    adopt(_settings)

# Before anything imports prometheus_client: workers then share counters through files in this dir.
prepare_multiprocess_dir(os.environ)

from app.server.listeners import bound_addresses  # noqa: E402 - after the metrics dir is set
from app.server.worker import CUT_MARGIN_S  # noqa: E402

wsgi_app = "app.wsgi:app"
bind = [_settings.bind]
# gthread, with request heads read on the poller and client read deadlines (docs/deploy.md, Slow clients).
worker_class = "app.server.worker.PorticoWorker"
workers = _settings.workers
threads = _settings.threads
loglevel = _settings.log_level
keepalive = 75          # behind nginx/ALBs, idle client connections are reused for a while
timeout = 120           # the worker heartbeat; long streams run in threads and do not block it
# The master kills a stopping worker here; the worker cuts (and records) what is still in flight
# CUT_MARGIN_S earlier, so calls get GATEWAY_GRACEFUL_TIMEOUT (docs/deploy.md, Shutdown).
graceful_timeout = _settings.graceful_timeout_s + CUT_MARGIN_S
worker_connections = 1000
accesslog = None        # the app writes one JSON access line per call itself
errorlog = "-"
control_socket_disable = True  # one shared default path would clash between gateways on one machine


def when_ready(server):  # type: ignore[no-untyped-def]
    """Check the sockets really bound: no keys and any non-loopback one stops the master; else warn if open."""
    try:
        managed = has_managed_keys(_settings.state_backend, _settings.state_path)
        warning = check_start(_settings, bound_addresses(server.LISTENERS, server.cfg.address), managed_keys=managed)
    except SettingsError as err:
        server.log.error("portico: %s", err)
        server.halt(exit_status=1)
    if warning:
        server.log.warning(warning)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the run directory (the host-wide cache file) when the master stops."""
    shutil.rmtree(os.environ.get("PORTICO_RUN_DIR", ""), ignore_errors=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Drop a dead worker's share of the in-flight gauge; its counters stay."""
    mark_worker_dead(worker.pid)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Write the worker's last request-log records before it goes (graceful shutdown loses none)."""
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("portico")
    if gateway is not None:
        gateway.close()
    exit_if_cut = getattr(worker, "exit_if_cut", None)
    if exit_if_cut is not None:
        exit_if_cut()  # last: threads of cut calls must not hold the process until the master's SIGKILL
