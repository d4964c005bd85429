"""Known-answer probes: texts whose exact VADER scores the checker computed itself, sent to each
worker's private verify queue; a wrong answer is silent corruption.

The answers are computed when the checker starts, with the same library the workers use, from
messages that ship with host (never hard-coded numbers).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Protocol

from broker_config.contract import envelope
from broker_config.logs import get_logger
from broker_config.queues import verify_queue, verify_queue_name
from healthcheck.policy import ProbeResult, State
from healthcheck.policy.config import Probes
from workers.framing import frame_lines
from workers.inbound import Limits, Message, parse_line
from workers.sentiment import analyse_text

log = get_logger(__name__)

SCORES = ("neg", "neu", "pos", "compound")


@dataclass(frozen=True, slots=True)
class KnownAnswer:
    """A probe text and the scores a correct worker returns for it."""

    text: str
    scores: Mapping[str, float]


def known_answers(limit: int = 25) -> list[KnownAnswer]:
    """Answers computed now from the probe inputs that ship with the checker (``data/probes.txt``:
    the first lines of the demo's sample, mixed formats; its analysable lines)."""
    sample = files("healthcheck") / "data" / "probes.txt"
    answers = []
    with sample.open("rb") as f:
        for line in frame_lines(f, "probe", Limits()):
            parsed = parse_line(line.text, "auto", line.ref, Limits()) if line.text else None
            if isinstance(parsed, Message):
                scores = analyse_text(parsed.text)
                values: Mapping[str, Any] = scores
                answers.append(KnownAnswer(parsed.text, {k: float(values[k]) for k in SCORES}))
            if len(answers) >= limit:
                break
    return answers


def judge(answer: KnownAnswer, result: Any, worker: str) -> tuple[str, str]:
    """``ok`` or ``wrong`` (with what differed) for one probe's result."""
    if not isinstance(result, dict) or result.get("status") != "analysed":
        return "wrong", f"not an analysis: {str(result)[:80]}"
    if result.get("worker") != worker:
        return "wrong", f"answered by {result.get('worker')}, not {worker}"
    for key in SCORES:
        if result.get(key) != answer.scores[key]:
            return "wrong", f"{key} {result.get(key)} != {answer.scores[key]}"
    return "ok", ""


class ProbeTransport(Protocol):
    """Sends a probe to one worker and fetches answers."""

    def send(self, worker: str, text: str, probe_id: str) -> str:
        """Send; the id to collect the answer by."""

    def answers(self, ids: Iterable[str]) -> dict[str, Any]:
        """The answers available now, by id (a missing id: no answer yet)."""


class CeleryProbeTransport:
    """``host.analyse`` on the worker's verify queue; answers from the result backend."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send(self, worker: str, text: str, probe_id: str) -> str:
        queue: Any = verify_queue(worker)
        result = self.app.send_task("host.analyse", args=[envelope(probe_id, text, "text")],
                                    queue=queue, ignore_result=False)
        return str(result.id)

    def answers(self, ids: Iterable[str]) -> dict[str, Any]:
        wanted = list(ids)
        if not wanted:
            return {}
        ready = self.app.backend.get_many(wanted, interval=0, max_iterations=1)
        return {task_id: meta.get("result") for task_id, meta in ready}


@dataclass
class _Pending:
    worker: str
    answer: KnownAnswer
    sent_at: float
    late: bool = False


#: States whose probes go first: re-admission waits on them.
_FIRST = frozenset({State.QUARANTINED, State.PROBATION})


class Prober:
    """Decides who is due a probe, sends it, and turns answers into ProbeResults.

    Args:
        transport: how probes travel.
        answers: the known answers to cycle through.
        config: cadence and deadlines.
        clock: wall-clock seconds.
    """

    def __init__(self, transport: ProbeTransport, answers: list[KnownAnswer], config: Probes,
                 clock: Callable[[], float] = time.time) -> None:
        if not answers:
            raise ValueError("probes need at least one known answer")
        self.transport = transport
        self.config = config
        self.clock = clock
        self._answers = itertools.cycle(answers)
        self._pending: dict[str, _Pending] = {}
        self._last_sent: dict[str, float] = {}
        self._seq = itertools.count()
        self._allowance = config.max_per_s  # probes that may go now (a token bucket, 1 s deep)
        self._refilled = clock()

    def send_due(self, states: Mapping[str, State]) -> None:
        """Probe the workers whose turn it is (never one that still has a probe out), at most
        ``max_per_s`` a second: quarantined and probation workers first, then the longest
        waiting."""
        now = self.clock()
        self._allowance = min(self.config.max_per_s,
                              self._allowance + (now - self._refilled) * self.config.max_per_s)
        self._refilled = now
        if self._allowance < 1:
            return
        busy = {p.worker for p in self._pending.values()}
        due = [(state not in _FIRST, self._last_sent.get(worker, 0.0), worker)
               for worker, state in states.items()
               if state not in (State.OFFLINE, State.MAINTENANCE) and worker not in busy
               and now - self._last_sent.get(worker, 0.0) >= self.config.every_s]
        for _, _, worker in heapq.nsmallest(int(self._allowance), due):
            self._allowance -= 1
            answer = next(self._answers)
            task_id = self.transport.send(worker, answer.text, f"probe:{next(self._seq)}")
            self._pending[task_id] = _Pending(worker, answer, now)
            self._last_sent[worker] = now

    def collect(self) -> list[ProbeResult]:
        """Outcomes that are known now: ok, wrong, late (still waiting) or missing (gave up)."""
        now = self.clock()
        results = []
        answered = self.transport.answers(self._pending)
        for task_id, pending in list(self._pending.items()):
            if task_id in answered:
                outcome, detail = judge(pending.answer, answered[task_id], pending.worker)
                del self._pending[task_id]
                if outcome == "ok" and pending.late:
                    continue  # already counted as late
                results.append(ProbeResult(pending.worker, now, outcome, detail, task_id))
            elif now - pending.sent_at > self.config.missing_s:
                del self._pending[task_id]
                results.append(ProbeResult(pending.worker, now, "missing",
                                           f"no answer in {self.config.missing_s:g}s", task_id))
            elif not pending.late and now - pending.sent_at > self.config.late_s:
                pending.late = True
                results.append(ProbeResult(pending.worker, now, "late",
                                           f"no answer in {self.config.late_s:g}s", task_id))
        return results

    def round(self, states: Callable[[], Mapping[str, State]], send: bool) -> list[ProbeResult]:
        """Send what is due (when ``send``) and judge the answers that came back; nothing when
        the broker or the result backend failed (the next round tries again)."""
        try:
            if send:
                self.send_due(states())
            results = self.collect()
        except Exception as exc:  # the broker or the backend failed: probe again next round
            log.error("probes_failed", error=str(exc))
            return []
        for result in results:
            if result.outcome != "ok":
                log.warning("probe_" + result.outcome, worker=result.worker, detail=result.detail,
                            task_id=result.task_id, queue=verify_queue_name(result.worker))
        return results

    def forget(self, worker: str) -> None:
        """Drop a worker's pending probes (it went OFFLINE)."""
        for task_id in [t for t, p in self._pending.items() if p.worker == worker]:
            del self._pending[task_id]

    def reset(self) -> None:
        """Drop every pending probe (a checker that leads again after a pause must not judge
        answers it stopped waiting for as missing)."""
        self._pending.clear()
        self._last_sent.clear()


class InMemoryProbeTransport:
    """Answers probes with a function, for unit tests."""

    def __init__(self, answer: Callable[[str, str], Any] | None = None) -> None:
        self.answer = answer or (lambda worker, text: {"status": "analysed", "worker": worker,
                                                       **analyse_text(text)})
        self.sent: list[tuple[str, str]] = []
        self._answers: dict[str, Any] = {}
        self.hold = False

    def send(self, worker: str, text: str, probe_id: str) -> str:
        task_id = f"t{len(self.sent)}"
        self.sent.append((worker, task_id))
        if not self.hold:
            self._answers[task_id] = self.answer(worker, text)
        return task_id

    def answers(self, ids: Iterable[str]) -> dict[str, Any]:
        return {i: self._answers[i] for i in ids if i in self._answers}
