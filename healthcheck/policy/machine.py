"""The per-worker state machine: fast to convict, slow to forgive.

``HealthPolicy`` is pure: every method takes the worker's health, an observation or ``now``
(and the jitter to use, when a back-off starts) and returns a ``Step``. Ejections for wear
come back as a *proposal* (``Step.eject``): only the fleet, which sees every worker, may
admit them (see ``fleet.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from healthcheck.policy.config import HEALABLE, PolicyConfig
from healthcheck.policy.detectors import CostNorm, assess, sustained
from healthcheck.policy.model import (
    CONSUMING,
    Cause,
    Code,
    State,
    Transition,
    Verdict,
    WorkerHealth,
    transition_code,
)
from healthcheck.policy.observations import Heartbeat, ProbeResult, WearReport

#: Where an OFFLINE worker goes when it is heard from again, by the state it had.
_RESUME = {
    State.HEALTHY: State.HEALTHY,
    State.SUSPECT: State.HEALTHY,  # a restart clears the wear that made it suspect
    State.PROBATION: State.PROBATION,
    State.DRAINING: State.QUARANTINED,
    State.QUARANTINED: State.QUARANTINED,
    State.MAINTENANCE: State.MAINTENANCE,
}


@dataclass(frozen=True, slots=True)
class Proposal:
    """An ejection the fleet guard must admit (or hold) before it happens."""

    reason: str
    cause: Cause
    evidence: Mapping[str, float | str]
    #: When the observation that proposed it arrived: detection time runs from here.
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one policy call for one worker."""

    health: WorkerHealth
    transitions: tuple[Transition, ...] = ()
    eject: Proposal | None = None
    #: The worker's latest verdict said "out of rotation for wear" (eject proposed or held).
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Decides one worker's health from observations. Pure: no clock, no I/O.

    Args:
        config: thresholds, windows and bounds.
    """

    config: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)

    # --- observations -------------------------------------------------------------------

    def observe(self, w: WorkerHealth, obs: WearReport | ProbeResult | Heartbeat,
                fleet_p95: float | None = None, jitter_s: float = 0.0,
                cost_norm: CostNorm | None = None) -> Step:
        """Apply any observation to a worker."""
        if isinstance(obs, WearReport):
            return self.observe_wear(w, obs, fleet_p95, jitter_s, cost_norm)
        if isinstance(obs, ProbeResult):
            return self.observe_probe(w, obs, jitter_s)
        return self._seen(w, obs.at, obs.started)

    def observe_wear(self, w: WorkerHealth, r: WearReport, fleet_p95: float | None = None,
                     jitter_s: float = 0.0, cost_norm: CostNorm | None = None) -> Step:
        """Judge a wear report and move the worker accordingly."""
        queues = r.queues or w.queues
        consuming = w.consuming if r.consuming is None else r.consuming
        if queues != w.queues or consuming != w.consuming:
            w = dataclasses.replace(w, queues=queues, consuming=consuming)
        step = self._seen(w, r.at)
        w, done = step.health, step.transitions
        verdict = assess(r, self.config, fleet_p95, tight=w.state is State.PROBATION,
                         in_rotation=w.state in CONSUMING, cost_norm=cost_norm)
        hot = w.hot + 1 if verdict.over_hard else 0
        if hot != w.hot:
            w = dataclasses.replace(w, hot=hot, hot_since=r.at if hot == 1 else w.hot_since)
        verdict = sustained(verdict, r, hot, r.at - w.hot_since, self.config)
        busy = ", ".join(f"{m} {r.wear[m].value:g}" for m in verdict.busy)
        if busy != w.busy:
            w = dataclasses.replace(w, busy=busy, busy_metrics=tuple(verdict.busy))
        if w.state is State.DRAINING:
            if r.inflight == 0:
                w, t = self._quarantine(w, f"drained ({w.reason})", r.at, jitter_s)
                return Step(w, (*done, t), degraded=verdict.level != "ok")
            return Step(w, done, degraded=verdict.level != "ok")
        if w.state is State.QUARANTINED and verdict.level != "ok":
            # Re-admission needs probe passes with clean wear in between: start over.
            return Step(dataclasses.replace(w, passes=0), done)
        if w.state in (State.QUARANTINED, State.MAINTENANCE):
            return Step(w, done)
        return self._judge(w, verdict, r.at, done, exempt=bool(r.self_protected))

    def observe_probe(self, w: WorkerHealth, p: ProbeResult, jitter_s: float = 0.0) -> Step:
        """A wrong answer quarantines at once; passes re-admit a quarantined worker."""
        # Only an answer is a sign of life; a late or missing one is the opposite.
        step = self._seen(w, p.at) if p.outcome in ("ok", "wrong") else Step(w)
        w, done = step.health, step.transitions
        if w.state is State.MAINTENANCE:
            return Step(w, done)
        if p.outcome == "wrong":
            if w.state is State.QUARANTINED:
                # Still wrong: the back-off starts over, longer.
                w = dataclasses.replace(w, passes=0, ejections=w.ejections + 1,
                                        backoff_until=p.at + self.backoff_s(w.ejections + 1,
                                                                            jitter_s))
                return Step(w, done)
            w = dataclasses.replace(w, ejections=w.ejections + 1)
            w, t = self._move(w, State.QUARANTINED, f"wrong probe answer: {p.detail}".strip(": "),
                              p.at, Cause.PROBE, evidence={"probe": "wrong"})
            w = dataclasses.replace(w, backoff_until=p.at + self.backoff_s(w.ejections, jitter_s))
            return Step(w, (*done, t))
        if p.outcome == "ok":
            return self._probe_passed(w, p.at, done)
        # late or missing: a soft signal
        if w.state is State.QUARANTINED:
            return Step(dataclasses.replace(w, passes=0), done)
        return self._judge(w, Verdict("soft", (f"probe {p.outcome}",), {"probe": p.outcome}),
                           p.at, done)

    # --- time ---------------------------------------------------------------------------

    def tick(self, w: WorkerHealth, now: float, jitter_s: float = 0.0) -> Step:
        """What the passing of time alone does: OFFLINE, drain time-outs, probation's end."""
        c = self.config
        if w.state is not State.OFFLINE and now - w.last_seen > c.offline_after_s:
            silent = now - w.last_seen
            resume = _RESUME[w.state]
            w2, t = self._move(w, State.OFFLINE, f"no sign of life for {silent:.1f}s", now,
                               w.cause, evidence={"silent_s": round(silent, 3)})
            return Step(dataclasses.replace(w2, resume=resume, cause=w.cause), (t,))
        if w.state is State.DRAINING and now - w.since > c.drain_timeout_s:
            w, t = self._quarantine(w, f"drain timed out after {c.drain_timeout_s:g}s", now,
                                    jitter_s, Code.DRAIN_TIMEOUT)
            return Step(w, (t,))
        if w.state is State.PROBATION:
            return self._maybe_graduate(w, now, ())
        if (w.state is State.HEALTHY and w.ejections
                and now - w.since >= c.recovery.forgive_after_s):
            return Step(dataclasses.replace(w, ejections=0))
        return Step(w)

    def backoff_s(self, ejections: int, jitter_s: float = 0.0) -> float:
        """Quarantine length for the n-th ejection: min(base x 2^(n-1), max) + jitter.

        With base 30 s and max 300 s: 30, 60, 120, 240, 300, 300, ... seconds.
        """
        b = self.config.backoff
        exponent = min(max(ejections - 1, 0), 32)
        backoff: float = min(b.base_s * 2.0**exponent, b.max_s)
        return backoff + max(0.0, min(jitter_s, b.jitter_s))

    # --- the fleet's answers to a proposal ------------------------------------------------

    def eject(self, w: WorkerHealth, proposal: Proposal, now: float) -> Step:
        """Enforce an admitted ejection: the worker drains."""
        heal = (self.config.healing.enabled and proposal.cause is Cause.WEAR
                and any(k in proposal.evidence for k in HEALABLE))
        w = dataclasses.replace(w, ejections=w.ejections + 1, heal=heal)
        w, t = self._move(w, State.DRAINING, proposal.reason, now, proposal.cause,
                          evidence={**proposal.evidence, "reported_at": proposal.at})
        return Step(w, (t,), degraded=True)

    def hold(self, w: WorkerHealth, proposal: Proposal, why: str, now: float) -> Step:
        """The guard refused: the worker keeps consuming, marked SUSPECT, its reason saying
        that it is held and why, with the latest readings (it is called again for every
        report that still wants the worker out, so the reason tracks them)."""
        reason = f"held in rotation by the guard ({why}): {proposal.reason}"
        if w.state is State.HEALTHY:
            w, t = self._move(w, State.SUSPECT, reason, now, evidence=proposal.evidence,
                              code=Code.HELD)
            return Step(dataclasses.replace(w, breaches=self.config.recovery.confirm_breaches,
                                            held=why), (t,), degraded=True)
        return Step(dataclasses.replace(w, reason=reason, held=why), degraded=True)

    # --- operators --------------------------------------------------------------------

    def operator(self, w: WorkerHealth, to: State, reason: str, now: float,
                 jitter_s: float = 0.0, stopping: bool = False) -> Step:
        """An operator's drain (MAINTENANCE), quarantine, or restore (PROBATION or HEALTHY).

        ``stopping``: a drain because the worker's platform is about to stop it; it ends by
        itself when the worker starts again (Celery's worker-online, or heard from after
        OFFLINE), where a maintenance drain lasts until ``restore``. A worker already out of
        rotation (quarantined, draining, in maintenance, offline) stays as it is: its platform
        may stop it, and a restart is never a way back in (it would bring a worker
        quarantined for wrong answers back HEALTHY, unprobed, or end a person's maintenance).

        Raises:
            ValueError: a target state operators cannot set, or an empty reason.
        """
        if to not in (State.MAINTENANCE, State.QUARANTINED, State.PROBATION, State.HEALTHY):
            raise ValueError(f"operators cannot move a worker to {to}")
        if stopping and to is not State.MAINTENANCE:
            raise ValueError("only a drain (MAINTENANCE) can be for a stop")
        if not reason.strip():
            raise ValueError("an operator action needs a reason")
        cause = Cause.OPERATOR if to in (State.MAINTENANCE, State.QUARANTINED) else Cause.NONE
        if stopping:
            cause = Cause.STOPPING
            if w.state not in CONSUMING:
                return Step(w)
        if w.state is to and w.cause is cause:
            return Step(w)
        if to in (State.PROBATION, State.HEALTHY):
            w = dataclasses.replace(w, for_person="", heal=False)
        # Same state, new owner (a person quarantines a worker the checker had quarantined):
        # recorded as a transition, so the audit log says who holds it now.
        w2, t = self._move(w, to, reason, now, cause, automatic=False)
        if to is State.QUARANTINED:
            w2 = dataclasses.replace(w2, backoff_until=now + self.backoff_s(1, jitter_s))
        return Step(w2, (t,))

    # --- internals --------------------------------------------------------------------

    def _seen(self, w: WorkerHealth, at: float, started: bool = False) -> Step:
        w = dataclasses.replace(w, last_seen=max(w.last_seen, at))
        if started and w.state is State.MAINTENANCE and w.cause is Cause.STOPPING:
            w, t = self._move(w, State.HEALTHY, "started again after its platform stopped it",
                              at, code=Code.RETURNED)
            return Step(w, (t,))
        if w.state is not State.OFFLINE:
            return Step(w)
        back = w.resume or State.HEALTHY
        if back is State.MAINTENANCE and w.cause is Cause.STOPPING:
            back = State.HEALTHY  # it stopped as its platform meant it to, and is back
        cause = w.cause if back in (State.QUARANTINED, State.MAINTENANCE) else Cause.NONE
        w, t = self._move(w, back, "heard from again", at, cause)
        return Step(dataclasses.replace(w, resume=None), (t,))

    def _judge(self, w: WorkerHealth, verdict: Verdict, at: float,
               done: tuple[Transition, ...], exempt: bool = False) -> Step:
        """HEALTHY, SUSPECT or PROBATION: convict fast, forgive slowly."""
        rec = self.config.recovery
        if verdict.level == "ok":
            if w.state is State.HEALTHY and w.breaches == 0 and w.passes >= rec.passes:
                return Step(w, done)  # nothing to count: passes matter on the way back only
            w = dataclasses.replace(w, breaches=0, passes=w.passes + 1)
            if (w.state is State.SUSPECT and w.passes >= rec.passes
                    and w.clean_for(at) >= rec.min_suspect_s):
                w, t = self._move(w, State.HEALTHY, f"{w.passes} clean reports", at)
                return Step(w, (*done, t))
            if w.state is State.PROBATION:
                return self._maybe_graduate(w, at, done)
            return Step(w, done)
        cause = Cause.SELF if exempt else Cause.WEAR
        proposal = Proposal(verdict.reason, cause, verdict.evidence, at)
        if verdict.level == "hard" or w.state is State.PROBATION:
            w = dataclasses.replace(w, passes=0, last_breach=at)
            return Step(w, done, eject=proposal, degraded=True)
        breaches = w.breaches + 1
        w = dataclasses.replace(w, breaches=breaches, passes=0, last_breach=at)
        if breaches >= rec.confirm_breaches:
            confirmed = Proposal(f"{verdict.reason} ({breaches} reports in a row)", cause,
                                 verdict.evidence, at)
            return Step(w, done, eject=confirmed, degraded=True)
        if w.state is State.HEALTHY:
            w2, t = self._move(w, State.SUSPECT, verdict.reason, at, evidence=verdict.evidence)
            return Step(dataclasses.replace(w2, breaches=breaches), (*done, t))
        return Step(w, done)

    def _probe_passed(self, w: WorkerHealth, at: float, done: tuple[Transition, ...]) -> Step:
        if not w.probing(at):
            return Step(w, done)  # passes during the back-off do not count
        if w.cause is Cause.OPERATOR or w.for_person:
            return Step(w, done)  # a person's to end: only their restore does
        w = dataclasses.replace(w, passes=w.passes + 1)
        if w.passes >= self.config.recovery.probe_passes:
            w, t = self._move(w, State.PROBATION,
                              f"back-off over and {w.passes} probes passed", at)
            return Step(w, (*done, t))
        return Step(w, done)

    def _maybe_graduate(self, w: WorkerHealth, now: float, done: tuple[Transition, ...]) -> Step:
        rec = self.config.recovery
        if w.passes >= rec.passes and w.clean_for(now) >= rec.probation_s:
            w, t = self._move(w, State.HEALTHY,
                              f"probation passed: {w.clean_for(now):.0f}s clean", now)
            return Step(w, (*done, t))
        return Step(w, done)

    def _quarantine(self, w: WorkerHealth, reason: str, now: float, jitter_s: float,
                    code: Code | None = None) -> tuple[WorkerHealth, Transition]:
        """Drained: quarantined, its back-off started; recycled when it is out for a cause a
        restart cures, unless it was recycled ``max_per_hour`` times in the last hour: then it
        stays out for a person."""
        recycle, recycles, for_person = False, w.recycles, w.for_person
        if w.heal:
            recycles = tuple(t for t in w.recycles if now - t < 3600.0)
            limit = self.config.healing.max_per_hour
            if len(recycles) < limit:
                recycle, recycles = True, (*recycles, now)
            else:
                for_person = f"recycled {len(recycles)} times in the last hour, still worn"
                reason = f"{for_person}: {reason}"
        w2, t = self._move(w, State.QUARANTINED, reason, now, w.cause, code=code)
        if recycle:
            t = dataclasses.replace(t, recycle=True)
        return dataclasses.replace(w2, backoff_until=now + self.backoff_s(w.ejections, jitter_s),
                                   heal=False, recycles=recycles, for_person=for_person), t

    def _move(self, w: WorkerHealth, to: State, reason: str, now: float,
              cause: Cause = Cause.NONE, automatic: bool = True,
              evidence: Mapping[str, float | str] | None = None, code: Code | None = None
              ) -> tuple[WorkerHealth, Transition]:
        # Never dated before the state it leaves began: an observation that arrived before a
        # person's restore, applied after it, moves the worker from the restore's time on.
        now = max(now, w.since)
        t = Transition(worker=w.name, from_state=w.state, to_state=to, reason=reason, at=now,
                       cause=cause, automatic=automatic, enforced=self.config.enforce,
                       evidence=dict(evidence or {}),
                       code=code or transition_code(w.state, to, automatic, cause))
        return dataclasses.replace(w, state=to, since=now, reason=reason, breaches=0, passes=0,
                                   cause=cause, held=""), t
