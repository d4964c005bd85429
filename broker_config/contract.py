"""The producer contract: how any Celery application — one that does not import host's app —
sends work to a host fleet, and how it reads what comes back. docs/producers.md says the same
in prose; ``CONTRACT_VERSION`` changes when anything here changes incompatibly.

Version 1:

* ``host.analyse`` takes one argument, an *envelope* ``{"ref", "line", "format"}``
  (``line``: one inbound line — a Twitter v2 or v1.1 JSON object, an ``id<TAB>rating<TAB>text``
  line or plain text; ``format``: ``auto``, ``jsonl``, ``tsv`` or ``text``), and returns one
  record; ``host.analyse_batch`` takes a list of up to ``HOST_MAX_BATCH`` envelopes and returns
  one record per envelope, in order.
* Both go to the ``tweets`` queue; a message on Celery's default ``celery`` queue is consumed by
  no host worker (the checker shows its depth and alerts on it).
* JSON only (no pickle), protocol 2 (Celery's default since 4.0).
* A record's ``status`` is ``analysed`` (with ``neg``, ``neu``, ``pos``, ``compound``, ``label``,
  ``worker``) or ``rejected`` (with ``reason`` and ``detail``): the input was refused, not lost.
  A message that is no valid task at all (unknown argument shape, …) also answers
  ``{"status": "rejected", "reason": …}``; an unknown task name fails with Celery's
  ``NotRegistered``.

Usage from any Celery app::

    from broker_config.contract import ROUTES, analyse
    app.conf.task_routes = ROUTES          # or pass queue="tweets" yourself
    record = analyse(app, '{"data": {"id": "1", "text": "what a day"}}').get(timeout=10)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

CONTRACT_VERSION = 1
ANALYSE = "host.analyse"
ANALYSE_BATCH = "host.analyse_batch"
TWEETS_QUEUE = "tweets"
#: Celery's default queue: where a producer's task lands without a route. No host worker
#: consumes it.
CELERY_DEFAULT_QUEUE = "celery"
#: Celery ``task_routes`` for host's tasks.
ROUTES: dict[str, dict[str, str]] = {ANALYSE: {"queue": TWEETS_QUEUE},
                                     ANALYSE_BATCH: {"queue": TWEETS_QUEUE}}
#: Header with the contract version a producer speaks (informational in version 1).
VERSION_HEADER = "host_contract"
#: Header producers set to the time they sent a message (Unix seconds): the one stamp a
#: message's queue wait is measured from (a worker's figures, and each record's
#: ``queue_wait_s``: start - sent).
SENT_AT_HEADER = "host_sent_at"
FORMATS = ("auto", "jsonl", "tsv", "text")


def envelope(ref: str, line: str, fmt: str = "auto") -> dict[str, Any]:
    """What a producer sends for one inbound line."""
    return {"ref": ref, "line": line, "format": fmt}


def headers() -> dict[str, Any]:
    """The headers of a message sent now: the contract's version and the time it is sent."""
    return {VERSION_HEADER: CONTRACT_VERSION, SENT_AT_HEADER: time.time()}


def analyse(app: Any, line: str, ref: str | None = None, fmt: str = "auto") -> Any:
    """Send one line to ``host.analyse`` on the tweets queue; Celery's AsyncResult."""
    env = envelope(ref or str(uuid.uuid4()), line, fmt)
    return app.send_task(ANALYSE, args=[env], queue=TWEETS_QUEUE, headers=headers())


def analyse_batch(app: Any, lines: Iterable[str], fmt: str = "auto") -> Any:
    """Send lines as one ``host.analyse_batch`` task; its result is one record per line."""
    envs = [envelope(f"batch:{i}", line, fmt) for i, line in enumerate(lines)]
    return app.send_task(ANALYSE_BATCH, args=[envs], queue=TWEETS_QUEUE, headers=headers())


def rejected(record: Any) -> bool:
    """True when a result record says the input was refused (a dead letter), not analysed."""
    return isinstance(record, dict) and record.get("status") == "rejected"
