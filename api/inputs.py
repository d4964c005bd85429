"""A submission's body into messages, or the reasons it is refused: the layouts ``ingest``
takes, checked with the workers' own parser, so a request is refused whole or taken whole.

By content type:

* ``application/json``: one JSON document — a Twitter v2 object (``{"data": {"id", "text"}}``),
  a v2 response (``{"data": [...]}``), a v1.1 object (``id_str``, ``text``/``full_text``),
  host's own ``{"text": ..., "ref": ...}``, or an array of these;
* ``application/x-ndjson``: one such object per line;
* ``text/plain``: one text per line;
* ``text/tab-separated-values``: ``id<TAB>rating<TAB>text`` lines (the ground-truth layout).

A message's ``ref`` is the caller's: the tweet's id, or the ``ref`` of host's own shape (else
its id). Each message gets an id of its own, by which its outcome is read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from broker_config.contract import envelope
from workers.inbound import Limits, Rejection, parse_line

#: Content types the API reads, and the format each is.
CONTENT_TYPES = {"application/json": "json", "application/x-ndjson": "jsonl",
                 "application/jsonl": "jsonl", "text/plain": "text",
                 "text/tab-separated-values": "tsv"}


class BadBody(ValueError):
    """The body as a whole cannot be read (400)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one input of a submission is refused."""

    index: int
    ref: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Input:
    """One message as the API sends it: the caller's ref, the line and its format."""

    ref: str | None
    line: str
    fmt: str


def read_inputs(body: bytes, fmt: str) -> list[Input | Problem]:
    """Split a body into inputs (not checked yet); raises BadBody when it cannot be read."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody("invalid_utf8", f"the body is not UTF-8 (byte {exc.start})") from None
    if fmt == "json":
        try:
            document = json.loads(text)
        except RecursionError:
            raise BadBody("json_too_deep", "nesting exceeds the parser's limit") from None
        except ValueError as exc:
            raise BadBody("invalid_json", str(exc)) from None
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            document = [{"data": item} for item in document["data"]]
        items = document if isinstance(document, list) else [document]
        return [_from_object(i, item) for i, item in enumerate(items)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if fmt == "jsonl":
        return [_from_json_line(i, ln) for i, ln in enumerate(lines)]
    if fmt == "tsv":
        return [Input(ln.split("\t", 1)[0].strip() or None, ln, "tsv") for ln in lines]
    return [Input(None, ln, "text") for ln in lines]


def _from_json_line(index: int, line: str) -> Input | Problem:
    try:
        obj = json.loads(line)
    except RecursionError:
        return Problem(index, "", "json_too_deep", "nesting exceeds the parser's limit")
    except ValueError as exc:
        return Problem(index, "", "invalid_json", str(exc))
    return _from_object(index, obj)


def _from_object(index: int, obj: Any) -> Input | Problem:
    if not isinstance(obj, dict):
        return Problem(index, "", "unrecognised_json",
                       f"expected an object, got a JSON {type(obj).__name__}")
    ref = obj.get("ref")
    if (ref is not None and not isinstance(ref, (str, int))) or isinstance(ref, bool):
        return Problem(index, "", "wrong_type", "'ref' must be a string or an integer")
    if "data" in obj:
        data = obj["data"]
        tweet_id = data.get("id") if isinstance(data, dict) else None
        return Input(_ref(ref, tweet_id), json.dumps({"data": data}, ensure_ascii=False), "jsonl")
    if "id_str" in obj or "id" in obj:
        tweet_id = obj.get("id_str", obj.get("id"))
        rest = {k: v for k, v in obj.items() if k != "ref"}
        return Input(_ref(ref, tweet_id), json.dumps(rest, ensure_ascii=False), "jsonl")
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            return Problem(index, str(ref or ""), "wrong_type", "'text' must be a string")
        return Input(_ref(ref, None), text, "text")
    return Problem(index, str(ref or ""), "unrecognised_json",
                   "not a Twitter v2 ({data: {id, text}}) or v1.1 ({id_str, text}) object, "
                   "nor {text, ref}")


def _ref(ref: object, tweet_id: object) -> str | None:
    for value in (ref, tweet_id):
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:200]
    return None


@dataclass
class Accepted:
    """A submission ready to go: each message's record and its envelope, in input order."""

    entries: list[dict[str, Any]]
    envelopes: list[dict[str, Any]]


def check(inputs: list[Input | Problem], limits: Limits, key_id: str,
          now: float) -> Accepted | list[Problem]:
    """Every input checked as a worker would check it; the problems, or all of it accepted."""
    problems: list[Problem] = []
    entries, envs = [], []
    for i, item in enumerate(inputs):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        message_id = uuid.uuid4().hex
        parsed = parse_line(item.line, item.fmt, message_id, limits)
        if isinstance(parsed, Rejection):
            problems.append(Problem(i, item.ref or "", parsed.code, parsed.detail))
            continue
        entries.append({"id": message_id, "ref": item.ref or message_id, "key": key_id,
                        "status": "pending", "accepted_at": now})
        envs.append(envelope(message_id, item.line, item.fmt))
    return problems or Accepted(entries, envs)
