"""The core scenarios run on both brokers: one parametrised suite, not a copy.

``@on_both_brokers`` runs a test once on Redis and once on a private RabbitMQ node (see the
``broker`` fixture in tests/conftest.py); its ``host_env`` and ``app`` point at that broker,
with the store and the results in Redis either way.
"""

from __future__ import annotations

import pytest

BROKERS = ("redis", "amqp")

on_both_brokers = pytest.mark.parametrize("broker", BROKERS, indirect=True)
