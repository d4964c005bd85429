"""What every route shares: the error shape and its models, and the door's checks — who is
calling (key, scope, rate), how a body is read (bounded in size and time), what it is, and a
store call that answers 503 when the store does not."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from api.inputs import CONTENT_TYPES, Problem
from api.keys import ApiKey
from api.service import ApiService
from producer.inflight import BROKEN


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


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (401, 403, 422, 429, *codes)}


class Door:
    """The checks at the API's door, for one service."""

    def __init__(self, service: ApiService) -> None:
        self.service = service
        self.settings = service.settings
        self.bearer = HTTPBearer(auto_error=False, description="An API key: hk_<id>_<secret>")

    def allowed(self, scope: str) -> Callable[..., Awaitable[ApiKey]]:
        async def caller(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(self.bearer)]
                         ) -> ApiKey:
            if creds and not self.service.keyring.knows(creds.credentials):
                await self.service.refresh_keys_soon()  # a key added a moment ago works at once
            key = self.service.keyring.who(creds.credentials) if creds else None
            if key is None:
                raise ApiError(401, "unauthorized", "a valid API key is needed (Authorization: "
                               "Bearer hk_...)", {"WWW-Authenticate": "Bearer"})
            if scope and scope not in key.scopes:
                raise ApiError(403, "forbidden", f"this key has no '{scope}' scope")
            wait = self.service.limiter.take(key.id, key.rate or self.settings.api_rate, time.monotonic())
            if wait:
                raise ApiError(429, "rate_limited", f"over this key's {key.rate or self.settings.api_rate}/s",
                               {"Retry-After": str(math.ceil(wait))})
            return key
        return caller

    async def body_of(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, "body_too_large", f"the body is over {limit} bytes",
                           {"Connection": "close"})
        body = bytearray()
        try:
            async with asyncio.timeout(self.settings.api_body_timeout):
                async for piece in request.stream():
                    body += piece
                    if len(body) > limit:
                        raise ApiError(413, "body_too_large", f"the body is over {limit} bytes",
                                       {"Connection": "close"})
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the body took over {self.settings.api_body_timeout}s",
                           {"Connection": "close"}) from None
        return bytes(body)

    def format_of(self, request: Request) -> str:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in CONTENT_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"send one of {', '.join(CONTENT_TYPES)} (got {media or 'none'})")
        return CONTENT_TYPES[media]

    async def store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (*BROKEN, redis.RedisError) as exc:
            raise ApiError(503, "store_unavailable", f"the store does not answer: {exc}",
                           {"Retry-After": "2"}) from None
