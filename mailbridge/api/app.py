"""The HTTP application: API routes behind a key, health and readiness without, metrics behind the platform key."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from mailbridge import __version__
from mailbridge.access.apikeys import is_platform_key
from mailbridge.console import create_console
from mailbridge.wiring import Services

from . import (
    audit,
    chart_notes,
    conversations,
    directory,
    domains,
    mailboxes,
    maillog,
    openapi,
    problems,
    routing,
    suppressions,
    templates,
    unsubscribe,
    webhooks,
)
from .deps import require_api_key, require_platform
from .etag import ETagMiddleware
from .idempotency import IdempotencyMiddleware, document
from .ratelimit import RateLimitMiddleware


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="mailbridge",
        version=__version__,
        description="Email gateway for secure practice messaging: directory sync, conversations, mail logs.",
        # Swagger UI loads its assets from a public CDN and needs no key: off unless the operator
        # turns it on (api_docs). /openapi.json describes the routes, as README does: served openly.
        docs_url="/docs" if getattr(services.settings, "api_docs", False) else None,
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,
    )
    openapi.install(app)
    app.state.services = services
    problems.install(app)
    # Outermost last: the rate limit refuses before anything runs; Idempotency-Key on writes; ETag
    # and 304 on JSON reads. CORS stays off on purpose: the API key never belongs in a browser, so
    # no Access-Control-* header is ever sent and browsers refuse cross-origin calls.
    app.add_middleware(ETagMiddleware)
    app.add_middleware(IdempotencyMiddleware, services=services)
    document(app)  # the Idempotency-Key header in /openapi.json
    settings = services.settings
    app.add_middleware(RateLimitMiddleware, rate=settings.api_rate_limit, burst=settings.api_rate_limit_burst)
    secured = [Depends(require_api_key)]
    app.include_router(directory.router, dependencies=secured)
    app.include_router(conversations.router, dependencies=secured)
    app.include_router(maillog.router, dependencies=secured)
    app.include_router(routing.router, dependencies=secured)
    app.include_router(mailboxes.router, dependencies=secured)
    app.include_router(suppressions.router, dependencies=secured)
    app.include_router(domains.router, dependencies=secured)
    app.include_router(domains.platform_router, dependencies=[Depends(require_platform)])
    app.include_router(chart_notes.router, dependencies=secured)
    app.include_router(audit.router, dependencies=secured)
    app.include_router(webhooks.practice_router, dependencies=secured)
    app.include_router(webhooks.platform_router, dependencies=[Depends(require_platform)])
    if services.settings.console_enabled:
        app.mount("/console", create_console(services))  # its own sessions, never the API key
    app.include_router(templates.router, dependencies=secured)
    app.include_router(unsubscribe.api_router, dependencies=secured)
    # /u/{token}: the one-click unsubscribe of notifications (RFC 8058), reached by mail clients
    # without any key; the signed token is the credential.
    app.include_router(unsubscribe.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. No key."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> Response:
        """No key (load balancers and orchestrators probe it): booleans, the outbox lag in seconds,
        counts and an error class name; nothing about practices, people or mail. With the platform
        key, the details an operator acts on (which practices this node cannot sign for)."""
        from mailbridge.observability import public_readiness, readiness

        checks = readiness(services)
        status = 200 if all(c["ok"] for c in checks.values()) else 503
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        operator = scheme.lower() == "bearer" and is_platform_key(given.strip(), services.settings.api_key)
        shown = checks if operator else public_readiness(checks)
        return JSONResponse({"ready": status == 200, "checks": shown}, status_code=status)

    @app.get("/metrics", tags=["ops"], dependencies=[Depends(require_platform)])
    def metrics() -> Response:
        """Prometheus metrics (text format). The platform key only."""
        from mailbridge.observability import render_metrics

        body, content_type = render_metrics(services)
        return Response(body, media_type=content_type)

    return app
