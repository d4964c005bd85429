"""The event tap the tests and the benchmarks share (it lives with the other process helpers)."""

from harness.event_tap import Event, EventTap

__all__ = ["Event", "EventTap"]
