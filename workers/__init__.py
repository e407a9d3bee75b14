"""Background workers (Celery in production, in-process in the embedded default)."""
