"""The gateway's side of gunicorn: the worker, its read deadlines, the in-flight call registry, the listener check."""
