"""Access log lines (nginx combined and JSON), FanOut, and the key=value log formatter."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import pytest

from dsproxy.observe.accesslog import AccessLog, FanOut, combine, escape
from dsproxy.observe.logsetup import KeyValueFormatter, configure_logging
from dsproxy.observe.metrics import Metrics
from dsproxy.observe.records import NullObserver, Observer, RequestRecord, TunnelRecord
from tests.unit.test_metrics import request, tunnel

# fluent-bit's stock "nginx" parser (the regex log shippers use), in Python syntax.
NGINX_COMBINED = re.compile(
    r"^(?P<remote>[^ ]*) (?P<host>[^ ]*) (?P<user>[^ ]*) \[(?P<time>[^\]]*)\] "
    r'"(?P<method>\S+)(?: +(?P<path>[^\"]*?)(?: +\S*)?)?" (?P<code>[^ ]*) (?P<size>[^ ]*)'
    r'(?: "(?P<referer>[^\"]*)" "(?P<agent>[^\"]*)")$'
)
NGINX_TIME = "%d/%b/%Y:%H:%M:%S %z"
END_TIME = 1_795_593_301.0  # 2026-11-25T07:55:01Z


@pytest.fixture
def utc() -> Iterator[None]:
    """Run with the local time zone set to UTC (nginx logs local time)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def one_line(fmt: Literal["combined", "json"], record: RequestRecord | TunnelRecord) -> str:
    """The single line (without its newline) that ``record`` produces in ``fmt``."""
    out = io.StringIO()
    log = AccessLog(fmt, out)
    if isinstance(record, RequestRecord):
        log.request_done(record)
    else:
        log.websocket_closed(record)
    log.flush()
    text = out.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    return text[:-1]


def combined(record: RequestRecord | TunnelRecord) -> str:
    return one_line("combined", record)


def as_json(record: RequestRecord | TunnelRecord) -> dict[str, Any]:
    text = one_line("json", record)
    entry = json.loads(text)
    assert isinstance(entry, dict)
    return entry


# -- combined ----------------------------------------------------------------------------


@pytest.mark.usefixtures("utc")
def test_combined_is_exactly_nginx() -> None:
    record = request(
        method="POST",
        target="/api/v1/items?x=1",
        status=201,
        bytes_sent=512,
        referer="https://example.test/page",
        user_agent="curl/8.5.0",
        start_time=END_TIME - 0.25,
        duration=0.25,
    )
    assert combined(record) == (
        '10.0.0.1 - - [25/Nov/2026:07:55:01 +0000] "POST /api/v1/items?x=1 HTTP/1.1" 201 512 '
        '"https://example.test/page" "curl/8.5.0"'
    )


@pytest.mark.usefixtures("utc")
def test_combined_parses_with_the_log_shippers_regex() -> None:
    line = combined(request(client_ip="2001:db8::7", family="ipv6", user_agent="Mozilla/5.0 (X11)"))
    match = NGINX_COMBINED.match(line)
    assert match is not None, line
    assert match["remote"] == "2001:db8::7"
    assert (match["host"], match["user"]) == ("-", "-")
    assert match["method"] == "GET"
    assert match["path"] == "/"
    assert match["code"] == "200"
    assert match["size"] == "0"
    assert match["referer"] == "-"
    assert match["agent"] == "Mozilla/5.0 (X11)"
    parsed = datetime.strptime(match["time"], NGINX_TIME)
    assert parsed == datetime(2026, 11, 25, 7, 55, 1, tzinfo=UTC)


def test_combined_time_is_local_with_its_offset() -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:30"  # POSIX spelling of UTC+05:30
    time.tzset()
    try:
        line = combined(request(start_time=END_TIME, duration=0.0))
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert "[25/Nov/2026:13:25:01 +0530]" in line


def test_client_address_is_shown_as_given() -> None:
    line = combined(request(client_ip="10.1.2.3"))
    assert line.startswith("10.1.2.3 - - [")
    assert "::ffff:" not in line


def test_escaping_as_nginx_does() -> None:
    line = combined(
        request(
            target='/a"b\\c',
            referer="ref\x01\x7f",
            user_agent='evil" "agent\n\xe9',
        )
    )
    assert '"GET /a\\x22b\\x5Cc HTTP/1.1"' in line
    assert '"ref\\x01\\x7F"' in line
    assert line.endswith('"evil\\x22 \\x22agent\\x0A\\xE9"')
    assert NGINX_COMBINED.match(line) is not None
    assert "\n" not in line


def test_escape() -> None:
    assert escape("plain text/1.0 (ok)") == "plain text/1.0 (ok)"
    assert escape('"') == "\\x22"
    assert escape("\\") == "\\x5C"
    assert escape("\t") == "\\x09"
    assert escape("\u20ac") == "\\xE2\\x82\\xAC"  # beyond latin-1: its UTF-8 bytes


def test_request_line_without_a_request() -> None:
    line = combined(request(method="", target="", http_version="", status=400))
    assert ' "-" 400 ' in line


@pytest.mark.usefixtures("utc")
def test_websocket_session_combined() -> None:
    line = combined(tunnel(client_ip="::1", start_time=END_TIME - 12.5, duration=12.5))
    assert line == '::1 - - [25/Nov/2026:07:55:01 +0000] "GET /ws HTTP/1.1" 101 250 "-" "-"'
    assert NGINX_COMBINED.match(line) is not None


@pytest.mark.usefixtures("utc")
def test_websocket_session_combined_keeps_the_user_agent() -> None:
    record = tunnel(start_time=END_TIME - 12.5, duration=12.5, user_agent='ws "client"/1.0')
    line = combined(record)
    assert line.endswith(' 101 250 "-" "ws \\x22client\\x22/1.0"')
    assert NGINX_COMBINED.match(line) is not None


# -- json --------------------------------------------------------------------------------


def test_json_request_fields() -> None:
    entry = as_json(
        request(
            client_ip="::1",
            client_port=41000,
            family="ipv6",
            target="/x?y=1",
            host="api.test",
            referer='r"ef',
            user_agent="ua\x01",
            status=504,
            bytes_sent=20,
            bytes_received=7,
            start_time=END_TIME - 1.5,
            duration=1.5,
            upstream_addr="[::1]:18080",
            upstream_duration=1.25,
            error="upstream_timeout",
            route="api",
        )
    )
    assert entry == {
        "time": "2026-11-25T07:55:01.000Z",
        "type": "http",
        "client": "::1",
        "client_port": 41000,
        "family": "ipv6",
        "method": "GET",
        "target": "/x?y=1",
        "version": "1.1",
        "host": "api.test",
        "status": 504,
        "bytes_sent": 20,
        "bytes_received": 7,
        "duration": 1.5,
        "route": "api",
        "upstream": "[::1]:18080",
        "upstream_duration": 1.25,
        "referer": 'r"ef',
        "user_agent": "ua\x01",
        "error": "upstream_timeout",
    }
    parsed = datetime.fromisoformat(entry["time"])
    assert parsed.timestamp() == END_TIME


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"target": "/caf\xe9?q=\u00ff\x7f", "user_agent": 'a\\b"c\n', "referer": "\x00"},
        {"upstream_addr": None, "upstream_duration": None, "error": "connect", "status": 502},
        {"duration": 1e-7, "upstream_duration": 123.4567891, "bytes_sent": 10**12},
    ],
)
def test_json_line_is_what_json_dumps_writes(fields: dict[str, Any]) -> None:
    """The hand-written line: same keys, order, values and escapes as json.dumps."""
    record = request(**fields)
    line = one_line("json", record)
    entry = json.loads(line)
    assert line == json.dumps(entry, separators=(",", ":"))
    assert entry["target"] == record.target
    assert entry["user_agent"] == record.user_agent
    assert entry["upstream_duration"] == (
        None if record.upstream_duration is None else round(record.upstream_duration, 6)
    )


def test_json_without_upstream() -> None:
    entry = as_json(request(upstream_addr=None, upstream_duration=None, status=400))
    assert entry["upstream"] is None
    assert entry["upstream_duration"] is None
    assert entry["client"] == "10.0.0.1"


def test_json_websocket_session() -> None:
    entry = as_json(tunnel(start_time=END_TIME - 12.5, duration=12.5))
    assert entry["type"] == "websocket"
    assert entry["time"] == "2026-11-25T07:55:01.000Z"
    assert entry["status"] == 101
    assert entry["duration"] == 12.5
    assert (entry["bytes_received"], entry["bytes_sent"]) == (100, 250)
    assert entry["close_reason"] == "client_closed"
    assert entry["client"] == "::1"
    assert entry["family"] == "ipv6"
    assert entry["user_agent"] == ""
    assert as_json(tunnel(user_agent="Mozilla/5.0"))["user_agent"] == "Mozilla/5.0"


def test_milliseconds() -> None:
    entry = as_json(request(start_time=END_TIME + 0.1234, duration=0.0))
    assert entry["time"] == "2026-11-25T07:55:01.123Z"


# -- output ------------------------------------------------------------------------------


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_are_batched_until_flush() -> None:
    out = CountingStream()
    log = AccessLog("combined", out)
    for _ in range(5):
        log.request_done(request())
    assert out.getvalue() == ""
    assert out.flushes == 0
    log.flush()
    assert out.getvalue().count("\n") == 5
    assert out.flushes == 1


def test_batches_are_whole_lines_within_pipe_buf() -> None:
    # Several workers share stdout: each write must be atomic (<= PIPE_BUF, whole lines).
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "w", closefd=False) as stream:
            log = AccessLog("combined", stream)
            for i in range(200):
                log.request_done(request(target=f"/item/{i}"))
            log.flush()
        os.close(write_fd)
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
    finally:
        os.close(read_fd)
    lines = data.decode().splitlines()
    assert len(lines) == 200
    assert all(f"/item/{i} " in line for i, line in enumerate(lines))


def test_other_events_write_nothing() -> None:
    out = io.StringIO()
    log = AccessLog("json", out)
    log.connection_opened("ipv4")
    log.connection_closed("ipv4")
    log.client_error("bad_request")
    log.upstream_error("connect")
    log.upstream_connected(0.1)
    log.upstream_acquired(True)
    log.pool_idle(3)
    log.websocket_opened()
    assert out.getvalue() == ""


def test_a_broken_stream_never_raises() -> None:
    out = io.StringIO()
    log = AccessLog("json", out)
    out.close()
    log.request_done(request())
    log.websocket_closed(tunnel())
    log.flush()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        AccessLog("xml", io.StringIO())  # type: ignore[arg-type]


# -- FanOut ------------------------------------------------------------------------------


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def connection_opened(self, family: Any) -> None:
        self.events.append(("connection_opened", family))

    def request_done(self, record: RequestRecord) -> None:
        self.events.append(("request_done", record.status))

    def websocket_closed(self, record: TunnelRecord) -> None:
        self.events.append(("websocket_closed", record.close_reason))


class Broken(NullObserver):
    def request_done(self, record: RequestRecord) -> None:
        raise RuntimeError("observer bug")


class Everything:
    """Records the name of every Observer method called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append(name)


def test_fanout_forwards_every_event() -> None:
    a, b = Everything(), Everything()
    fan = FanOut([a, b])
    fan.connection_opened("ipv4")
    fan.connection_closed("ipv6")
    fan.request_done(request())
    fan.client_error("bad_request")
    fan.upstream_error("reset")
    fan.upstream_connected(0.01)
    fan.upstream_acquired(False)
    fan.pool_idle(1)
    fan.websocket_opened()
    fan.websocket_closed(tunnel())
    expected = [
        "connection_opened",
        "connection_closed",
        "request_done",
        "client_error",
        "upstream_error",
        "upstream_connected",
        "upstream_acquired",
        "pool_idle",
        "websocket_opened",
        "websocket_closed",
    ]
    assert a.calls == expected
    assert b.calls == expected


def test_fanout_survives_a_failing_observer(caplog: pytest.LogCaptureFixture) -> None:
    first, last = Recorder(), Recorder()
    fan = FanOut([first, Broken(), last])
    with caplog.at_level(logging.ERROR):
        fan.request_done(request(status=204))
    assert first.events == [("request_done", 204)]
    assert last.events == [("request_done", 204)]
    assert "observer bug" in caplog.text


def test_fanout_skips_null_observers_and_combine_unwraps() -> None:
    rec = Recorder()
    fan = FanOut([NullObserver(), rec, NullObserver()])
    assert fan.observers == (rec,)
    assert combine([NullObserver(), rec]) is rec
    assert isinstance(combine([]), NullObserver)
    both = combine([rec, AccessLog("json", io.StringIO())])
    assert isinstance(both, FanOut)


def test_observers_satisfy_the_protocol() -> None:
    observers: list[Observer] = [
        AccessLog("combined", io.StringIO()),
        FanOut([]),
        Metrics(),
        NullObserver(),
    ]
    assert len(observers) == 4


# -- operational log lines (dsproxy.observe.logsetup) --------------------------------------------


def format_record(msg: str, *args: object, **extra: object) -> str:
    record = logging.makeLogRecord(
        {"name": "dsproxy.proxy.upstream", "levelno": logging.WARNING, "levelname": "WARNING",
         "msg": msg, "args": args, "created": END_TIME, **extra}
    )  # fmt: skip
    return KeyValueFormatter().format(record)


def test_key_value_line() -> None:
    line = format_record("connect to %s failed", "10.0.0.9:18080", client="1.2.3.4", attempt=2)
    assert line == (
        "2026-11-25T07:55:01Z level=warning logger=dsproxy.proxy.upstream "
        'msg="connect to 10.0.0.9:18080 failed" client=1.2.3.4 attempt=2'
    )


def test_key_value_quoting_keeps_one_line() -> None:
    line = format_record('a "quoted"\nsecond line', path="/a b", empty="", eq="k=v")
    assert "\n" not in line
    assert 'msg="a \\"quoted\\"\\nsecond line"' in line
    assert 'path="/a b"' in line
    assert 'empty=""' in line
    assert 'eq="k=v"' in line


def test_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("dsproxy", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    line = KeyValueFormatter().format(record)
    assert "\n" not in line
    assert 'exc_type=ValueError exc="boom" traceback="Traceback' in line


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_is_idempotent() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)
    configure_logging("info", stream=out)
    configure_logging("warning", stream=out)
    assert len(root.handlers) == before + 1
    logging.getLogger("dsproxy.test").info("hidden")
    logging.getLogger("dsproxy.test").warning("shown", extra={"client": "::1"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith('level=warning logger=dsproxy.test msg="shown" client=::1')
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud")
