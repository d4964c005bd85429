"""Private servers and processes for the demo, the tests and the benchmarks: a ``redis-server``
(alone or as a Sentinel group) or a ``rabbitmq-server`` node on a free port, a worker process,
an event tap. Nothing here runs in production."""
