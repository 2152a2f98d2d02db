"""The FastAPI app, and the Lambda handler that serves it through Mangum."""

from __future__ import annotations

from fastapi import FastAPI
from mangum import Mangum
from starlette.types import ASGIApp, Receive, Scope, Send

from callcore.adapters.aws_errors import request_deadline
from callcore.bootstrap import WORST_CALL_S, Ports, default_ports
from callcore.metrics import FunctionMetrics
from callcore.settings import INGEST_TIMEOUT_S
from ingest import console, docs, errors
from ingest.routes import router
from ingest.schemas import HealthOut


class JsonBodies:
    """Read every request body as JSON, whatever its Content-Type says.

    The API takes only JSON; a PBX or a `curl -d` that labels it form data or text
    would otherwise get a confusing "not a dictionary" error instead of being served.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class FlushMetrics:
    """One EMF line per request, written before the Lambda invocation returns (Mangum awaits
    the whole app), with what the request counted."""

    def __init__(self, app: ASGIApp, metrics: FunctionMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.metrics.flush()


class Deadline:
    """Bound every request by the ingest function's timeout, less a margin to answer in."""

    BUDGET_S = INGEST_TIMEOUT_S - 0.5

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The context is copied into the threadpool that runs the routes' SDK calls.
        with request_deadline(self.BUDGET_S, WORST_CALL_S):
            await self.app(scope, receive, send)


def create_app(ports: Ports, metrics: FunctionMetrics | None = None) -> FastAPI:
    app = FastAPI(
        title="PBX AI Call Processor",
        version="1.0.0",
        description=(
            "A PBX streams audio packets of unanswered calls; ended calls are transcribed and scored "
            "by AI, asynchronously. Duplicated, reordered and concurrent packets are normal traffic."
        ),
        # FastAPI's pages load Swagger UI and ReDoc from a CDN; docs.install serves them itself.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ports = ports
    app.state.metrics = metrics or FunctionMetrics("IngestFunction")
    app.add_middleware(FlushMetrics, metrics=app.state.metrics)
    app.add_middleware(JsonBodies)
    app.add_middleware(Deadline)
    errors.install(app)  # after the middleware above: its InternalErrors must be the outermost
    docs.install(app)
    console.install(app)
    app.include_router(router)

    @app.get("/healthz", response_model=HealthOut, summary="Liveness: the process is up (dependencies are not checked)")
    def healthz() -> HealthOut:
        return HealthOut(status="ok")

    return app


# Built at import, once per Lambda sandbox (or uvicorn process); warm invocations reuse it.
app = create_app(default_ports())
handler = Mangum(app, lifespan="off")
