"""Operational logging: stdlib ``logging`` to stderr, one ``key=value`` line per event.

::

    2026-11-25T07:55:01Z level=warning logger=dsproxy.proxy.pool msg="connect failed" client=1.2.3.4

Fields passed with ``extra={"client": ...}`` are appended in the order given.
A value is quoted (with ``\\"``, ``\\\\``, ``\\n`` escapes) when it is empty
or holds a space, ``=``, ``"`` or a control character (the logfmt convention),
so every event stays on one line, tracebacks included. Expected faults
(upstream refused, client timeouts) should be logged without ``exc_info``;
only bugs deserve a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

# Attributes every LogRecord has; anything else in record.__dict__ came from ``extra``.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_LEVELS = {"debug", "info", "warning", "error", "critical"}
_HANDLER_MARK = "_dsproxy_handler"


def _needs_quotes(text: str) -> bool:
    return not text or any(ch <= " " or ch in '="\\' or ch == "\x7f" for ch in text)


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    escaped = "".join(ch if ch >= " " and ch != "\x7f" else f"\\x{ord(ch):02x}" for ch in escaped)
    return f'"{escaped}"'


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: bare when safe, else quoted and escaped."""
    text = value if isinstance(value, str) else str(value)
    return _quote(text) if _needs_quotes(text) else text


class KeyValueFormatter(logging.Formatter):
    """``TIME level=... logger=... msg="..." key=value ...`` on one line, time in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        parts = [
            stamp,
            f"level={record.levelname.lower()}",
            f"logger={logfmt_value(record.name)}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                parts.append(f"{key}={logfmt_value(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            exc = record.exc_info[1]
            parts.append(f"exc_type={record.exc_info[0].__name__}")
            parts.append(f"exc={_quote(str(exc))}")
            parts.append(f"traceback={_quote(self.formatException(record.exc_info))}")
        if record.stack_info:
            parts.append(f"stack={_quote(record.stack_info)}")
        return " ".join(parts)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send all logging to ``stream`` (stderr) as key=value lines at ``level``.

    Idempotent: a second call changes the level (and stream) of the one
    handler it installed rather than adding another.
    """
    name = level.lower()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    root.setLevel(name.upper())
    target = stream if stream is not None else sys.stderr
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False) and isinstance(handler, logging.StreamHandler):
            handler.setStream(target)
            return
    handler = logging.StreamHandler(target)
    handler.setFormatter(KeyValueFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
