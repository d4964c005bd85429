"""Inbound parsing: every accepted layout, and every kind of bad input rejected with a reason."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.framing import frame_lines
from workers.inbound import (
    Limits,
    Line,
    Message,
    Rejection,
    detect_format,
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
        assert "5000 bytes" in lines[0].rejection.detail  # the line, without its break
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


class TestLineBreaks:
    """Which separators count: LF, CRLF, CR, U+2028, U+2029 (not inside a JSON string)."""

    @staticmethod
    def texts(data: bytes, chunk_size: int = 65_536) -> list[str | None]:
        return [ln.text for ln in frame_lines(io.BytesIO(data), "f", LIMITS, chunk_size)]

    @pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r", "\u2028".encode(),
                                     "\u2029".encode()])
    @pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 65_536])
    def test_each_separator_frames_twenty_tweets(self, sep: bytes, chunk_size: int) -> None:
        """Twenty tweets joined by any one separator are twenty inputs, at any read size."""
        tweets = [f"tweet number {i} is nice" for i in range(20)]
        assert self.texts(sep.join(t.encode() for t in tweets) + sep, chunk_size) == tweets

    def test_mixed_breaks_and_a_crlf_split_across_reads(self) -> None:
        """A CR at the end of one read and its LF at the start of the next are one break."""
        data = b"one\r\ntwo\rthree\nfour\r\n"
        for size in range(1, len(data) + 1):
            assert self.texts(data, size) == ["one", "two", "three", "four"], size

    def test_a_leading_bom_is_dropped(self) -> None:
        """A UTF-8 BOM does not make the first JSON line text."""
        lines = self.texts(b'\xef\xbb\xbf{"data": {"id": "1", "text": "hi"}}\nsecond\n')
        assert lines == ['{"data": {"id": "1", "text": "hi"}}', "second"]
        assert detect_format(str(lines[0])) == "jsonl"

    def test_unicode_separators_inside_json_strings_stay(self) -> None:
        """JSON allows raw U+2028 in a string: such a line is not cut; between objects it is."""
        inner = json.dumps({"data": {"id": "1", "text": "a\u2028b"}}, ensure_ascii=False)
        two = inner + "\u2029" + json.dumps({"data": {"id": "2", "text": "c"}})
        assert self.texts((inner + "\n" + two + "\n").encode()) == [
            inner, inner, json.dumps({"data": {"id": "2", "text": "c"}})]

    def test_an_over_long_line_read_in_small_pieces(self) -> None:
        """Memory stays bounded and the count is right whatever the read size."""
        for size in (1, 100, 999, 1001, 4096):
            lines = frame_lines(io.BytesIO(b"x" * 3000 + b"\r" + b"after"), "f", LIMITS, size)
            first, second = list(lines)
            assert first.rejection is not None and "3000 bytes" in first.rejection.detail
            assert second.text == "after"


class TestUnencodable:
    @pytest.mark.parametrize("obj", [
        {"data": {"id": "\udfff", "text": "fine"}},
        {"data": {"id": "1", "text": "fine", "author_id": "\udfff"}},
        {"data": {"id": "1", "text": "x", "note_tweet": {"text": "bad \udfff"}}},
        {"id_str": "1", "text": "fine", "user": {"screen_name": "\ud800"}},
    ])
    def test_lone_surrogates_in_any_field_are_rejected(self, obj: dict[str, object]) -> None:
        """A lone surrogate escape anywhere the output would carry it: invalid_unicode."""
        result = parse_line(json.dumps(obj), "auto", "r", LIMITS)
        assert isinstance(result, Rejection) and result.code == "invalid_unicode"

    @pytest.mark.parametrize("rating", ["nan", "inf", "-Infinity"])
    def test_non_finite_ratings_are_rejected(self, rating: str) -> None:
        """A TSV rating of NaN or infinity would not be JSON in the output."""
        result = parse_line(f"1\t{rating}\tsome text", "tsv", "r", LIMITS)
        assert isinstance(result, Rejection) and result.code == "bad_tsv"


class TestFramingProperty:
    @given(st.lists(st.text(st.characters(blacklist_categories=("Cs",),  # type: ignore[arg-type]
                                          blacklist_characters="\r\n\u2028\u2029"),
                            min_size=1, max_size=30).filter(str.strip), max_size=30),
           st.lists(st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\u2029"]), min_size=1),
           st.integers(1, 50))
    def test_any_separators_any_read_size_give_back_the_lines(
            self, lines: list[str], seps: list[str], chunk_size: int) -> None:
        """Plain-text lines joined by any mix of the separators come back, in order."""
        lines = [ln for ln in lines if not ln.lstrip().startswith(("{", "["))]
        joined = "".join(ln + seps[i % len(seps)] for i, ln in enumerate(lines))
        limits = Limits(max_line_bytes=10_000)
        framed = [ln.text for ln in frame_lines(io.BytesIO(joined.encode()), "f", limits,
                                                chunk_size)]
        assert framed == lines
