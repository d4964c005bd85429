"""A submission's body into messages (api.inputs), and the keys' pure parts: no I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.inputs import Accepted, BadBody, Input, Problem, check, read_inputs
from api.keys import ApiKey, InMemoryKeyStore, KeyRing, RateLimiter, new_key, revoke, split_token
from workers.inbound import Limits, parse_line

LIMITS = Limits()


class TestLayouts:
    def test_a_json_document_of_every_layout(self) -> None:
        body = json.dumps([{"text": "a", "ref": "r1"}, {"data": {"id": 5, "text": "b"}},
                           {"id_str": "6", "text": "c"}, {"text": "d"}]).encode()
        got = read_inputs(body, "json")
        assert [(i.ref, i.fmt) for i in got if isinstance(i, Input)] == [
            ("r1", "text"), ("5", "jsonl"), ("6", "jsonl"), (None, "text")]

    def test_a_v2_response_is_its_tweets(self) -> None:
        body = json.dumps({"data": [{"id": "1", "text": "x"}, {"id": "2", "text": "y"}]})
        assert [i.ref for i in read_inputs(body.encode(), "json") if isinstance(i, Input)] == [
            "1", "2"]

    def test_lines(self) -> None:
        assert [i.line for i in read_inputs(b"one\n\n  \ntwo\r\n", "text")
                if isinstance(i, Input)] == ["one", "two"]
        tsv = read_inputs(b"t1\t0.5\thappy\n", "tsv")
        assert tsv == [Input("t1", "t1\t0.5\thappy", "tsv")]
        nd = read_inputs(b'{"text": "x", "ref": 3}\nnot json\n', "jsonl")
        assert isinstance(nd[0], Input) and nd[0].ref == "3"
        assert isinstance(nd[1], Problem) and nd[1].reason == "invalid_json"

    @pytest.mark.parametrize(("body", "fmt", "code"), [
        (b"\xff", "text", "invalid_utf8"), (b"{", "json", "invalid_json"),
        (b"[" * 100_000, "json", "json_too_deep")])
    def test_a_body_that_cannot_be_read(self, body: bytes, fmt: str, code: str) -> None:
        with pytest.raises(BadBody) as err:
            read_inputs(body, fmt)
        assert err.value.code == code

    def test_one_refused_input_refuses_all_with_each_reason(self) -> None:
        inputs = read_inputs(json.dumps([{"text": "ok"}, {"text": ""}, {"text": 5}, [1],
                                         {"ref": True, "text": "x"}]).encode(), "json")
        result = check(inputs, LIMITS, "k1", 1.0)
        assert isinstance(result, list)
        assert [(p.index, p.reason) for p in result] == [
            (1, "empty_text"), (2, "wrong_type"), (3, "unrecognised_json"), (4, "wrong_type")]

    def test_accepted_messages_carry_their_ids_refs_and_envelopes(self) -> None:
        result = check(read_inputs(b'[{"text": "a", "ref": "r"}, {"text": "b"}]', "json"),
                       LIMITS, "k1", 7.0)
        assert isinstance(result, Accepted)
        ids = [e["id"] for e in result.entries]
        assert len(set(ids)) == 2 and [e["ref"] for e in result.entries] == ["r", ids[1]]
        assert [e["ref"] for e in result.envelopes] == ids  # workers answer by message id
        assert all(e["key"] == "k1" and e["accepted_at"] == 7.0 for e in result.entries)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none(),
                              st.dictionaries(st.sampled_from(["text", "ref", "data", "id"]),
                                              st.one_of(st.text(max_size=20), st.integers()),
                                              max_size=3)), max_size=8))
    def test_whatever_the_body_an_input_is_accepted_exactly_when_a_worker_would_take_it(
            self, items: list[object]) -> None:
        inputs = read_inputs(json.dumps(items).encode(), "json")
        result = check(inputs, LIMITS, "k", 0.0)
        if isinstance(result, Accepted):
            for env in result.envelopes:
                assert not hasattr(parse_line(env["line"], env["format"], env["ref"], LIMITS),
                                   "code")
        else:
            assert result and all(p.reason for p in result)


class TestKeys:
    def test_a_token_is_known_by_its_digest_only(self) -> None:
        key, token = new_key("svc", ("submit",), 5)
        assert token not in key.to_json() and split_token(token) == (key.id, token.split("_", 2)[2])
        ring = KeyRing(InMemoryKeyStore({key.id: key}))
        ring.refresh()
        assert ring.who(token) == key
        assert ring.who(token + "x") is None and ring.who("hk_" + key.id + "_") is None
        assert ring.who("Bearer nonsense") is None
        assert ApiKey.from_json(key.to_json()) == key

    def test_a_revoked_key_is_refused_at_the_next_read(self) -> None:
        store = InMemoryKeyStore()
        key, token = new_key("svc", ("read",))
        store.put(key)
        ring = KeyRing(store)
        ring.refresh()
        assert ring.who(token) is not None
        revoke(store, key.id)
        assert ring.who(token) is not None  # until the next read, within a second
        ring.refresh()
        assert ring.who(token) is None and ring.knows(token)
        with pytest.raises(LookupError):
            revoke(store, "nope")

    @pytest.mark.parametrize("scopes", [(), ("admin",), ("submit", "drain")])
    def test_only_known_scopes(self, scopes: tuple[str, ...]) -> None:
        with pytest.raises(ValueError):
            new_key("x", scopes)

    def test_the_rate_is_kept_on_average_with_a_second_of_burst(self) -> None:
        limiter = RateLimiter()
        allowed = [limiter.take("k", 10.0, t / 100) == 0 for t in range(300)]  # 3 s at 100/s
        assert 38 <= sum(allowed) <= 41, sum(allowed)  # 10 of burst, then 10 a second
        wait = limiter.take("slow", 0.5, 0.0), limiter.take("slow", 0.5, 0.1)
        assert wait[0] == 0 and wait[1] == pytest.approx(1.9)  # (1 - 0.05) / 0.5
