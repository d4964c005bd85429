"""The HTTP API (`celery -A host api`): a door for the systems that send work, onto the producer engine."""
