"""Hearing the fleet: events handed from the receiver to the loop, and whether the checker
can trust what it hears (or does not hear) enough to judge a silent worker."""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from typing import Any

from broker_config.logs import get_logger
from broker_config.wear_event import WEAR_EVENT
from healthcheck.intake.observations import EVENT_TYPES
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Fleet, State

log = get_logger(__name__)

#: A heartbeat this soon after the same worker's wear report is not applied: the report already
#: showed it alive (heartbeats are a third of a fleet's events).
HEARTBEAT_COVERED_S = 1.5


class Inbox(queue.Queue[tuple[list[dict[str, Any]], float]]):
    """Events waiting for the loop, in the batches they arrived in, with their arrival time.

    Args:
        metrics: counts every event received (task events, when workers send them for a
            monitor, are counted and dropped: the checker needs none).
        clock: the checker's wall clock.
        watch: told of every arrival (None: nothing watches).
    """

    def __init__(self, metrics: CheckerMetrics, clock: Callable[[], float],
                 watch: IntakeWatch | None = None) -> None:
        super().__init__()
        self.metrics, self.clock, self.watch = metrics, clock, watch
        #: When each worker's last wear report arrived (the receiver's thread writes it).
        self.reported: dict[Any, float] = {}

    def take(self, events: list[dict[str, Any]]) -> None:
        """The receiver's thread: queue what the loop applies, count everything."""
        at = self.clock()
        kept = []
        reported = self.reported
        for event in events:
            kind = event.get("type")
            self.metrics.event_received(kind)
            if self.watch is not None:
                self.watch.arrived(event, at)
            if kind == WEAR_EVENT:
                reported[event.get("hostname")] = at
                kept.append(event)
            elif kind == "worker-heartbeat" and at - reported.get(event.get("hostname"),
                                                                  -1e9) < HEARTBEAT_COVERED_S:
                continue  # a wear report this recent said all a heartbeat says: alive
            elif kind in EVENT_TYPES:
                kept.append(event)
        if kept:
            self.put((kept, at))

    def forget(self, worker: str) -> None:
        self.reported.pop(worker, None)
        if self.watch is not None:
            self.watch.forget(worker)


class Hearing:
    """Decides, tick by tick, whether the checker hears the fleet well enough to judge silence;
    excuses every worker the gap when it hears again; asks for a new subscription when deaf.

    Args:
        watch: the figures (None: events are handed in directly, as in unit tests: trusted).
    """

    def __init__(self, watch: IntakeWatch | None) -> None:
        self.watch = watch
        #: Takes a new event subscription (set by whoever runs the receiver).
        self.resubscribe: Callable[[str], None] | None = None
        self.untrusted_since: float | None = None
        self._resubscribed_at = 0.0

    @property
    def trusted_now(self) -> bool:
        """True while silence from a worker means the worker (nothing untrusted it)."""
        return self.untrusted_since is None

    def trusted(self, now: float, fleet: Fleet) -> bool:
        watch = self.watch
        if watch is None:
            return True
        expecting = any(w.state is not State.OFFLINE for w in fleet)
        if watch.trusted(now, expecting):
            if self.untrusted_since is not None:
                log.warning("intake_restored", gap_s=round(now - self.untrusted_since, 3))
                fleet.excuse_silence(now)
                self.untrusted_since = None
            return True
        if self.untrusted_since is None:
            self.untrusted_since = now
            log.warning("intake_untrusted", subscribed=watch.subscribed,
                        silent_s=round(now - watch.last_arrival, 3), lag_s=round(watch.lag_s, 3),
                        note="no worker is made OFFLINE until the checker hears the fleet again")
        # Renew a subscription that heard the fleet and then went silent; one taken since the
        # silence began would not hear more for being renewed (its silence is believed once it
        # is deaf_after_s old), and one being re-established is the receiver's business.
        if (expecting and watch.subscribed and watch.deaf(now)
                and watch.subscribed_at <= watch.last_arrival and self.resubscribe is not None
                and now - self._resubscribed_at >= watch.deaf_after_s):
            self._resubscribed_at = now
            self.resubscribe(f"no event for {now - watch.last_arrival:.1f}s")
        return False


class IntakeWatch:
    """Whether the checker hears the fleet, and how far behind it is.

    Two lags, neither of which subtracts another machine's clock from the checker's:

    - the loop's: how long the last applied event had waited since the receiver took it
      (both ends on the checker's clock);
    - the receiver's: how much longer events take to arrive than the quickest one from the
      same worker (arrival minus the sender's timestamp, less the smallest such difference
      seen: the two clocks' offset cancels out), the least of that over each second's events,
      so that one worker whose clock stepped back cannot make the whole intake look late.

    Args:
        deaf_after_s: silence (no event at all while live workers are known) after which the
            subscription is taken for lost.
        behind_after_s: a lag past which the checker's own sense of time is not trusted.
    """

    def __init__(self, deaf_after_s: float = 5.0, behind_after_s: float = 2.0) -> None:
        self.deaf_after_s = deaf_after_s
        self.behind_after_s = behind_after_s
        self.subscribed = False
        self.subscribed_at = 0.0
        self.last_arrival = 0.0
        self.loop_lag_s = 0.0
        self.transit_lag_s = 0.0
        self._quickest: dict[str, float] = {}
        self._window_start = 0.0
        self._window_least = 0.0

    def subscribe(self, now: float) -> None:
        """A subscription stands from ``now`` (the receiver's thread)."""
        self.subscribed, self.subscribed_at = True, now

    def lose(self) -> None:
        """The subscription is gone (the receiver's thread)."""
        self.subscribed = False

    def arrived(self, event: Mapping[str, Any], at: float) -> None:
        """The receiver took ``event`` at ``at`` (receiver thread)."""
        self.last_arrival = at
        sent, worker = event.get("timestamp"), event.get("hostname")
        if isinstance(sent, (int, float)) and isinstance(worker, str):
            transit = at - float(sent)
            quickest = min(self._quickest.get(worker, transit), transit)
            self._quickest[worker] = quickest
            if at - self._window_start >= 1.0:
                self.transit_lag_s = self._window_least
                self._window_start, self._window_least = at, transit - quickest
            else:
                self._window_least = min(self._window_least, transit - quickest)

    def applied(self, arrived_at: float, now: float) -> None:
        """The loop applied an event that arrived at ``arrived_at``."""
        self.loop_lag_s = max(0.0, now - arrived_at)

    def forget(self, worker: str) -> None:
        self._quickest.pop(worker, None)

    @property
    def lag_s(self) -> float:
        """The larger of the two lags."""
        return max(self.loop_lag_s, self.transit_lag_s)

    def deaf(self, now: float) -> bool:
        """True when events should be arriving and are not (or no subscription stands)."""
        return not self.subscribed or now - self.last_arrival > self.deaf_after_s

    def trusted(self, now: float, expecting: bool) -> bool:
        """True when silence from a worker means the worker, not the checker: subscribed, not
        behind, and hearing the fleet — or, when the fleet went silent, still hearing nothing
        on a subscription taken since, for ``deaf_after_s`` (a whole fleet that stops is
        believed once a fresh subscription hears nothing either)."""
        if not self.subscribed or self.lag_s > self.behind_after_s:
            return False
        if expecting and now - self.last_arrival > self.deaf_after_s:
            fresh = self.subscribed_at > self.last_arrival
            return fresh and now - self.subscribed_at >= self.deaf_after_s
        return True
