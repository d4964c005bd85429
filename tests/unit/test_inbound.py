"""Inbound parsing: every accepted layout, and every kind of bad input rejected with a reason."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.inbound import (
    Limits,
    Line,
    Message,
    Rejection,
    detect_format,
    frame_lines,
    parse_line,
    split_document,
)

LIMITS = Limits(max_line_bytes=1000, max_text_chars=300)


def parse(raw: object, fmt: str = "auto") -> Message | Rejection:
    return parse_line(raw, fmt, "t:1", LIMITS)


class TestAcceptedLayouts:
    @pytest.mark.parametrize(("line", "tweet_id", "text"), [
        ('{"data": {"id": "17", "text": "hello there"}}', "17", "hello there"),
        ('{"data": {"id": 17, "text": "short", "note_tweet": {"text": "long form"}}}', "17",
         "long form"),
        ('{"id_str": "9", "full_text": "full one", "text": "cut", "user": {"screen_name": "a"}}',
         "9", "full one"),
        ('{"id": 9, "text": "v1 no user"}', "9", "v1 no user"),
        ("5\t-2.1\tsad day", "5", "sad day"),
        ("just words, no structure", "t:1", "just words, no structure"),
    ])
    def test_layouts_parse_to_messages(self, line: str, tweet_id: str, text: str) -> None:
        """v2, v1.1, TSV and plain text lines become messages with the right id and text."""
        msg = parse(line)
        assert isinstance(msg, Message), msg
        assert (msg.id, msg.text) == (tweet_id, text)

    def test_tsv_keeps_the_rating(self) -> None:
        """The ground-truth layout carries the human rating into the message."""
        msg = parse("42\t2.726315789\tSo lucky.")
        assert isinstance(msg, Message)
        assert msg.rating == pytest.approx(2.726315789)

    @pytest.mark.parametrize(("line", "fmt"), [
        ('{"a": 1}', "jsonl"), ("[1, 2]", "jsonl"), ("1\t0.5\tx", "tsv"), ("1\tx\ty", "text"),
        ("hello", "text"), ("  {spaced", "jsonl"),
    ])
    def test_detect_format(self, line: str, fmt: str) -> None:
        """Auto-detection looks at the shape of each line."""
        assert detect_format(line) == fmt

    def test_forced_text_format_analyses_json_looking_lines(self) -> None:
        """With --format text, a brace is just a character."""
        msg = parse("{sigh} long day", "text")
        assert isinstance(msg, Message)


class TestRejections:
    @pytest.mark.parametrize(("raw", "code"), [
        ("{not json", "invalid_json"),
        ('{"method": "shutdown", "destination": []}', "unrecognised_json"),
        ('{"data": {"id": "1"}}', "missing_text"),
        ('{"data": {"id": "1", "text": 5}}', "wrong_type"),
        ('{"data": {"id": [], "text": "x"}}', "wrong_type"),
        ('{"data": [{"id": "1", "text": "x"}]}', "wrong_type"),
        ('{"id_str": "1", "text": "x", "user": "bob"}', "wrong_type"),
        ('["a", "list"]', "unrecognised_json"),
        ('{"data": {"id": "1", "text": "   "}}', "empty_text"),
        ('{"data": {"id": "1", "text": "a\\u0000b"}}', "nul_byte"),
        ('{"data": {"id": "1", "text": "\\ud800"}}', "invalid_unicode"),
        ("[" * 10_000 + "]" * 10_000, "json_too_deep"),
        ("1" + "0" * 5000, "text_too_long"),
        ("x\tnot-a-number\ttext", "text"),
        (5, "wrong_type"),
        (None, "wrong_type"),
    ])
    def test_bad_input_is_rejected_with_a_code(self, raw: object, code: str) -> None:
        """Each kind of bad input yields a rejection naming its reason (never an exception)."""
        result = parse(raw)
        if code == "text":  # a line that only looks like TSV is plain text
            assert isinstance(result, Message)
            return
        assert isinstance(result, Rejection), result
        assert result.code == code

    def test_deep_json_is_rejected_not_raised(self) -> None:
        """JSON nested 10,000 deep is a rejection, and its raw form is truncated."""
        result = parse('{"a":' * 10_000 + "1" + "}" * 10_000)
        assert isinstance(result, Rejection)
        assert result.code == "json_too_deep"
        assert len(result.raw) <= 513

    def test_record_carries_reason_raw_and_time(self) -> None:
        """A dead-letter record has the raw input, the reason, the stage and the time."""
        rej = parse("{oops")
        assert isinstance(rej, Rejection)
        rec = rej.record(at=12.5, stage="worker", worker="w1@n")
        assert rec["status"] == "rejected"
        assert (rec["reason"], rec["raw"], rec["at"], rec["worker"]) == ("invalid_json", "{oops",
                                                                         12.5, "w1@n")

    @given(st.one_of(st.text(max_size=400), st.binary(max_size=50), st.integers(), st.none(),
                     st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)))
    def test_no_input_raises(self, raw: object) -> None:
        """Whatever arrives, parsing returns a Message or a Rejection."""
        assert isinstance(parse(raw), (Message, Rejection))

    @given(st.text(max_size=300).map(lambda t: json.dumps({"data": {"id": "1", "text": t}})))
    def test_v2_round_trip(self, line: str) -> None:
        """Any v2 object with text within limits is a message with exactly that text, or rejected."""
        result = parse(line)
        text = json.loads(line)["data"]["text"]
        if isinstance(result, Message):
            assert result.text == text


class TestFraming:
    def frame(self, data: bytes) -> list[Line]:
        return list(frame_lines(io.BytesIO(data), "f", LIMITS))

    def test_lines_get_numbered_refs_and_blank_lines_are_skipped(self) -> None:
        """Refs name the source and line number; blank lines are not inputs."""
        lines = self.frame(b"one\n\n  \r\ntwo\r\nthree")
        assert [(ln.ref, ln.text) for ln in lines] == [("f:1", "one"), ("f:4", "two"),
                                                       ("f:5", "three")]

    def test_invalid_utf8_is_a_rejection(self) -> None:
        """Undecodable bytes become a rejection for that line only."""
        lines = self.frame(b"ok\n\xff\xfe bad\nok again\n")
        assert lines[1].rejection is not None and lines[1].rejection.code == "invalid_utf8"
        assert [ln.text for ln in (lines[0], lines[2])] == ["ok", "ok again"]

    def test_over_long_line_is_rejected_and_skipped_whole(self) -> None:
        """A line over the limit is one rejection; the next line is read normally."""
        lines = self.frame(b"a" * 5000 + b"\nnext\n")
        assert len(lines) == 2
        assert lines[0].rejection is not None and lines[0].rejection.code == "line_too_long"
        assert "5001 bytes" in lines[0].rejection.detail
        assert lines[1].text == "next"

    def test_empty_input_has_no_lines(self) -> None:
        """An empty file has no inputs."""
        assert self.frame(b"") == []

    def test_split_document_v2_list(self) -> None:
        """A v2 response with a list of tweets yields one line per tweet."""
        doc = json.dumps({"data": [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]})
        lines = split_document(doc, "d")
        assert not isinstance(lines, Rejection)
        parsed = [parse_line(ln.text, "jsonl", ln.ref, LIMITS) for ln in lines]
        assert [(m.ref, m.id) for m in parsed if isinstance(m, Message)] == [("d#1", "1"),
                                                                               ("d#2", "2")]
