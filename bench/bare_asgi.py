"""The least a POST route costs in each ASGI stack host could use: parse a tweet's JSON body and
answer a small JSON, nothing else (no key, no broker, no store, no analysis). bench/api_ceiling.py
serves these under uvicorn and loads them with wrk, to say how far one-tweet-per-request can go
on a machine before host does any of its own work."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route


def _answer(body: bytes) -> dict[str, Any]:
    return {"accepted": 1, "messages": [{"id": "x", "text": json.loads(body)["text"]}]}


fastapi_app = FastAPI()


@fastapi_app.post("/v1/messages")
async def submit(request: Request) -> JSONResponse:
    return JSONResponse(_answer(await request.body()))


async def _starlette_submit(request: StarletteRequest) -> StarletteJSON:
    return StarletteJSON(_answer(await request.body()))


starlette_app = Starlette(routes=[Route("/v1/messages", _starlette_submit, methods=["POST"])])


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI with no framework at all (not an option for host: a floor, for comparison)."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    out = json.dumps(_answer(body)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
