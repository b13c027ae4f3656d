"""Access log: one line per finished request or WebSocket session, and ``FanOut``.

Two formats (``log.access``):

- ``combined`` is exactly nginx's ``combined`` format, so existing parsers
  (goaccess, fluent-bit's nginx parser, awk scripts) keep working::

      $remote_addr - - [$time_local] "$request" $status $body_bytes_sent
          "$http_referer" "$http_user_agent"            (one line)

  ``$time_local`` looks like ``25/Nov/2026:07:55:01 +0000`` (local time, as
  nginx writes it). The request line, referer and user agent are escaped as
  nginx does: ``"``, ``\\``, control characters and bytes >= 0x7f become
  ``\\xHH``; an empty referer or user agent is ``-``. A finished WebSocket
  session is a line with status 101 and the bytes sent to the client.
- ``json`` is one JSON object per line with more fields (upstream, durations,
  bytes both ways, error / close reason); see ``request_json`` and
  ``tunnel_json`` for the keys.

Both are written when the request (or session) ends, with its end time.

Flushing: lines are gathered in memory and written in batches, never one
syscall per request (too slow at 50k req/s). A batch goes out when it reaches
``PIPE_BUF_BYTES`` and whenever the server calls ``flush()`` (every
``dsproxy.app.serve.FLUSH_SECONDS`` and at exit). Each write holds whole lines and at
most PIPE_BUF bytes, which POSIX makes atomic on a pipe: several worker
processes sharing one stdout never tear or interleave each other's lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, Literal, TextIO

from dsproxy.net.addr import Family
from dsproxy.observe.records import NullObserver, Observer, RequestRecord, TunnelRecord

log = logging.getLogger("dsproxy.observe.accesslog")

AccessLogFormat = Literal["combined", "json"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# nginx's ngx_http_log_escape (escape=default): '"', '\', bytes < 0x20 and >= 0x7f.
_ESCAPE_TABLE = {c: f"\\x{c:02X}" for c in range(256) if c < 0x20 or c >= 0x7F or c in (0x22, 0x5C)}
_JSON = json.JSONEncoder(ensure_ascii=True, check_circular=False, separators=(",", ":"))
# A JSON string literal, ASCII only (what json.dumps writes for a str, in C).
_json_str = json.encoder.encode_basestring_ascii


def _json_str_or_null(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def _json_seconds(value: float | None) -> str:
    return "null" if value is None else repr(round(value, 6))  # json writes float repr


def escape(value: str) -> str:
    """Escape ``value`` as nginx escapes variables in a log line (``\\xHH``).

    The I/O layer decodes header bytes as latin-1, so one character is one
    byte; any character beyond latin-1 is escaped byte by byte in UTF-8.
    """
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    if not all(ch <= "\xff" for ch in value):
        value = value.encode("utf-8").decode("latin-1")
    return value.translate(_ESCAPE_TABLE)


def _or_dash(value: str) -> str:
    return escape(value) if value else "-"


class _Clock:
    """Formats log timestamps, reusing the text of the current second."""

    __slots__ = ("_second", "_local", "_utc")

    def __init__(self) -> None:
        self._second = -1
        self._local = ""
        self._utc = ""

    def _load(self, second: int) -> None:
        local = time.localtime(second)
        offset = local.tm_gmtoff // 60
        sign = "+" if offset >= 0 else "-"
        hours, minutes = divmod(abs(offset), 60)
        self._local = (
            f"{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year:04d}:"
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
            f"{sign}{hours:02d}{minutes:02d}"
        )
        self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._second = second

    def local(self, t: float) -> str:
        """nginx ``$time_local``: ``25/Nov/2026:07:55:01 +0000``."""
        second = int(t)
        if second != self._second:
            self._load(second)
        return self._local

    def iso(self, t: float) -> str:
        """ISO 8601 in UTC with milliseconds: ``2026-11-25T07:55:01.123Z``."""
        second = int(t)
        if second != self._second:
            self._load(second)
        millis = min(int((t - second) * 1000), 999)
        return f"{self._utc}.{millis:03d}Z"


def _request_line(method: str, target: str, http_version: str) -> str:
    if not method:
        return "-"
    if http_version:
        return f"{method} {target} HTTP/{http_version}"
    return f"{method} {target}"


# POSIX guarantees writes up to PIPE_BUF (4096 on Linux) to a pipe are atomic.
PIPE_BUF_BYTES = 4096


class AccessLog(NullObserver):
    """The access-log observer: writes a line per request and per WebSocket session.

    Only ``request_done`` and ``websocket_closed`` matter here; the other events
    are NullObserver's no-ops.
    """

    def __init__(self, fmt: AccessLogFormat, stream: TextIO | None = None) -> None:
        if fmt not in ("combined", "json"):
            raise ValueError(f"unknown access log format {fmt!r}")
        self.fmt = fmt
        # Looked up at construction, not at import: tests swap sys.stdout.
        self.stream = stream if stream is not None else sys.stdout
        self._clock = _Clock()
        self._failed = False
        self._lines: list[bytes] = []
        self._buffered = 0
        try:
            self._fd: int | None = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # an in-memory stream (tests)

    # -- formatting (pure; also used by tests) ----------------------------------
    def request_combined(self, r: RequestRecord) -> str:
        return (
            f"{r.client_ip} - - [{self._clock.local(r.start_time + r.duration)}] "
            f'"{escape(_request_line(r.method, r.target, r.http_version))}" '
            f'{r.status} {r.bytes_sent} "{_or_dash(r.referer)}" "{_or_dash(r.user_agent)}"'
        )

    def request_json(self, r: RequestRecord) -> str:
        # Written out rather than json-encoding a dict: this runs once per request,
        # and the dict and the encoder set-up cost more than the line itself.
        q = _json_str
        return (
            f'{{"time":"{self._clock.iso(r.start_time + r.duration)}","type":"http",'
            f'"client":{q(r.client_ip)},"client_port":{r.client_port:d},'
            f'"family":{q(r.family)},"method":{q(r.method)},"target":{q(r.target)},'
            f'"version":{q(r.http_version)},"host":{q(r.host)},"status":{r.status:d},'
            f'"bytes_sent":{r.bytes_sent:d},"bytes_received":{r.bytes_received:d},'
            f'"duration":{_json_seconds(r.duration)},'
            f'"route":{q(r.route)},"upstream":{_json_str_or_null(r.upstream_addr)},'
            f'"upstream_duration":{_json_seconds(r.upstream_duration)},'
            f'"referer":{q(r.referer)},"user_agent":{q(r.user_agent)},'
            f'"error":{_json_str_or_null(r.error)}}}'
        )

    def tunnel_combined(self, r: TunnelRecord) -> str:
        return (
            f"{r.client_ip} - - [{self._clock.local(r.start_time + r.duration)}] "
            f'"{escape(_request_line("GET", r.target, "1.1"))}" 101 {r.bytes_to_client} "-" '
            f'"{_or_dash(r.user_agent)}"'
        )

    def tunnel_json(self, r: TunnelRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._clock.iso(r.start_time + r.duration),
            "type": "websocket",
            "client": r.client_ip,
            "client_port": r.client_port,
            "family": r.family,
            "method": "GET",
            "target": r.target,
            "host": r.host,
            "status": 101,
            "bytes_sent": r.bytes_to_client,
            "bytes_received": r.bytes_from_client,
            "duration": round(r.duration, 6),
            "route": r.route,
            "upstream": r.upstream_addr,
            "user_agent": r.user_agent,
            "close_reason": r.close_reason,
        }
        return _JSON.encode(entry)

    # -- output ------------------------------------------------------------------
    def _write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self._buffered + len(data) > PIPE_BUF_BYTES:
            self.flush()
        self._lines.append(data)
        self._buffered += len(data)

    def _fault(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning("access log write failed (further failures not logged): %r", exc)

    def flush(self) -> None:
        """Write buffered lines (one write of at most PIPE_BUF bytes, whole lines)."""
        if not self._lines:
            return
        chunk = b"".join(self._lines)
        self._lines = []
        self._buffered = 0
        try:
            if self._fd is not None:
                self.stream.flush()  # whatever else went through the text layer first
                sent = 0
                while sent < len(chunk):  # a partial write only on a full pipe
                    sent += os.write(self._fd, chunk[sent:] if sent else chunk)
            else:
                self.stream.write(chunk.decode("utf-8"))
                self.stream.flush()
        except Exception as exc:  # closed pipe, full disk: keep proxying
            self._fault(exc)

    # -- Observer ----------------------------------------------------------------
    def request_done(self, record: RequestRecord) -> None:
        try:
            json_format = self.fmt == "json"
            line = self.request_json(record) if json_format else self.request_combined(record)
        except Exception as exc:
            self._fault(exc)
            return
        self._write(line)

    def websocket_closed(self, record: TunnelRecord) -> None:
        try:
            json_format = self.fmt == "json"
            line = self.tunnel_json(record) if json_format else self.tunnel_combined(record)
        except Exception as exc:
            self._fault(exc)
            return
        self._write(line)


class FanOut:
    """Forwards every event to several observers; one failing does not stop the others."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(
            o
            for o in observers
            if type(o) is not NullObserver  # subclasses may do something
        )

    def connection_opened(self, family: Family) -> None:
        for o in self.observers:
            try:
                o.connection_opened(family)
            except Exception:
                log.exception("observer %r failed", o)

    def connection_closed(self, family: Family) -> None:
        for o in self.observers:
            try:
                o.connection_closed(family)
            except Exception:
                log.exception("observer %r failed", o)

    def request_done(self, record: RequestRecord) -> None:
        for o in self.observers:
            try:
                o.request_done(record)
            except Exception:
                log.exception("observer %r failed", o)

    def client_error(self, kind: str) -> None:
        for o in self.observers:
            try:
                o.client_error(kind)
            except Exception:
                log.exception("observer %r failed", o)

    def upstream_error(self, kind: str) -> None:
        for o in self.observers:
            try:
                o.upstream_error(kind)
            except Exception:
                log.exception("observer %r failed", o)

    def upstream_connected(self, seconds: float) -> None:
        for o in self.observers:
            try:
                o.upstream_connected(seconds)
            except Exception:
                log.exception("observer %r failed", o)

    def upstream_acquired(self, reused: bool) -> None:
        for o in self.observers:
            try:
                o.upstream_acquired(reused)
            except Exception:
                log.exception("observer %r failed", o)

    def pool_idle(self, count: int) -> None:
        for o in self.observers:
            try:
                o.pool_idle(count)
            except Exception:
                log.exception("observer %r failed", o)

    def websocket_opened(self) -> None:
        for o in self.observers:
            try:
                o.websocket_opened()
            except Exception:
                log.exception("observer %r failed", o)

    def websocket_closed(self, record: TunnelRecord) -> None:
        for o in self.observers:
            try:
                o.websocket_closed(record)
            except Exception:
                log.exception("observer %r failed", o)

    def tls_handshake_failed(self, reason: str) -> None:
        for o in self.observers:
            try:
                o.tls_handshake_failed(reason)
            except Exception:
                log.exception("observer %r failed", o)

    def tls_certificate_loaded(self, not_after: float) -> None:
        for o in self.observers:
            try:
                o.tls_certificate_loaded(not_after)
            except Exception:
                log.exception("observer %r failed", o)


def combine(observers: Iterable[Observer]) -> Observer:
    """One observer for ``observers``: the only one itself, a ``FanOut``, or a NullObserver.

    Saves the fan-out loop on the hot path when only metrics are on.
    """
    fan = FanOut(observers)
    if not fan.observers:
        return NullObserver()
    if len(fan.observers) == 1:
        return fan.observers[0]
    return fan
