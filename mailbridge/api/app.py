"""The HTTP application: API routes behind the bearer key, plus health, readiness and metrics."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse

from mailbridge import __version__
from mailbridge.wiring import Services

from . import conversations, directory, mailboxes, maillog, problems, routing, templates, unsubscribe
from .deps import require_api_key


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="mailbridge",
        version=__version__,
        description="Email gateway for secure practice messaging: directory sync, conversations, mail logs.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    problems.install(app)
    secured = [Depends(require_api_key)]
    app.include_router(directory.router, dependencies=secured)
    app.include_router(conversations.router, dependencies=secured)
    app.include_router(maillog.router, dependencies=secured)
    app.include_router(routing.router, dependencies=secured)
    app.include_router(mailboxes.router, dependencies=secured)
    app.include_router(templates.router, dependencies=secured)
    app.include_router(unsubscribe.api_router, dependencies=secured)
    # /u/{token}: the one-click unsubscribe of notifications (RFC 8058), reached by mail clients
    # without any key; the signed token is the credential.
    app.include_router(unsubscribe.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], dependencies=secured)
    def readyz() -> Response:
        from mailbridge.observability import readiness

        checks = readiness(services)
        status = 200 if all(c["ok"] for c in checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    @app.get("/metrics", tags=["ops"], dependencies=secured)
    def metrics() -> Response:
        from mailbridge.observability import render_metrics

        body, content_type = render_metrics(services)
        return Response(body, media_type=content_type)

    return app
