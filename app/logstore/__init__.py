"""The request log: every gateway call recorded by a background writer into one SQLite file per deployment."""

from app.logstore.record import LogRecord
from app.logstore.schema import SCHEMA_VERSION, LogStoreUnavailable
from app.logstore.store import LogStore

__all__ = ["SCHEMA_VERSION", "LogRecord", "LogStore", "LogStoreUnavailable"]
