"""The checker's HTTP endpoints: /metrics, /healthz, /readyz, and the fleet page (/ and
/fleet.json)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from healthcheck import page

#: The page loads nothing from elsewhere, and nothing it shows can run as script.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:")

Handler = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the checker's own logs


def app(registry: CollectorRegistry, alive: Callable[[], bool],
        ready: Callable[[], bool], view: Callable[[], dict[str, Any]] | None = None) -> Handler:
    """A WSGI app serving the endpoints (the fleet page only when ``view`` is given)."""
    metrics = make_wsgi_app(registry)

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if view is not None and path in ("/", "/fleet.json"):
            if path == "/":
                body_bytes, kind = page.html(), "text/html; charset=utf-8"
            else:
                body_bytes = json.dumps(view(), default=str).encode()
                kind = "application/json"
            start_response("200 OK", [("Content-Type", kind), ("Cache-Control", "no-store"),
                                      ("Content-Security-Policy", CSP)])
            return [body_bytes]
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path in ("/healthz", "/readyz"):
            ok = alive() if path == "/healthz" else ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return route


def serve(handler: Handler, port: int, host: str = "0.0.0.0",
          tls: ssl.SSLContext | None = None) -> tuple[WSGIServer, int]:
    """Serve ``handler`` on a daemon thread; the server and the port it listens on.

    With ``tls``, HTTPS only; the handshake runs in each request's own thread, so a slow or
    silent client holds up nobody else.
    """
    server = make_server(host, port, handler, server_class=_Server, handler_class=_QuietHandler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])
