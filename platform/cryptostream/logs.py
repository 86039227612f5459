"""Structured JSON log lines on stdout, with a rate limit for repeated warnings."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import ecs_logging


class JsonFormatter(ecs_logging.StdlibFormatter):
    """One JSON object per line in Elastic Common Schema (``ecs-logging``), so Filebeat ships it
    to Elasticsearch without parsing rules.

    Besides the library's fields (``@timestamp``, ``log.level``, ``message``, ``ecs.version``,
    ``log.logger``, ``log.origin``, ``process``...), every line carries ``service.name``.
    Structured fields go in ``extra={"fields": {...}}``; dotted names (``error.message``,
    ``url.full``) become nested ECS objects.
    """

    def __init__(self, service: str) -> None:
        super().__init__(extra={"service.name": service})
        self.service = service

    def format_to_ecs(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = record.__dict__.pop("fields", None)
        try:
            doc: dict[str, Any] = super().format_to_ecs(record)
        finally:
            if fields is not None:
                record.fields = fields
        if isinstance(fields, dict):
            for name, value in fields.items():
                if name not in _RESERVED:
                    _put(doc, name.split("."), value)
        return doc


def _put(doc: dict[str, Any], path: list[str], value: Any) -> None:
    """Set a dotted field as nested objects (``error.message`` -> {"error": {"message": ..}})."""
    for part in path[:-1]:
        child = doc.get(part)
        if not isinstance(child, dict):
            child = doc[part] = {}
        doc = child
    doc[path[-1]] = value


# Fields the formatter owns; a structured field of the same name is dropped, not merged.
_RESERVED = frozenset({"@timestamp", "message", "ecs.version", "log.level", "service.name"})


class TextFormatter(logging.Formatter):
    """One readable line per event for a person at a terminal: time, level, service, message,
    then the structured fields as ``key=value`` (and a traceback, if any, below)."""

    def __init__(self, service: str, color: bool = False) -> None:
        super().__init__()
        self.service = service
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = record.levelname
        if self.color and level in _COLORS:
            level = f"{_COLORS[level]}{level}\x1b[0m"
        line = f"{stamp}.{int(record.msecs):03d} {level:<7} {self.service}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += "  " + " ".join(f"{key}={_short(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_COLORS = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def wants_text(log_format: str, stream: Any = None) -> bool:
    """``auto``: readable lines on a terminal, ECS JSON everywhere else (containers, files)."""
    if log_format != "auto":
        return log_format == "text"
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def setup_logging(service: str, level: str = "INFO", log_format: str = "auto") -> logging.Logger:
    """Logging of one service on stdout: ``log_format`` is ``CSP_LOG_FORMAT`` (json/text/auto)."""
    handler = logging.StreamHandler(sys.stdout)
    text = wants_text(log_format)
    color = text and wants_text("auto")  # colours only for a terminal, not a file
    handler.setFormatter(TextFormatter(service, color) if text else JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"cryptostream.{service}")


class RateLimitedLog:
    """Log at most one line per key and interval; say how many were suppressed in between."""

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        self.logger.warning(message, extra={"fields": fields}, stacklevel=2)
