"""host's Celery sub-commands (``celery -A host ingest|demo|...``), plugged in by entry point."""
