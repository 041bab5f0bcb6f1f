"""``orchestrator serve``: wire the service, the scheduler and the HTTP server together, and stop cleanly.

uvicorn runs the HTTP server in the main thread; SIGTERM/SIGINT make it shut down (uvicorn would re-raise the
signal afterwards and the process would die of it, so ``_Server`` only asks it to exit). Then the service's
``stopping`` flag makes jobs start nothing new, and a running job gets ``GRACE_S`` to finish (its advisory
locks are released on the way out) before the process exits 0; past that (a job that cannot end, a database
that stopped answering) the process leaves anyway, logging it at error, and PostgreSQL releases its locks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import logs
from orchestrator.daemon import http
from orchestrator.daemon.service import Service


class _Server(uvicorn.Server):
    stopping: threading.Event | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.stopping is not None:
            self.stopping.set()  # at once: jobs start nothing new while the server drains its requests
        super().handle_exit(sig, frame)

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


GRACE_S = 25.0
"""How long a running job may take to finish after SIGTERM: below Kubernetes' default 30 s grace period."""


def serve(
    service: Service,
    *,
    interval_s: float,
    host: str,
    port: int,
    api_token: str | None,
    grace_s: float = GRACE_S,
    drift_interval_s: float = 0.0,
) -> int:
    logs.configure()
    logs.capture_stdlib()
    service.log = logs.get("daemon")
    service.events.log = logs.get("run")
    scheduler = BackgroundScheduler()
    service.scheduler = scheduler  # ops-triggered rollouts run as its jobs
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
    if drift_interval_s > 0:  # its own interval: a catalog read of every tenant costs more than a tenant pass
        scheduler.add_job(
            service.drift_job,
            "interval",
            seconds=drift_interval_s,
            id="drift",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),
        )
    scheduler.start()
    service.log.info(
        "serve.start",
        listen=f"{host}:{port}",
        interval_s=interval_s,
        drift_interval_s=drift_interval_s,
        state=service.state_kind,
    )
    try:
        config = uvicorn.Config(
            http.app(service, api_token),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            log_config=None,  # uvicorn's messages go through logs.capture_stdlib's JSON handler
            timeout_graceful_shutdown=5,  # a request still waiting (a rollout's tenant check) does not hold the exit
        )
        server = _Server(config)
        server.stopping = service.stopping
        server.run()
    finally:
        service.stopping.set()
        scheduler.shutdown(wait=False)
        if not service.close_when_idle(timeout=grace_s):
            # A job still running after the grace period (a migration that will not end, a database that does
            # not answer): leave now, before the kubelet's SIGKILL; PostgreSQL releases the session's locks.
            service.log.error("serve.stop_forced", grace_s=grace_s, reason="a job was still running")
            sys.stderr.flush()
            os._exit(0)
        service.log.info("serve.stop")
    return 0
