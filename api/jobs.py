"""Jobs through the API: an upload streamed to disk, run by the producer engine in a thread of
this process, its results read back from any offset.

A job started here is the same record ``celery -A host job status`` reads (``via: api``), and
a job started there shows here; its results are readable here when its output is in this API's
directory (``HOST_API_JOBS_DIR``). A job this process was running when it stopped goes on when
it starts again (``resume_all``), as ``job resume`` would: output cut back to its last chunk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog
from celery import Celery

from producer import jobs
from producer.inflight import BROKEN
from producer.job_store import JobStore

log = structlog.get_logger("host.api")

#: Bytes read from a job's output per piece sent.
PIECE = 65_536


class UploadTooLarge(Exception):
    pass


class JobDesk:
    def __init__(self, app: Celery, store: JobStore, directory: Path) -> None:
        self.app, self.store, self.directory = app, store, directory
        directory.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, threading.Thread] = {}

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> Path:
        """Stream an upload to a file of its own, never holding more than one piece of it."""
        path = self.directory / f"upload-{uuid.uuid4().hex}.in"
        size = 0
        try:
            with open(path, "wb") as f:
                async for piece in chunks:
                    size += len(piece)
                    if size > limit:
                        raise UploadTooLarge(f"the upload is over {limit} bytes")
                    f.write(piece)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def start(self, source: Path, fmt: str, key_id: str, chunk_cpu: float | None) -> str:
        """A job over an uploaded file, running from now on; its id."""
        out = source.with_suffix(".out.jsonl")
        job_id = jobs.new_job(self.store, str(source), str(out), fmt,
                              chunk_cpu=chunk_cpu or jobs.BUDGET.cpu_s, via="api", key=key_id)
        self._run(job_id)
        return job_id

    def _run(self, job_id: str) -> None:
        def run() -> None:
            try:
                report = jobs.run_job(self.app, self.store, job_id)
                log.info("api_job_ended", job=job_id, state=report.state, items=report.written)
            except Exception:
                log.exception("api_job_failed", job=job_id)
            finally:
                self.running.pop(job_id, None)
        thread = threading.Thread(target=run, name=f"host-api-job-{job_id}", daemon=True)
        self.running[job_id] = thread
        thread.start()

    def resume_all(self) -> list[str]:
        """Go on with the jobs this API's directory holds that stopped before their end."""
        resumed = []
        for job_id in self.store.jobs(limit=1000):
            meta = self.store.get(job_id) or {}
            if (meta.get("via") == "api" and meta.get("state") in ("running", "interrupted")
                    and self.mine(meta) and job_id not in self.running):
                with contextlib.suppress(LookupError, ValueError, OSError):
                    jobs.reopen(self.store, job_id)
                    self._run(job_id)
                    resumed.append(job_id)
        return resumed

    def mine(self, meta: dict[str, Any]) -> bool:
        """True when a job's output is in this API's directory (and so readable here)."""
        out = Path(str(meta.get("out", "")))
        return out.parent == self.directory.resolve() and out.is_file()

    def results(self, meta: dict[str, Any], offset: int) -> tuple[Iterator[bytes], int]:
        """The job's output from ``offset`` (bytes) to its last whole line written, and the
        offset after it: where the next read goes on from.

        Raises:
            ValueError: the offset is past what was written, or not at the start of a line.
        """
        written = int(meta.get("out_bytes", 0))
        if offset > written:
            raise ValueError(f"offset {offset} is past the {written} bytes written")
        path = Path(str(meta["out"]))
        with open(path, "rb") as f:
            if offset:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    raise ValueError(f"offset {offset} is not at the start of a line")

        def pieces() -> Iterator[bytes]:
            with open(path, "rb") as f:
                f.seek(offset)
                left = written - offset
                while left > 0:
                    piece = f.read(min(PIECE, left))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
        return pieces(), written

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(*BROKEN):
            self.store.cancel(job_id)


def directory_of(configured: str) -> Path:
    """HOST_API_JOBS_DIR, or a directory of this user's under the system's temporary one."""
    if configured:
        return Path(configured).resolve()
    return Path(os.environ.get("TMPDIR", "/tmp"), f"host-api-jobs-{os.getuid()}").resolve()
