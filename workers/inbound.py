"""Inbound messages: parsing each line into a tweet or a rejection (``framing`` cuts the lines).

Pure: no I/O beyond the stream it is handed, no clock. Everything a producer can send is
either a ``Message`` (analysable text) or a ``Rejection`` (a dead-letter record's content);
nothing raises on bad input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["auto", "jsonl", "json", "tsv", "text"]
FORMATS: tuple[str, ...] = ("auto", "jsonl", "json", "tsv", "text")
#: How much of a rejected input a dead-letter record keeps.
RAW_KEEP_CHARS = 512

_SURROGATE = re.compile("[\ud800-\udfff]")
_TSV = re.compile(r"^[^\t\n]+\t[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\t")


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on inbound input (HOST_MAX_LINE_BYTES, HOST_MAX_TEXT_CHARS, HOST_MAX_EMOJI,
    HOST_INPUT_CPU_BUDGET)."""

    max_line_bytes: int = 1_048_576
    max_text_chars: int = 10_000
    #: Most emoji one text may hold: each is read as its description (docs/operations.md).
    max_emoji: int = 1_000
    #: CPU seconds one input may cost the analysis before it is stopped as too expensive.
    cpu_budget_s: float = 0.1


# Message and Line are made once per input on the hot path: not frozen, as a frozen dataclass
# costs three times as much to build (1.1 µs against 0.4); nothing changes them once made.
@dataclass(slots=True)
class Message:
    """One analysable inbound message."""

    ref: str
    id: str
    text: str
    #: The human rating carried by the TSV layout, when there is one.
    rating: float | None = None
    author: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input cannot be analysed: becomes a dead-letter record."""

    ref: str
    code: str
    detail: str
    raw: str

    def record(self, at: float, stage: str, worker: str | None = None) -> dict[str, Any]:
        """The dead-letter record: the input (truncated), the reason, where and when."""
        return {
            "status": "rejected",
            "ref": self.ref,
            "reason": self.code,
            "detail": self.detail,
            "raw": self.raw,
            "stage": stage,
            "worker": worker,
            "at": at,
        }


@dataclass(slots=True)
class Line:
    """A framed input line: decoded text, or the rejection that framing produced."""

    ref: str
    text: str | None
    rejection: Rejection | None = None


def truncate(raw: object, keep: int = RAW_KEEP_CHARS) -> str:
    """A bounded, printable rendering of any input for a dead-letter record."""
    if isinstance(raw, bytes):
        text = raw[: keep * 4].decode("utf-8", errors="backslashreplace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=repr)[: keep + 1]
        except (ValueError, RecursionError):
            text = type(raw).__name__
    return text if len(text) <= keep else text[:keep] + "…"


#: What ends a line: LF, CRLF, a lone CR (old Mac exports), and, in decoded text, U+2028 LINE
#: SEPARATOR and U+2029 PARAGRAPH SEPARATOR — except inside a JSON string, where JSON allows
#: them raw (a JSON line is never cut in two). A UTF-8 byte-order mark opening the input is
#: dropped. Nothing else (form feed, NEL, vertical tab) ends a line.
def detect_format(line: str) -> Format:
    """Which layout one line is in: a JSON object, the ground-truth TSV, or plain text."""
    first = line[:1]
    if first in ("{", "[") or (first.isspace() and line.lstrip().startswith(("{", "["))):
        return "jsonl"
    if _TSV.match(line):
        return "tsv"
    return "text"


def parse_line(raw: object, fmt: str, ref: str, limits: Limits) -> Message | Rejection:
    """Parse one inbound line of the given format ("auto" detects it). Never raises."""
    if not isinstance(raw, str):
        return Rejection(ref, "wrong_type", f"line must be a string, not {type(raw).__name__}",
                         truncate(raw))
    if fmt == "auto":
        fmt = detect_format(raw)
    if fmt in ("jsonl", "json"):
        return _parse_json(raw, ref, limits)
    if fmt == "tsv":
        return _parse_tsv(raw, ref, limits)
    if fmt == "text":
        return _message(ref, ref, raw.strip(), raw, limits)
    return Rejection(ref, "unknown_format", f"format must be one of {', '.join(FORMATS)}",
                     truncate(fmt))


def split_document(document: str, source: str) -> Iterator[Line] | Rejection:
    """Split one whole JSON document (a v2 response, a v1.1 object or an array) into lines.

    Each tweet object is re-serialised as one JSON line, referenced by its position.
    """
    try:
        data = json.loads(document)
    except RecursionError:
        return Rejection(source, "json_too_deep", "nesting exceeds the parser's limit",
                         truncate(document))
    except ValueError as exc:
        return Rejection(source, "invalid_json", str(exc), truncate(document))
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = [{"data": item} for item in data["data"]]
    items = data if isinstance(data, list) else [data]
    return (Line(f"{source}#{i}", json.dumps(item, ensure_ascii=False))
            for i, item in enumerate(items, 1))


def _parse_json(raw: str, ref: str, limits: Limits) -> Message | Rejection:
    try:
        obj = json.loads(raw)
    except RecursionError:
        return Rejection(ref, "json_too_deep", "nesting exceeds the parser's limit", truncate(raw))
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        return Rejection(ref, "invalid_json", str(exc), truncate(raw))
    if not isinstance(obj, dict):
        return Rejection(ref, "unrecognised_json",
                         f"expected a tweet object, got a JSON {type(obj).__name__}", truncate(raw))
    if "data" in obj:
        return _parse_v2(obj, raw, ref, limits)
    if "text" in obj or "full_text" in obj:
        return _parse_v1(obj, raw, ref, limits)
    return Rejection(ref, "unrecognised_json",
                     "not a Twitter v2 ({data: {id, text}}) or v1.1 ({id_str, text}) object",
                     truncate(raw))


def _parse_v2(obj: dict[str, Any], raw: str, ref: str, limits: Limits) -> Message | Rejection:
    data = obj["data"]
    if not isinstance(data, dict):
        return Rejection(ref, "wrong_type", "v2 'data' must be one tweet object", truncate(raw))
    tweet_id = _tweet_id(data.get("id"))
    if tweet_id is None:
        return Rejection(ref, "wrong_type", "v2 'data.id' must be a string or integer",
                         truncate(raw))
    text = data.get("text")
    note = data.get("note_tweet")
    if isinstance(note, dict) and isinstance(note.get("text"), str):
        text = note["text"]  # long-form tweets carry their full text here
    return _message(ref, tweet_id, text, raw, limits, author=_str_or_none(data.get("author_id")))


def _parse_v1(obj: dict[str, Any], raw: str, ref: str, limits: Limits) -> Message | Rejection:
    tweet_id = _tweet_id(obj.get("id_str", obj.get("id")))
    if tweet_id is None:
        return Rejection(ref, "wrong_type", "v1.1 'id_str' must be a string", truncate(raw))
    user = obj.get("user")
    if user is not None and not isinstance(user, dict):
        return Rejection(ref, "wrong_type", "v1.1 'user' must be an object", truncate(raw))
    author = _str_or_none(user.get("screen_name")) if user else None
    text = obj.get("full_text", obj.get("text"))
    return _message(ref, tweet_id, text, raw, limits, author=author)


def _parse_tsv(raw: str, ref: str, limits: Limits) -> Message | Rejection:
    parts = raw.rstrip("\r\n").split("\t", 2)
    if len(parts) != 3 or not parts[0].strip():
        return Rejection(ref, "bad_tsv", "expected id<TAB>rating<TAB>text", truncate(raw))
    try:
        rating = float(parts[1])
    except ValueError:
        return Rejection(ref, "bad_tsv", "rating is not a number", truncate(raw))
    if not math.isfinite(rating):
        return Rejection(ref, "bad_tsv", "rating is not a finite number", truncate(raw))
    return _message(ref, parts[0].strip(), parts[2], raw, limits, rating=rating)


def _message(ref: str, tweet_id: str, text: object, raw: str, limits: Limits,
             rating: float | None = None, author: str | None = None) -> Message | Rejection:
    if not isinstance(text, str):
        kind = "missing" if text is None else type(text).__name__
        return Rejection(ref, "missing_text" if text is None else "wrong_type",
                         f"text must be a string ({kind})", truncate(raw))
    if not text.strip():
        return Rejection(ref, "empty_text", "text is empty", truncate(raw))
    if "\x00" in text:
        return Rejection(ref, "nul_byte", "text contains a NUL character", truncate(raw))
    for name, value in (("text", text), ("id", tweet_id), ("author", author)):
        if value is not None and not value.isascii() and _SURROGATE.search(value):
            return Rejection(ref, "invalid_unicode", f"{name} contains a lone surrogate",
                             truncate(raw))
    if len(text) > limits.max_text_chars:
        return Rejection(ref, "text_too_long", f"{len(text)} chars > {limits.max_text_chars}",
                         truncate(raw))
    return Message(ref=ref, id=tweet_id, text=text, rating=rating, author=author)


def _tweet_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()[:64]
    return None


def _str_or_none(value: object) -> str | None:
    return value[:64] if isinstance(value, str) else None
