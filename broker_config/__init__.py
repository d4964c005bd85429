"""Configuration of host: typed settings, queue declarations and the Celery app factory."""
