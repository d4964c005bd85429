"""broker_config.fastjson: orjson where it reads and writes what kombu's json would."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads
from kombu.utils import json as kombu_json

from broker_config import fastjson
from producer.feed import line_of

#: What a JSON document holds, with any character a Python string can (lone surrogates too).
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(st.characters(codec=None, exclude_categories=())))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)

RECORD = {"status": "analysed", "ref": "r:1", "id": "1", "text": "a lovely day 😀",
          "rating": 2, "author": None, "neg": 0.0, "neu": 0.4, "pos": 0.6, "compound": 0.8,
          "label": "positive", "worker": "w1@h", "queue": "tweets", "task_id": "t",
          "started_at": 1764730000.123456, "finished_at": 1764730000.1236,
          "runtime_s": 1.4e-05, "queue_wait_s": None}


class TestRoundTrips:
    @given(documents)
    def test_what_it_writes_kombu_reads_back_unchanged(self, value: Any) -> None:
        """Any JSON value host writes reads back equal with kombu's own json (any client)."""
        assert kombu_json.loads(fastjson.dumps(value)) == value

    @given(documents)
    def test_it_reads_what_kombu_writes_as_kombu_does(self, value: Any) -> None:
        assert fastjson.loads(kombu_json.dumps(value)) == kombu_json.loads(kombu_json.dumps(value))
        assert fastjson.loads(fastjson.dumps(value)) == value

    def test_a_record_is_written_by_orjson(self) -> None:
        written = fastjson.dumps([RECORD] * 3)
        assert isinstance(written, bytes)
        assert json.loads(written) == [RECORD] * 3  # plain JSON, for any reader


class TestWhereKombuWrites:
    def test_types_json_lacks_are_written_and_read_as_kombu_does(self) -> None:
        """A datetime, Decimal, bytes: kombu's markers, read back as the same objects."""
        value = {"at": datetime.datetime(2026, 12, 3, 4, 5, 6), "price": Decimal("1.10"),
                 "raw": b"\x00\xff", "ok": True}
        written = fastjson.dumps(value)
        assert written == kombu_json.dumps(value)
        assert fastjson.loads(written) == value

    def test_non_string_keys_and_huge_integers_are_kombus(self) -> None:
        """Written by kombu, exactly. (Read back, an integer over 64 bits becomes a float:
        ``loads`` is for host's own results, which hold none; 2**70 itself would hide that,
        as it equals its float.)"""
        for value in ({1: "one"}, [2**70 + 1]):
            assert fastjson.dumps(value) == kombu_json.dumps(value)
        assert fastjson.loads(fastjson.dumps({1: "one"})) == {"1": "one"}

    def test_documents_orjson_refuses_are_read_by_kombu(self) -> None:
        """NaN (kombu writes it), a lone surrogate escape: read as kombu reads them."""
        nan = fastjson.loads(kombu_json.dumps({"x": float("nan")}))
        assert math.isnan(nan["x"])
        assert fastjson.loads('"\\ud800"') == "\ud800"
        marked = uuid.UUID("6f1c7a4e-0d1a-4c3b-9a59-1c2d3e4f5a6b")
        assert fastjson.loads(kombu_json.dumps({"id": marked}).encode()) == {"id": marked}


class TestRegistration:
    def test_the_result_serializer_writes_json_and_leaves_reading_to_kombu(self) -> None:
        """``host-json`` writes under JSON's content type; JSON is read, and replies are
        written, exactly as before."""
        from kombu.serialization import registry  # type: ignore[attr-defined]

        fastjson.register()
        content_type, encoding, payload = kombu_dumps([RECORD], serializer=fastjson.NAME)
        assert (content_type, encoding) == ("application/json", "utf-8")
        assert kombu_loads(payload, content_type, encoding, accept={"application/json"}) == [
            RECORD]
        assert registry.type_to_name["application/json"] == "json"
        assert registry._decoders["application/json"] is kombu_json.loads


class TestOutputLines:
    def test_a_line_is_one_json_object_and_a_newline(self) -> None:
        line = line_of(RECORD)
        assert line.endswith("\n") and line.count("\n") == 1
        assert json.loads(line) == RECORD

    def test_not_finite_is_null_and_a_lone_surrogate_is_escaped(self) -> None:
        line = line_of({"rating": float("inf"), "score": float("nan"), "text": "bad \ud800"})
        assert json.loads(line) == {"rating": None, "score": None, "text": "bad \ud800"}
        line.encode("utf-8")  # raises if the surrogate were written raw
