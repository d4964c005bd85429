"""Routes for jobs: start one from an upload streamed to disk, follow it, read its results from
any offset, cancel it — the same jobs `celery -A host job` runs."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from api.jobs import UploadTooLarge
from api.keys import ApiKey
from api.routes.common import ApiError, Door, errors
from producer import jobs
from workers.inbound import FORMATS

#: What ``POST /v1/jobs`` answers, and the bodies it takes, as the schema documents them.
START_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "the job, started", "links": {
        name: {"operationId": op, "parameters": {"job_id": "$response.body#/job"}}
        for name, op in (("ReadJob", "read_job"), ("ReadResults", "job_results"),
                         ("CancelJob", "cancel_job"))}},
    **errors(408, 411, 413, 503)}
START_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string"}}}}}
RESULTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}},
          "description": "one JSON line per input item, in input order"},
    **errors(400, 404, 409, 503)}


def jobs_router(door: Door) -> APIRouter:
    router = APIRouter(tags=["jobs"])
    service = door.service

    @router.post("/v1/jobs", status_code=201, tags=["jobs"], operation_id="start_job",
                 responses=START_RESPONSES, openapi_extra=START_BODY)
    async def start_job(request: Request,
                        key: Annotated[ApiKey, Depends(door.allowed("jobs"))],
                        fmt: Annotated[Literal["auto", "jsonl", "json", "tsv", "text"], Query(
                            alias="format", description=f"one of {', '.join(FORMATS)}")] = "auto",
                        chunk_cpu: Annotated[float | None, Query(gt=0.0, le=60.0)] = None,
                        ) -> dict[str, Any]:
        """Start a job from an uploaded file, streamed to disk (any size up to
        HOST_API_MAX_UPLOAD), run in chunks on the bulk queue."""
        source = await _receive(door, request)
        job_id = await door.store_call(service.desk.start, source, fmt, key.id, chunk_cpu)
        return await _status(door, job_id)

    @router.get("/v1/jobs", tags=["jobs"], operation_id="list_jobs", responses=errors(503))
    async def list_jobs(key: Annotated[ApiKey, Depends(door.allowed("jobs"))]) -> list[dict[str, Any]]:
        """Recent jobs, newest first: the same list ``celery -A host job status`` shows."""
        ids = await door.store_call(service.stores.jobs.jobs)
        return [await _status(door, j) for j in ids]

    @router.get("/v1/jobs/{job_id}", tags=["jobs"], operation_id="read_job",
                responses=errors(404, 503))
    async def get_job(job_id: Annotated[str, Path(max_length=64)],
                      key: Annotated[ApiKey, Depends(door.allowed("jobs"))]) -> dict[str, Any]:
        """A job's progress, what it waits for, what its chunks cost."""
        return await _status(door, job_id)

    _results_and_cancel(router, door)
    return router


def _results_and_cancel(router: APIRouter, door: Door) -> None:
    service = door.service

    @router.get("/v1/jobs/{job_id}/results", tags=["jobs"], operation_id="job_results",
                responses=RESULTS_RESPONSES)
    async def job_results(job_id: Annotated[str, Path(max_length=64)],
                          key: Annotated[ApiKey, Depends(door.allowed("jobs"))],
                          offset: Annotated[int, Query(ge=0, description="byte offset to go on from")
                                            ] = 0) -> StreamingResponse:
        """The job's results written so far from ``offset``; ``X-Next-Offset`` says where the
        next read goes on, ``X-Job-State`` whether more will come."""
        meta = await door.store_call(service.stores.jobs.get, job_id)
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

    @router.delete("/v1/jobs/{job_id}", status_code=202, tags=["jobs"], operation_id="cancel_job",
                   responses=errors(404, 409, 503))
    async def cancel_job(job_id: Annotated[str, Path(max_length=64)],
                         key: Annotated[ApiKey, Depends(door.allowed("jobs"))]) -> dict[str, Any]:
        """Cancel a job: workers skip its chunks; what is written stays readable."""
        meta = await door.store_call(service.stores.jobs.get, job_id)
        if meta is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        if meta["state"] == "done":
            raise ApiError(409, "job_done", f"job {job_id} is done: nothing to cancel")
        await door.store_call(service.desk.cancel, job_id)
        return await _status(door, job_id)


async def _receive(door: Door, request: Request) -> FilePath:
    """The upload, streamed to disk: 413 over HOST_API_MAX_UPLOAD (by its Content-Length at
    once, or as it comes), 408 when no byte comes for HOST_API_BODY_TIMEOUT."""
    limit, idle = door.settings.api_max_upload, door.settings.api_body_timeout
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "body_too_large", f"the upload is over {limit} bytes",
                       {"Connection": "close"})
    try:
        return await door.service.desk.receive(_timed(request.stream(), idle), limit)
    except UploadTooLarge as exc:
        raise ApiError(413, "body_too_large", str(exc), {"Connection": "close"}) from None
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"no byte of the upload came for {idle}s",
                       {"Connection": "close"}) from None


async def _status(door: Door, job_id: str) -> dict[str, Any]:
    found = await door.store_call(jobs.status, door.service.stores.jobs, job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    found.pop("input", None)
    found["results"] = f"/v1/jobs/{job_id}/results"
    return dict(found)


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
