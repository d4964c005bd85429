"""Routes for messages: submit one or many (202 with ids, or waiting for the outcomes), read
one's outcome by id. Retried submissions with an Idempotency-Key enqueue nothing twice."""

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from api.dispatch import Submission, Unavailable
from api.inputs import Accepted, BadBody, Problem, check, read_inputs
from api.keys import ApiKey
from api.routes.common import ApiError, Door, MessageOut, SubmitOut, errors
from broker_config import keys
from producer.inflight import BROKEN

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


#: What ``POST /v1/messages`` answers, and the bodies it takes, as the schema documents them.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SubmitOut, "description": "every message answered"},
    202: {"model": SubmitOut, "description": "accepted", "links": {
        "ReadMessage": {"operationId": "read_message", "parameters": {
            "message_id": "$response.body#/messages/0/id"}}}},
    **errors(400, 408, 409, 413, 415, 503)}
SUBMIT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [
        MESSAGE, {"type": "array", "items": MESSAGE, "minItems": 1}]}},
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/plain": {"schema": {"type": "string"}},
    "text/tab-separated-values": {"schema": {"type": "string"}}}}}


def messages_router(door: Door) -> APIRouter:
    router = APIRouter(tags=["messages"])
    service = door.service
    idempotency = Idempotency(service.stores.client)

    @router.post("/v1/messages", status_code=202, response_model=SubmitOut, tags=["messages"],
                 operation_id="submit_messages", responses=SUBMIT_RESPONSES,
                 openapi_extra=SUBMIT_BODY)
    async def submit(request: Request,
                     key: Annotated[ApiKey, Depends(door.allowed("submit"))],
                     wait: Annotated[float, Query(ge=0.0, le=door.settings.api_wait_max,
                                                  description="Seconds to wait for the analysis")
                                     ] = 0.0,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                     ) -> Response:
        """Submit one message or many. Answers 202 with their ids at once, or with ``wait``,
        200 with every outcome (202 with those still pending when the wait ends)."""
        fmt = door.format_of(request)
        if service.backlog_full():
            raise ApiError(503, "backlog_full", "the fleet is behind: try again later",
                           {"Retry-After": "2"})
        body = await door.body_of(request, door.settings.api_max_body)
        fingerprint = hashlib.sha256(fmt.encode() + b"\0" + body).hexdigest()
        if idempotency_key is None:
            sub = await _enqueue(door, body, fmt, key)
            out = {"accepted": len(sub.entries), "messages": [_out(e) for e in sub.entries]}
            return await _answer(sub, out, wait)
        found = await idempotency.once(key.id, idempotency_key, fingerprint,
                                       lambda: _enqueue(door, body, fmt, key))
        if isinstance(found, dict):
            return JSONResponse(found, 202, headers={"Idempotent-Replayed": "true"})
        sub, out = found
        return await _answer(sub, out, wait)

    @router.get("/v1/messages/{message_id}", response_model=MessageOut, tags=["messages"],
                operation_id="read_message", responses=errors(404, 503))
    async def message(message_id: Annotated[str, Path(max_length=64)],
                      key: Annotated[ApiKey, Depends(door.allowed("read"))]) -> dict[str, Any]:
        """A message's outcome: analysed (its scores), rejected (its dead-letter reason),
        failed, or still pending."""
        entry = await door.store_call(service.message, message_id)
        if entry is None or entry.get("key") != key.id:
            raise ApiError(404, "not_found", f"no message {message_id} sent with this key")
        return _out(entry, entry.get("result"))

    return router


async def _enqueue(door: Door, body: bytes, fmt: str, key: ApiKey) -> Submission:
    """Parse and check a body, hand its messages to the dispatcher, and wait until they are
    sent (503 when the broker cannot take them)."""
    accepted = await _parse(door, body, fmt, key)
    sub = Submission(key.id, accepted.entries, accepted.envelopes, asyncio.get_running_loop())
    door.service.dispatcher.submit(sub)
    try:
        await sub.sent
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), {"Retry-After": "2"}) from None
    return sub


async def _answer(sub: Submission, out: dict[str, Any], wait: float) -> Response:
    """202 with the ids, or after waiting up to ``wait`` s, 200 when every outcome is in."""
    if wait > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sub.done), wait)
        out["messages"] = [_out({**e, "answered_at": sub.answered_at.get(e["id"])},
                                sub.records.get(e["id"])) for e in sub.entries]
        if sub.done.done():
            return JSONResponse(out, 200)
    return JSONResponse(out, 202)


async def _parse(door: Door, body: bytes, fmt: str, key: ApiKey) -> Accepted:
    service = door.service

    def run() -> Accepted | list[Problem]:
        inputs = read_inputs(body, fmt)
        if not inputs:
            raise ApiError(422, "no_messages", "the body holds no message")
        if len(inputs) > door.settings.api_max_messages:
            raise ApiError(422, "too_many_messages",
                           f"{len(inputs)} messages > {door.settings.api_max_messages} in one request")
        return check(inputs, service.limits, key.id, time.time())
    try:
        result = await asyncio.to_thread(run) if len(body) > PARSE_INLINE_BYTES else run()
    except BadBody as exc:
        raise ApiError(400, exc.code, exc.detail) from None
    if isinstance(result, list):
        refused = Counter(f"refused:{p.reason}" for p in result)
        for what, n in refused.items():
            service.metrics.tally(key.id, what, n)
        with contextlib.suppress(*BROKEN, redis.RedisError):  # the key's own view
            await asyncio.to_thread(service.stores.keys.count, {key.id: refused})
        raise ApiError(422, "inputs_refused", f"{len(result)} input(s) refused: nothing was "
                       "accepted", problems=result)
    return result


class Idempotency:
    """What a retried submission with the same Idempotency-Key finds: nothing (go on), the
    first answer (replayed), a conflict (another body, or the first still being answered)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    async def once(self, key_id: str, idem: str, fingerprint: str,
                   enqueue: Callable[[], Awaitable[Submission]]
                   ) -> dict[str, Any] | tuple[Submission, dict[str, Any]]:
        """The first answer to this key and body (replayed), or ``enqueue``'s submission and
        its answer, remembered for the retries (forgotten if enqueueing fails)."""
        replay = await asyncio.to_thread(self.claim, key_id, idem, fingerprint)
        if replay is not None:
            return replay
        try:
            sub = await enqueue()
        except BaseException:
            await asyncio.to_thread(self.release, key_id, idem)
            raise
        out = {"accepted": len(sub.entries), "messages": [_out(e) for e in sub.entries]}
        await asyncio.to_thread(self.remember, key_id, idem, fingerprint, out)
        return sub, out

    def claim(self, key_id: str, idem: str, fingerprint: str) -> dict[str, Any] | None:
        name = keys.api_idempotency(key_id, idem)
        if self.client.set(name, json.dumps({"fingerprint": fingerprint}), nx=True,
                           ex=IDEMPOTENCY_KEEP_S):
            return None
        seen = json.loads(self.client.get(name) or "{}")
        if seen.get("fingerprint") != fingerprint:
            raise ApiError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used for another body")
        if "response" not in seen:
            raise ApiError(409, "in_progress", "a request with this Idempotency-Key is being "
                           "answered", {"Retry-After": "1"})
        response: dict[str, Any] = seen["response"]
        return response

    def remember(self, key_id: str, idem: str, fingerprint: str, out: dict[str, Any]) -> None:
        with contextlib.suppress(*BROKEN, redis.RedisError):
            self.client.set(keys.api_idempotency(key_id, idem), json.dumps(
                {"fingerprint": fingerprint, "response": out}), ex=IDEMPOTENCY_KEEP_S)

    def release(self, key_id: str, idem: str) -> None:
        with contextlib.suppress(*BROKEN, redis.RedisError):
            self.client.delete(keys.api_idempotency(key_id, idem))


def _out(entry: dict[str, Any], record: dict[str, Any] | None = None) -> dict[str, Any]:
    record = record if record is not None else entry.get("result")
    status = entry.get("status", "pending") if record is None else (
        record.get("status") if record.get("status") in ("analysed", "rejected") else "failed")
    return {"id": entry["id"], "ref": entry["ref"], "status": status, "result": record,
            "accepted_at": entry["accepted_at"], "answered_at": entry.get("answered_at")}
