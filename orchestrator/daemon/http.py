"""The daemon's HTTP API (Starlette, served by uvicorn): health, readiness, metrics, status, rollouts, a page.

Mutating endpoints need ``Authorization: Bearer <token>``; the token comes from ORCHESTRATOR_API_TOKEN or a
token file and is compared in constant time. With no token configured they answer 403: a daemon started
without one cannot be steered over the network at all.
"""

from __future__ import annotations

import hmac
import json
import time

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from orchestrator import db
from orchestrator.daemon import page as status_page
from orchestrator.daemon.rollouts import BadRollout
from orchestrator.daemon.service import Service
from orchestrator.errors import OrchestratorError


def app(service: Service, token: str | None) -> Starlette:
    async def startupz(_: Request) -> Response:
        reason = service.startup_reason()
        return JSONResponse({"started": reason is None, "reason": reason}, status_code=200 if reason is None else 503)

    async def readyz(_: Request) -> Response:
        reason = service.ready_reason()
        return JSONResponse({"ready": reason is None, "reason": reason}, status_code=200 if reason is None else 503)

    async def healthz(_: Request) -> Response:
        stuck = service.stuck()
        if stuck is not None:
            return JSONResponse({"status": "stuck", "reason": stuck}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def status(_: Request) -> Response:
        return JSONResponse(service.status())

    async def create_rollout(request: Request) -> Response:
        denied = _authorize(request, token)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return JSONResponse({"error": f"the body is not JSON: {exc}"}, status_code=400)
        try:
            record = await run_in_threadpool(service.start_rollout, body)  # tenant names are checked in the database
        except BadRollout as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (OrchestratorError, psycopg.Error) as exc:
            return JSONResponse({"error": f"cannot check the tenants now: {db.redact(str(exc))}"}, status_code=503)
        return JSONResponse({"id": record.id, "status": record.status}, status_code=202)

    async def list_rollouts(_: Request) -> Response:
        return JSONResponse({"rollouts": [r.as_dict(full=False) for r in service.rollouts.recent()]})

    async def get_rollout(request: Request) -> Response:
        record = service.rollouts.get(request.path_params["id"])
        if record is None:
            return JSONResponse({"error": "no such rollout"}, status_code=404)
        return JSONResponse(record.as_dict())

    async def page(_: Request) -> Response:
        return HTMLResponse(status_page.render(service.status(), time.time()))

    return Starlette(
        routes=[
            Route("/", page),
            Route("/startupz", startupz),
            Route("/readyz", readyz),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/status", status),
            Route("/rollouts", create_rollout, methods=["POST"]),
            Route("/rollouts", list_rollouts, methods=["GET"]),
            Route("/rollouts/{id}", get_rollout),
        ]
    )


def _authorize(request: Request, token: str | None) -> Response | None:
    if not token:
        return JSONResponse({"error": "no API token is configured; mutating endpoints are disabled"}, status_code=403)
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
    return None
