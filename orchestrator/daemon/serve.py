"""``orchestrator serve``: wire the service, the scheduler and the HTTP server together, and stop cleanly.

uvicorn runs the HTTP server in the main thread; SIGTERM/SIGINT make it shut down (uvicorn would re-raise the
signal afterwards and the process would die of it, so ``_Server`` only asks it to exit). Then the service's
``stopping`` flag makes jobs start nothing new, and ``scheduler.shutdown(wait=True)`` lets a running migration
finish (its advisory lock is released on the way out) before the process exits 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import logs
from orchestrator.daemon import http
from orchestrator.daemon.service import Service


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def token(token_file: Path | None) -> str | None:
    """The API token: the token file's content, else ORCHESTRATOR_API_TOKEN; None disables mutating endpoints."""
    if token_file is not None:
        return token_file.read_text().strip() or None
    return os.environ.get("ORCHESTRATOR_API_TOKEN") or None


def serve(service: Service, *, interval_s: float, host: str, port: int, api_token: str | None) -> int:
    logs.configure()
    logs.capture_stdlib()
    service.log = logs.get("daemon")
    service.events.log = logs.get("run")
    scheduler = BackgroundScheduler()
    for job, name in ((service.reconcile_job, "reconcile"), (service.tenants_job, "tenants")):
        scheduler.add_job(
            job,
            "interval",
            seconds=interval_s,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),
        )
    scheduler.start()
    service.log.info("serve.start", listen=f"{host}:{port}", interval_s=interval_s, state=service.state_kind)
    try:
        config = uvicorn.Config(
            http.app(service, api_token),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            log_config=None,  # uvicorn's messages go through logs.capture_stdlib's JSON handler
        )
        _Server(config).run()
    finally:
        service.stopping.set()
        scheduler.shutdown(wait=True)
        service.close()
        service.log.info("serve.stop")
    return 0
