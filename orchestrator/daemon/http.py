"""The daemon's HTTP API (Starlette, served by uvicorn): health, readiness, metrics, status, rollouts, a page.

Mutating endpoints need ``Authorization: Bearer <token>``; the token comes from ORCHESTRATOR_API_TOKEN or a
token file and is compared in constant time. With no token configured they answer 403: a daemon started
without one cannot be steered over the network at all.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from orchestrator.daemon import page as status_page
from orchestrator.daemon.service import Service


def app(service: Service, token: str | None) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def status(_: Request) -> Response:
        return JSONResponse(service.status())

    async def create_rollout(request: Request) -> Response:
        denied = _authorize(request, token)
        if denied is not None:
            return denied
        try:
            body: dict[str, Any] = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        tenants = body.get("tenants")
        if not isinstance(body, dict) or (tenants is not None and not isinstance(tenants, list)):
            return JSONResponse({"error": "expected {repo?, tenants?: [names], dry_run?}"}, status_code=400)
        record = service.start_rollout(body.get("repo"), tenants, bool(body.get("dry_run", False)))
        return JSONResponse({"id": record.id, "status": record.status}, status_code=202)

    async def get_rollout(request: Request) -> Response:
        record = service.rollouts.get(request.path_params["id"])
        if record is None:
            return JSONResponse({"error": "no such rollout"}, status_code=404)
        return JSONResponse(vars(record))

    async def page(_: Request) -> Response:
        return HTMLResponse(status_page.render(service.status(), time.time()))

    return Starlette(
        routes=[
            Route("/", page),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/status", status),
            Route("/rollouts", create_rollout, methods=["POST"]),
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
