"""The producer engine: what sends work to the fleet and follows it to its answers.

``feed`` streams lines as analysis tasks and waits for every answer (``celery -A host ingest``);
``results`` reads many results at once; ``pacing``, ``job_store`` and ``job_runner`` run a job
in chunks sized by their measured cost and paced by the fleet's wear (``celery -A host job``).
The commands in ``cli/`` and the HTTP API are thin doors onto it.
"""
