"""Signed control messages: authentic ones pass; unsigned, forged, expired and replayed do not."""

from __future__ import annotations

import pytest

from broker_config.signing import Verifier, sign

SECRET = "s3cret"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestSigning:
    def test_authentic_message_passes_once(self) -> None:
        """A fresh, correctly signed message passes; the same message again is a replay."""
        clock = Clock()
        args = sign(SECRET, "host_drain", {"reason": "fan swap"}, "w1@n", clock())
        verifier = Verifier(SECRET, clock)
        assert verifier.refusal("host_drain", args, "w1@n") is None
        assert verifier.refusal("host_drain", args, "w1@n") == "replayed"

    @pytest.mark.parametrize(("change", "expected"), [
        (lambda a: {k: v for k, v in a.items() if not k.startswith("_")}, "unsigned"),
        (lambda a: {**a, "reason": "something else"}, "forged"),
        (lambda a: {**a, "_sig": "0" * 64}, "forged"),
        (lambda a: {**a, "_nonce": "another"}, "forged"),
    ])
    def test_tampering_is_refused(self, change, expected: str) -> None:  # type: ignore[no-untyped-def]
        """Dropping the signature or changing anything it covers is refused."""
        clock = Clock()
        args = sign(SECRET, "host_drain", {"reason": "fan swap"}, "w1@n", clock())
        assert Verifier(SECRET, clock).refusal("host_drain", change(args), "w1@n") == expected

    def test_signature_is_bound_to_command_and_destination(self) -> None:
        """A signature for one worker or command does not work for another."""
        clock = Clock()
        args = sign(SECRET, "host_drain", {"reason": "x"}, "w1@n", clock())
        assert Verifier(SECRET, clock).refusal("host_drain", args, "w2@n") == "forged"
        assert Verifier(SECRET, clock).refusal("host_admit", args, "w1@n") == "forged"

    def test_wrong_secret_is_forged(self) -> None:
        """A message signed with another secret is forged."""
        clock = Clock()
        args = sign("other", "host_drain", {"reason": "x"}, "w1@n", clock())
        assert Verifier(SECRET, clock).refusal("host_drain", args, "w1@n") == "forged"

    @pytest.mark.parametrize("skew", [-31.0, 31.0])
    def test_expired_both_ways(self, skew: float) -> None:
        """A timestamp more than 30 s from the receiver's clock is expired."""
        clock = Clock()
        args = sign(SECRET, "host_drain", {"reason": "x"}, "w1@n", clock() + skew)
        assert Verifier(SECRET, clock).refusal("host_drain", args, "w1@n") == "expired"

    def test_no_secret_means_no_signature_and_no_check(self) -> None:
        """Without a secret nothing is added and everything passes (development only)."""
        assert sign("", "host_drain", {"reason": "x"}, "w1@n", 1.0) == {"reason": "x"}
        assert Verifier("", Clock()).refusal("host_drain", {"reason": "x"}, "w1@n") is None

    def test_old_nonces_are_forgotten(self) -> None:
        """Nonces older than the window are pruned (they would be expired anyway)."""
        clock = Clock()
        verifier = Verifier(SECRET, clock)
        for i in range(50):
            clock.now = 1000.0 + i * 10
            args = sign(SECRET, "host_gate", {}, "w1@n", clock())
            assert verifier.refusal("host_gate", args, "w1@n") is None
        assert len(verifier._seen) <= 4

    def test_previous_secret_is_accepted_during_a_rotation(self) -> None:
        """Messages signed with the previous secret still pass while it is configured."""
        clock = Clock()
        old = sign("old", "host_drain", {"reason": "x"}, "w1@n", clock())
        assert Verifier("new", clock, previous="old").refusal("host_drain", old, "w1@n") is None
        old = sign("old", "host_drain", {"reason": "x"}, "w1@n", clock())
        assert Verifier("new", clock).refusal("host_drain", old, "w1@n") == "forged"


class MemoryNonces:
    """An in-memory NonceMemory: what RedisNonces keeps in Redis (tests/integration checks it)."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.reachable = True

    def first_use(self, nonce: str, ttl_s: float) -> bool | None:
        if not self.reachable:
            return None
        first = nonce not in self.used
        self.used.add(nonce)
        return first


class TestReplayAcrossRestarts:
    def test_a_restarted_receiver_still_refuses_a_replay(self) -> None:
        """Nonces live in the shared memory: a new Verifier (a restarted worker) refuses it."""
        clock, nonces = Clock(), MemoryNonces()
        args = sign(SECRET, "host_admit", {"reason": "r"}, "w1@n", clock())
        assert Verifier(SECRET, clock, nonces=nonces).refusal("host_admit", args, "w1@n") is None
        restarted = Verifier(SECRET, clock, nonces=nonces)
        assert restarted.refusal("host_admit", args, "w1@n") == "replayed"

    def test_an_unreachable_memory_refuses_rather_than_risk_a_replay(self) -> None:
        """No memory to ask: the command is refused as unverifiable, not accepted."""
        clock, nonces = Clock(), MemoryNonces()
        nonces.reachable = False
        args = sign(SECRET, "host_drain", {"reason": "r"}, "w1@n", clock())
        assert Verifier(SECRET, clock, nonces=nonces).refusal("host_drain", args,
                                                              "w1@n") == "unverifiable"

    def test_signed_says_whether_a_message_is_authentic(self) -> None:
        """`signed` is False without a secret, for unsigned and for forged messages."""
        clock = Clock()
        args = sign(SECRET, "rate_limit", {"task_name": "t"}, "w1@n", clock())
        assert Verifier(SECRET, clock).signed("rate_limit", args, "w1@n")
        assert not Verifier("", clock).signed("rate_limit", args, "w1@n")
        assert not Verifier(SECRET, clock).signed("rate_limit", {"task_name": "t"}, "w1@n")
