"""The HTTP API: its routes assembled (messages and jobs in ``api.routes``; the fleet, the caller
and the probes here). Every route reads or sends work; none drains, quarantines, restores or
injects (those stay on the operators' signed channel, which this process cannot sign for).

Errors have one shape (``ErrorBody``): a status, a reason code, a sentence, and for a refused
submission the reason of each input refused.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.keys import ApiKey
from api.metrics import ApiMetrics
from api.routes.common import ApiError, Door, ErrorBody, FleetOut, KeyOut, ProblemOut, errors
from api.routes.jobs import jobs_router
from api.routes.messages import messages_router
from api.service import ApiService


def create_api(service: ApiService) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await asyncio.to_thread(service.stop)  # after in-flight requests are answered

    api = FastAPI(title="host", version="1", summary="Send work to a host fleet and follow it.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    door = Door(service)

    _error_handlers(api)
    api.include_router(messages_router(door))
    api.include_router(jobs_router(door))
    _fleet_routes(api, door)
    _probe_routes(api, service)
    api.add_middleware(Metered, metrics=service.metrics)
    return api


def _error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = ErrorBody(error=exc.error, detail=exc.detail,
                         problems=[ProblemOut(index=p.index, ref=p.ref, reason=p.reason,
                                              detail=p.detail) for p in exc.problems])
        return JSONResponse(body.model_dump(), exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(ErrorBody(error="invalid_request", detail=detail).model_dump(), 422)


def _fleet_routes(api: FastAPI, door: Door) -> None:
    service = door.service

    @api.get("/v1/fleet", response_model=FleetOut, tags=["fleet"], operation_id="fleet",
             responses=errors(503))
    async def fleet(key: Annotated[ApiKey, Depends(door.allowed("read"))]) -> dict[str, Any]:
        """Workers by state, healthy consumers per queue, backlog: whether to send now."""
        summary: dict[str, Any] = await door.store_call(service.fleet)
        return summary

    @api.get("/v1/key", response_model=KeyOut, tags=["keys"], operation_id="whoami",
             responses=errors(503))
    async def whoami(key: Annotated[ApiKey, Depends(door.allowed(""))]) -> dict[str, Any]:
        """The calling key: its scopes, its rate, and what it sent by outcome."""
        counts = await door.store_call(service.stores.keys.counts, key.id)
        return {"id": key.id, "name": key.name, "scopes": list(key.scopes),
                "rate": key.rate or service.settings.api_rate, "counts": counts}


def _probe_routes(api: FastAPI, service: ApiService) -> None:
    @api.get("/healthz", tags=["probes"], operation_id="healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["probes"], operation_id="readyz",
             responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """The broker, the store and the dispatcher answer: send traffic here."""
        problems = service.problems()
        if problems:
            return JSONResponse(ErrorBody(error="not_ready", detail="; ".join(problems))
                                .model_dump(), 503)
        return JSONResponse({"status": "ready"})

    @api.get("/metrics", tags=["probes"], response_class=Response, operation_id="metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        """Prometheus metrics of this API process."""
        m = service.metrics
        m.unanswered.set(service.dispatcher.unanswered)
        m.unsent.set(service.dispatcher.unsent)
        for queue, depth in service.backlog.depth.items():
            m.backlog.labels(queue).set(depth)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


class Metered:
    """ASGI middleware: the API's request metrics (``ApiMetrics.middleware``)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.inner = metrics.middleware(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.inner(scope, receive, send)
