"""The app factory: a host app with its tasks, signals and worker extensions (``host.app``)."""

from __future__ import annotations

from broker_config import transport
from broker_config.app import HostCelery
from broker_config.settings import Settings
from workers import control, jobs, signals, tasks  # noqa: F401 - importing registers them
from workers.consumer import dead_letter_raw
from workers.gate_settler import GateSettler
from workers.reporter import WearReporter
from workers.visibility import VisibilityKeeper


def create_app(settings: Settings | None = None) -> HostCelery:
    """Build the host app with its tasks, signals and worker extensions registered."""
    app = HostCelery(settings)
    transport.on_undeliverable(
        lambda raw, queue, code, detail: dead_letter_raw(app, raw, queue, code, detail))
    signals.connect(app)
    app.steps["consumer"].add(WearReporter)
    app.steps["consumer"].add(VisibilityKeeper)
    app.steps["consumer"].add(GateSettler)
    return app
