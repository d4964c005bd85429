"""What a kombu message looks like on a Redis list: the shape the transport checks an item
against before kombu sees it (kombu itself ends the worker on an item of another shape)."""

from __future__ import annotations

import base64
from typing import Any


def envelope_problem(payload: Any) -> str | None:
    """Why ``payload`` cannot be a kombu message (None when it can)."""
    if not isinstance(payload, dict):
        return "a JSON " + type(payload).__name__ + ", not an envelope"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "no properties.delivery_tag"
    info = properties.get("delivery_info", {})
    if not isinstance(info, dict):
        return "properties.delivery_info is not an object"
    if not all(isinstance(info.get(k, ""), str) for k in ("exchange", "routing_key")):
        return "properties.delivery_info: exchange and routing_key must be strings"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key) or "", str):
            return f"{key} is not a string"
    body = payload.get("body", "")
    if not isinstance(body, str):
        return "body is not a string"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return f"properties.body_encoding {str(encoding)[:20]!r}: kombu writes base64"
    if encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except ValueError:
            return "body is not base64"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers is not an object"
    return None
