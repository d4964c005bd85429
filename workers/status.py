"""The worker's own readiness and liveness over HTTP, for the platform it runs on.

With ``HOST_WORKER_STATUS_PORT`` set, the main process serves two endpoints from a thread:

- ``/readyz``: 200 while the worker is in rotation — its gate open and at least one work queue
  consumed — else 503. A drain closes the gate before its reply, so readiness is false from
  that moment, not at the next report. A warm shutdown makes it false too.
- ``/healthz``: 200 while the worker process answers (its main thread alive), whatever its
  health state: a drained or quarantined worker is alive and must not be restarted for it,
  and neither must a worker that waits for its broker to come back (restarting it would not
  bring the broker back). A worker whose event loop is wedged stops reporting, and the checker
  takes it OFFLINE: that is the checker's job, not the platform's.

Both answer from this process's memory (``workers.runtime.RUNTIME``): no broker round trip,
no broadcast to the fleet. The body is JSON saying why.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery.worker import state as worker_state

from broker_config.logs import get_logger
from workers import gate
from workers.runtime import RUNTIME

log = get_logger(__name__)


def readiness() -> dict[str, Any]:
    """Whether this worker is in rotation, and why (``ready`` says it)."""
    g = gate.gate()
    consumer = RUNTIME.consumer
    consuming = gate.consuming_work_queues(consumer) if consumer is not None else []
    stopping = bool(worker_state.should_stop or worker_state.should_terminate)
    is_open = g is not None and g.is_open()
    ready = is_open and bool(consuming) and not stopping
    if ready:
        why = "in rotation"
    elif stopping:
        why = "shutting down"
    elif not is_open:
        why = f"gate closed: {g.reason if g is not None else 'not started'}"
    else:
        why = "consumes no work queue"
    return {"ready": ready, "worker": RUNTIME.worker, "reason": why, "consuming": consuming,
            "gate": "open" if is_open else "closed"}


def liveness() -> dict[str, Any]:
    """Whether this worker process answers (``live`` says it)."""
    return {"live": threading.main_thread().is_alive(), "worker": RUNTIME.worker}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server calls
        if self.path == "/readyz":
            body = readiness()
            ok = body["ready"]
        elif self.path == "/healthz":
            body = liveness()
            ok = body["live"]
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds would drown the worker's own logs


def serve(address: str, port: int) -> ThreadingHTTPServer | None:
    """Serve the endpoints from a daemon thread; None (and an error logged) if the port is taken."""
    try:
        server = ThreadingHTTPServer((address, port), _Handler)
    except OSError as exc:
        log.error("worker_status_unavailable", address=address, port=port, error=str(exc),
                  note="readiness and liveness probes of this worker will fail")
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="host-status", daemon=True).start()
    log.info("worker_status_serving", address=address, port=server.server_address[1])
    return server
