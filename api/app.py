"""The HTTP API's routes: submit messages and read their outcomes, run jobs from uploads, read
the fleet's summary. Every route reads or sends work; none drains, quarantines, restores or
injects (those stay on the operators' signed channel, which this process cannot sign for).

Errors have one shape (``ErrorBody``): a status, a reason code, a sentence, and for a refused
submission the reason of each input refused.
"""


import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api.dispatch import Submission, Unavailable
from api.inputs import CONTENT_TYPES, Accepted, BadBody, Problem, check, read_inputs
from api.jobs import UploadTooLarge
from api.keys import ApiKey
from api.metrics import ApiMetrics
from api.service import ApiService
from broker_config import keys
from producer import jobs
from producer.feed import BROKEN
from workers.inbound import FORMATS

IDEMPOTENCY_KEEP_S = 86_400
#: One message of a JSON body, as the schema documents it.
_TEXT = {"type": "string", "minLength": 1, "maxLength": 10_000, "pattern": r"\S"}
MESSAGE: dict[str, Any] = {"oneOf": [
    {"title": "host's own", "type": "object", "required": ["text"],
     "properties": {"text": _TEXT, "ref": {"type": "string", "maxLength": 200}}},
    {"title": "Twitter v2", "type": "object", "required": ["data"], "properties": {"data": {
        "type": "object", "required": ["id", "text"],
        "properties": {"id": {"type": "string", "minLength": 1}, "text": _TEXT}}}},
    {"title": "Twitter v1.1", "type": "object", "required": ["id_str", "text"],
     "properties": {"id_str": {"type": "string", "minLength": 1}, "text": _TEXT}}]}
#: Requests larger than this are parsed off the event loop.
PARSE_INLINE_BYTES = 65_536


class ProblemOut(BaseModel):
    index: int
    ref: str
    reason: str
    detail: str


class ErrorBody(BaseModel):
    error: str
    detail: str
    problems: list[ProblemOut] = []


class MessageOut(BaseModel):
    id: str
    ref: str
    status: Literal["pending", "analysed", "rejected", "failed"]
    result: dict[str, Any] | None = None
    accepted_at: float
    answered_at: float | None = None


class SubmitOut(BaseModel):
    accepted: int
    messages: list[MessageOut]


class FleetOut(BaseModel):
    workers: dict[str, int]
    healthy_consumers: dict[str, int]
    backlog: dict[str, int]
    accepting: bool


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    rate: float
    counts: dict[str, int]


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 problems: list[Problem] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers, self.problems = headers or {}, problems or []


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (401, 403, 422, 429, *codes)}


def create_api(service: ApiService) -> FastAPI:
    s = service.settings
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await asyncio.to_thread(service.stop)  # after in-flight requests are answered

    api = FastAPI(title="host", version="1", summary="Send work to a host fleet and follow it.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    bearer = HTTPBearer(auto_error=False, description="An API key: hk_<id>_<secret>")

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

    def allowed(scope: str) -> Callable[..., Awaitable[ApiKey]]:
        async def caller(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                         ) -> ApiKey:
            if creds and not service.keyring.knows(creds.credentials):
                await service.refresh_keys_soon()  # a key added a moment ago works at once
            key = service.keyring.who(creds.credentials) if creds else None
            if key is None:
                raise ApiError(401, "unauthorized", "a valid API key is needed (Authorization: "
                               "Bearer hk_...)", {"WWW-Authenticate": "Bearer"})
            if scope and scope not in key.scopes:
                raise ApiError(403, "forbidden", f"this key has no '{scope}' scope")
            wait = service.limiter.take(key.id, key.rate or s.api_rate, time.monotonic())
            if wait:
                raise ApiError(429, "rate_limited", f"over this key's {key.rate or s.api_rate}/s",
                               {"Retry-After": str(math.ceil(wait))})
            return key
        return caller

    async def body_of(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, "body_too_large", f"the body is over {limit} bytes",
                           {"Connection": "close"})
        body = bytearray()
        try:
            async with asyncio.timeout(s.api_body_timeout):
                async for piece in request.stream():
                    body += piece
                    if len(body) > limit:
                        raise ApiError(413, "body_too_large", f"the body is over {limit} bytes",
                                       {"Connection": "close"})
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the body took over {s.api_body_timeout}s",
                           {"Connection": "close"}) from None
        return bytes(body)

    def format_of(request: Request) -> str:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in CONTENT_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"send one of {', '.join(CONTENT_TYPES)} (got {media or 'none'})")
        return CONTENT_TYPES[media]

    # --- messages ------------------------------------------------------------------------

    @api.post("/v1/messages", status_code=202, response_model=SubmitOut, tags=["messages"],
              operation_id="submit_messages",
              responses={200: {"model": SubmitOut, "description": "every message answered"},
                         202: {"model": SubmitOut, "description": "accepted", "links": {
                             "ReadMessage": {"operationId": "read_message", "parameters": {
                                 "message_id": "$response.body#/messages/0/id"}}}},
                         **_errors(400, 408, 409, 413, 415, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"oneOf": [
                      MESSAGE, {"type": "array", "items": MESSAGE, "minItems": 1}]}},
                  "application/x-ndjson": {"schema": {"type": "string"}},
                  "text/plain": {"schema": {"type": "string"}},
                  "text/tab-separated-values": {"schema": {"type": "string"}}}}})
    async def submit(request: Request,
                     key: Annotated[ApiKey, Depends(allowed("submit"))],
                     wait: Annotated[float, Query(ge=0.0, le=s.api_wait_max,
                                                  description="Seconds to wait for the analysis")
                                     ] = 0.0,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                     ) -> Response:
        """Submit one message or many. Answers 202 with their ids at once, or with ``wait``,
        200 with every outcome (202 with those still pending when the wait ends)."""
        fmt = format_of(request)
        if service.backlog_full():
            raise ApiError(503, "backlog_full", "the fleet is behind: try again later",
                           {"Retry-After": "2"})
        body = await body_of(request, s.api_max_body)
        fingerprint = hashlib.sha256(fmt.encode() + b"\0" + body).hexdigest()
        if idempotency_key is not None:
            replay = await asyncio.to_thread(claim, key.id, idempotency_key, fingerprint)
            if replay is not None:
                return JSONResponse(replay, 202, headers={"Idempotent-Replayed": "true"})
        try:
            accepted = await parse(body, fmt, key)
            sub = Submission(key.id, accepted.entries, accepted.envelopes,
                             asyncio.get_running_loop())
            service.dispatcher.submit(sub)
            try:
                await sub.sent
            except Unavailable as exc:
                raise ApiError(503, "unavailable", str(exc), {"Retry-After": "2"}) from None
        except BaseException:
            if idempotency_key is not None:
                await asyncio.to_thread(release, key.id, idempotency_key)
            raise
        out = {"accepted": len(sub.entries), "messages": [_out(e) for e in sub.entries]}
        if idempotency_key is not None:
            await asyncio.to_thread(remember, key.id, idempotency_key, fingerprint, out)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sub.done), wait)
            out["messages"] = [_out({**e, "answered_at": sub.answered_at.get(e["id"])},
                                    sub.records.get(e["id"])) for e in sub.entries]
            if sub.done.done():
                return JSONResponse(out, 200)
        return JSONResponse(out, 202)

    async def parse(body: bytes, fmt: str, key: ApiKey) -> Accepted:
        def run() -> Accepted | list[Problem]:
            inputs = read_inputs(body, fmt)
            if not inputs:
                raise ApiError(422, "no_messages", "the body holds no message")
            if len(inputs) > s.api_max_messages:
                raise ApiError(422, "too_many_messages",
                               f"{len(inputs)} messages > {s.api_max_messages} in one request")
            return check(inputs, service.limits, key.id, time.time())
        try:
            result = await asyncio.to_thread(run) if len(body) > PARSE_INLINE_BYTES else run()
        except BadBody as exc:
            raise ApiError(400, exc.code, exc.detail) from None
        if isinstance(result, list):
            refused: dict[str, int] = {}
            for p in result:
                service.metrics.tally(key.id, f"refused:{p.reason}", 1)
                refused[f"refused:{p.reason}"] = refused.get(f"refused:{p.reason}", 0) + 1
            with contextlib.suppress(*BROKEN, redis.RedisError):  # the key's own view
                await asyncio.to_thread(service.stores.keys.count, {key.id: refused})
            raise ApiError(422, "inputs_refused", f"{len(result)} input(s) refused: nothing was "
                           "accepted", problems=result)
        return result

    def claim(key_id: str, idem: str, fingerprint: str) -> dict[str, Any] | None:
        name = keys.api_idempotency(key_id, idem)
        client = service.stores.client
        if client.set(name, json.dumps({"fingerprint": fingerprint}), nx=True,
                      ex=IDEMPOTENCY_KEEP_S):
            return None
        seen = json.loads(client.get(name) or "{}")
        if seen.get("fingerprint") != fingerprint:
            raise ApiError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used for another body")
        if "response" not in seen:
            raise ApiError(409, "in_progress", "a request with this Idempotency-Key is being "
                           "answered", {"Retry-After": "1"})
        response: dict[str, Any] = seen["response"]
        return response

    def remember(key_id: str, idem: str, fingerprint: str, out: dict[str, Any]) -> None:
        with contextlib.suppress(*BROKEN, redis.RedisError):
            service.stores.client.set(keys.api_idempotency(key_id, idem), json.dumps(
                {"fingerprint": fingerprint, "response": out}), ex=IDEMPOTENCY_KEEP_S)

    def release(key_id: str, idem: str) -> None:
        with contextlib.suppress(*BROKEN, redis.RedisError):
            service.stores.client.delete(keys.api_idempotency(key_id, idem))

    @api.get("/v1/messages/{message_id}", response_model=MessageOut, tags=["messages"],
             operation_id="read_message",
             responses=_errors(404, 503))
    async def message(message_id: Annotated[str, Path(max_length=64)],
                      key: Annotated[ApiKey, Depends(allowed("read"))]) -> dict[str, Any]:
        """A message's outcome: analysed (its scores), rejected (its dead-letter reason),
        failed, or still pending."""
        entry = await store_call(service.message, message_id)
        if entry is None or entry.get("key") != key.id:
            raise ApiError(404, "not_found", f"no message {message_id} sent with this key")
        return _out(entry, entry.get("result"))

    async def store_call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (*BROKEN, redis.RedisError) as exc:
            raise ApiError(503, "store_unavailable", f"the store does not answer: {exc}",
                           {"Retry-After": "2"}) from None

    # --- jobs ------------------------------------------------------------------------------

    @api.post("/v1/jobs", status_code=201, tags=["jobs"], operation_id="start_job",
              responses={201: {"description": "the job, started", "links": {
                  name: {"operationId": op, "parameters": {"job_id": "$response.body#/job"}}
                  for name, op in (("ReadJob", "read_job"), ("ReadResults", "job_results"),
                                   ("CancelJob", "cancel_job"))}},
                  **_errors(408, 411, 413, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                  "text/plain": {"schema": {"type": "string"}}}}})
    async def start_job(request: Request,
                        key: Annotated[ApiKey, Depends(allowed("jobs"))],
                        fmt: Annotated[Literal["auto", "jsonl", "json", "tsv", "text"], Query(
                            alias="format", description=f"one of {', '.join(FORMATS)}")] = "auto",
                        chunk_cpu: Annotated[float | None, Query(gt=0.0, le=60.0)] = None,
                        ) -> dict[str, Any]:
        """Start a job from an uploaded file, streamed to disk (any size up to
        HOST_API_MAX_UPLOAD), run in chunks on the bulk queue."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > s.api_max_upload:
            raise ApiError(413, "body_too_large", f"the upload is over {s.api_max_upload} bytes",
                           {"Connection": "close"})
        try:
            source = await service.desk.receive(_timed(request.stream(), s.api_body_timeout),
                                                s.api_max_upload)
        except UploadTooLarge as exc:
            raise ApiError(413, "body_too_large", str(exc), {"Connection": "close"}) from None
        except TimeoutError:
            raise ApiError(408, "body_timeout", "no byte of the upload came for "
                           f"{s.api_body_timeout}s", {"Connection": "close"}) from None
        job_id = await store_call(service.desk.start, source, fmt, key.id, chunk_cpu)
        return await job_status(job_id)

    async def job_status(job_id: str) -> dict[str, Any]:
        found = await store_call(jobs.status, service.stores.jobs, job_id)
        if found is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        found.pop("input", None)
        found["results"] = f"/v1/jobs/{job_id}/results"
        return dict(found)

    @api.get("/v1/jobs", tags=["jobs"], operation_id="list_jobs", responses=_errors(503))
    async def list_jobs(key: Annotated[ApiKey, Depends(allowed("jobs"))]) -> list[dict[str, Any]]:
        """Recent jobs, newest first: the same list ``celery -A host job status`` shows."""
        ids = await store_call(service.stores.jobs.jobs)
        return [await job_status(j) for j in ids]

    @api.get("/v1/jobs/{job_id}", tags=["jobs"], operation_id="read_job",
             responses=_errors(404, 503))
    async def get_job(job_id: Annotated[str, Path(max_length=64)],
                      key: Annotated[ApiKey, Depends(allowed("jobs"))]) -> dict[str, Any]:
        """A job's progress, what it waits for, what its chunks cost."""
        return await job_status(job_id)

    @api.get("/v1/jobs/{job_id}/results", tags=["jobs"], operation_id="job_results", responses={
        200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}},
              "description": "one JSON line per input item, in input order"},
        **_errors(400, 404, 409, 503)})
    async def job_results(job_id: Annotated[str, Path(max_length=64)],
                          key: Annotated[ApiKey, Depends(allowed("jobs"))],
                          offset: Annotated[int, Query(ge=0, description="byte offset to go on from")
                                            ] = 0) -> StreamingResponse:
        """The job's results written so far from ``offset``; ``X-Next-Offset`` says where the
        next read goes on, ``X-Job-State`` whether more will come."""
        meta = await store_call(service.stores.jobs.get, job_id)
        if meta is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        if not service.desk.mine(meta):
            raise ApiError(409, "results_elsewhere", "this job's results are not on this API "
                           f"(its output: {meta.get('out')})")
        try:
            pieces, after = service.desk.results(meta, offset)
        except ValueError as exc:
            raise ApiError(400, "bad_offset", str(exc)) from None
        return StreamingResponse(pieces, media_type="application/x-ndjson", headers={
            "X-Next-Offset": str(after), "X-Job-State": str(meta["state"])})

    @api.delete("/v1/jobs/{job_id}", status_code=202, tags=["jobs"], operation_id="cancel_job",
                responses=_errors(404, 409, 503))
    async def cancel_job(job_id: Annotated[str, Path(max_length=64)],
                         key: Annotated[ApiKey, Depends(allowed("jobs"))]) -> dict[str, Any]:
        """Cancel a job: workers skip its chunks; what is written stays readable."""
        meta = await store_call(service.stores.jobs.get, job_id)
        if meta is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        if meta["state"] == "done":
            raise ApiError(409, "job_done", f"job {job_id} is done: nothing to cancel")
        await store_call(service.desk.cancel, job_id)
        return await job_status(job_id)

    # --- the fleet, the caller, the API itself -------------------------------------------

    @api.get("/v1/fleet", response_model=FleetOut, tags=["fleet"], operation_id="fleet",
             responses=_errors(503))
    async def fleet(key: Annotated[ApiKey, Depends(allowed("read"))]) -> dict[str, Any]:
        """Workers by state, healthy consumers per queue, backlog: whether to send now."""
        summary: dict[str, Any] = await store_call(service.fleet)
        return summary

    @api.get("/v1/key", response_model=KeyOut, tags=["keys"], operation_id="whoami",
             responses=_errors(503))
    async def whoami(key: Annotated[ApiKey, Depends(allowed(""))]) -> dict[str, Any]:
        """The calling key: its scopes, its rate, and what it sent by outcome."""
        counts = await store_call(service.stores.keys.counts, key.id)
        return {"id": key.id, "name": key.name, "scopes": list(key.scopes),
                "rate": key.rate or s.api_rate, "counts": counts}

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

    api.add_middleware(Metered, metrics=service.metrics)
    return api


class Metered:
    """ASGI middleware: the API's request metrics (``ApiMetrics.middleware``)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.inner = metrics.middleware(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.inner(scope, receive, send)


def _out(entry: dict[str, Any], record: dict[str, Any] | None = None) -> dict[str, Any]:
    record = record if record is not None else entry.get("result")
    status = entry.get("status", "pending") if record is None else (
        record.get("status") if record.get("status") in ("analysed", "rejected") else "failed")
    return {"id": entry["id"], "ref": entry["ref"], "status": status, "result": record,
            "accepted_at": entry["accepted_at"], "answered_at": entry.get("answered_at")}


async def _timed(pieces: AsyncIterator[bytes], idle: float) -> AsyncIterator[bytes]:
    """The pieces of a body, each within ``idle`` seconds of the one before."""
    it = pieces.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle):
                piece = await it.__anext__()
        except StopAsyncIteration:
            return
        yield piece
