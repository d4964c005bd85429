"""OpenTelemetry traces (``HOST_TRACING``, off by default; the ``tracing`` extra installs them).

A message's trace runs from its producer (``ingest``, a job, the API) through the worker's task:
OpenTelemetry's Celery instrumentation makes a PRODUCER span where a task is published (and
puts its context in the message's headers) and a CONSUMER span, its child, where a worker runs
it, in whichever process that is. host adds what only it knows, on the spans that are current
when it knows it:

- the producer's span around each send (``host.send``): the batch an input rode in
  (``host.batch.size``, its first and last ``host.batch.ref_*``);
- the worker's run span: its gate (``host.gate``: open or closed), a refusal
  (event ``host.gate.refused``: the message is handed back to the broker unstarted, for a
  healthy worker, whose run span in the same trace follows), and each dead letter (event
  ``host.dead_letter``: its ref and reason code);
- the API's request span (FastAPI's instrumentation) is the parent of the dispatcher's span
  that sends the request's messages; a batch of several requests' messages has the first as
  its parent and links to the others.

Where spans go is OpenTelemetry's own configuration: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_SERVICE_NAME`` (default: host-<process>),
``OTEL_BSP_SCHEDULE_DELAY`` and the rest, exported over OTLP/HTTP. With tracing off nothing is
imported and every helper here is a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: Set by ``enable``: the tracer host's own spans come from (None: tracing is off).
_tracer: Any = None
_provider: Any = None


class TracingUnavailable(RuntimeError):
    """HOST_TRACING is on, and OpenTelemetry is not installed."""


def enable(service: str, tracing: bool) -> bool:
    """Start tracing in this process as ``service`` (``OTEL_SERVICE_NAME`` wins), and instrument
    Celery; once per process (later calls do nothing). Returns whether tracing is on.

    Raises:
        TracingUnavailable: ``tracing`` is asked for and the ``tracing`` extra is missing.
    """
    global _tracer, _provider
    if not tracing:
        return False
    if _tracer is not None:
        return True
    require(tracing)
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    _provider = TracerProvider(resource=Resource.create({"service.name": name}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    CeleryInstrumentor().instrument(tracer_provider=_provider)  # type: ignore[no-untyped-call]
    _tracer = trace.get_tracer("host")
    atexit.register(flush)
    return True


def require(tracing: bool) -> None:
    """Raises TracingUnavailable when ``tracing`` is asked for and cannot be had (a worker
    checks at start, before its pool processes would each fail)."""
    if not tracing:
        return
    try:
        for module in ("opentelemetry.sdk.trace", "opentelemetry.instrumentation.celery",
                       "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            importlib.import_module(module)
    except ImportError as exc:
        raise TracingUnavailable(f"HOST_TRACING is on but OpenTelemetry is not installed "
                                 f"({exc}): pip install 'host[tracing]'") from None


def enabled() -> bool:
    return _tracer is not None


def flush() -> None:
    """Export what is buffered and stop (a process that is about to exit)."""
    if _provider is not None:
        _provider.shutdown()


def instrument_asgi(app: Any) -> None:
    """Server spans for the API's requests (FastAPI's instrumentation), when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider)


@contextlib.contextmanager
def span(name: str, parent: Any = None, links: Sequence[Any] = (), producer: bool = False,
         attributes: Mapping[str, Any] | None = None) -> Iterator[None]:
    """A span of host's own, current inside the block: a child of ``parent`` (a context from
    ``current``; None: the current one), linked to ``links`` (other such contexts)."""
    if _tracer is None:
        yield
        return
    from opentelemetry import trace

    span_links = [trace.Link(c) for c in (trace.get_current_span(x).get_span_context()
                                          for x in links) if c.is_valid]
    kind = trace.SpanKind.PRODUCER if producer else trace.SpanKind.INTERNAL
    with _tracer.start_as_current_span(name, context=parent, links=span_links, kind=kind,
                                       attributes=dict(attributes or {})):
        yield


@contextlib.contextmanager
def sending(refs: Sequence[str]) -> Iterator[None]:
    """The span around one send of the inputs ``refs`` (the batch they ride in)."""
    if _tracer is None:
        yield
        return
    ends = {"host.batch.ref_first": refs[0], "host.batch.ref_last": refs[-1]} if refs else {}
    with span("host.send", producer=True, attributes={"host.batch.size": len(refs), **ends}):
        yield


def current() -> Any:
    """The current context (to parent a send made later, on another thread); None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def gate(worker: str | None, open_: bool, reason: str = "") -> None:
    """On the running task's span: the worker and its gate, and a refusal (the message handed
    back)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("host.worker", worker or "")
    span.set_attribute("host.gate", "open" if open_ else "closed")
    if not open_:
        span.add_event("host.gate.refused", {"host.gate.reason": reason,
                                             "host.handed_back": True})


def dead_letters(records: Sequence[dict[str, Any]]) -> None:
    """On the running task's span: one event per dead letter, with its ref and reason code."""
    if _tracer is None or not records:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    for r in records:
        span.add_event("host.dead_letter", {"host.ref": str(r.get("ref")),
                                            "host.reason": str(r.get("reason")),
                                            "host.stage": str(r.get("stage"))})
