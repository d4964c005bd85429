"""JSON for host's own tasks and results, written (and, in ingest, read) with orjson.

A batch of 500 tweets comes back as ~220 KB of JSON: kombu's encoder (the standard library's,
with a hook for types JSON lacks) took ~4.8 µs per record to write it in the worker and ~4.8 µs
to read it back in ``ingest``; orjson takes 0.4 and 1.0 (bench/throughput.py, docs/bench).
The document is JSON all the same: any Celery client reading host's results with the plain
``json`` serializer reads them as before.

Where orjson would give something else than kombu's ``json``, kombu's is used:

- writing: a value orjson refuses (bytes, Decimal, a non-string key, an integer over 64 bits,
  a datetime, a dataclass, a subclass of a built-in type) makes the whole document kombu's.
  Two differences remain, in types host's results never hold: a ``UUID`` and an ``Enum`` are
  written as their string and value, not kombu's ``{"__type__": ...}`` marker; and a NaN or
  infinity is written ``null`` (kombu writes ``NaN``, which is not JSON).
- reading (``loads``): a document with kombu's ``__type__`` marker in it, or one orjson
  refuses (``NaN``, a lone surrogate), is read by kombu. orjson reads an integer over 64 bits
  as a float: ``loads`` is meant for host's own results, which hold none.
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu.serialization import registry  # type: ignore[attr-defined]  # not in the stubs
from kombu.utils import json as kombu_json

#: The serializer name host's result backend writes with (its content type stays JSON's).
NAME = "host-json"
CONTENT_TYPE = "application/json"

_WRITE = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
          | orjson.OPT_PASSTHROUGH_SUBCLASS)


def dumps(value: Any) -> bytes | str:
    """``value`` as JSON: orjson's bytes, or kombu's text for what orjson would write otherwise."""
    try:
        return orjson.dumps(value, option=_WRITE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return kombu_json.dumps(value)


def loads(payload: bytes | str) -> Any:
    """A JSON document host wrote (``dumps``, or kombu's ``json``), read back as kombu would."""
    marker = b"__type__" if isinstance(payload, bytes) else "__type__"
    if marker in payload:  # type: ignore[operator]
        return kombu_json.loads(payload)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return kombu_json.loads(payload)


def register() -> None:
    """Make ``NAME`` a serializer that writes with ``dumps`` under JSON's content type.

    It only writes: JSON is still read by kombu's own decoder, and replies to a request are
    still written with ``json`` (kombu picks a reply's serializer by the request's content
    type, which registering a second JSON writer would otherwise change)."""
    if NAME in registry.name_to_type:
        return
    json_name = registry.type_to_name.get(CONTENT_TYPE, "json")
    registry.register(NAME, dumps, None, CONTENT_TYPE, "utf-8")
    registry.type_to_name[CONTENT_TYPE] = json_name
