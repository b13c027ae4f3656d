"""WebSocket through the proxy: the upgrade, the raw tunnel, flow control, endings."""

from __future__ import annotations

import base64
import os
import time

import pytest
import wsproto.events as wse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsproto.connection import Connection, ConnectionType

from tests.conftest import (
    ProxyFactory,
    ResponseReader,
    RunningProxy,
    raw_request,
    still_serving,
    wait_for,
)
from tests.upstream_server import Upstream

MB = 1024 * 1024


def ws_url(proxy: RunningProxy, path: str = "/ws") -> str:
    return f"ws://{proxy.authority}{path}"


def upgrade_request(path: str = "/ws", extra: list[tuple[str, str]] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
        *(extra or []),
    ]
    return raw_request("GET", path, headers=headers)


def client_frames() -> Connection:
    return Connection(ConnectionType.CLIENT)


def read_ws_events(
    reader: ResponseReader, ws: Connection, count: int, timeout: float = 5.0
) -> list[wse.Event]:
    events: list[wse.Event] = []
    if reader.buf:
        ws.receive_data(reader.buf)
        reader.buf = b""
    reader.sock.settimeout(timeout)
    while True:
        events.extend(ws.events())
        if len(events) >= count:
            return events
        data = reader.recv()
        if not data:
            return events
        ws.receive_data(data)


def test_echo_through_websockets_client(proxy: RunningProxy, upstream: Upstream) -> None:
    with connect(ws_url(proxy), open_timeout=5, close_timeout=2) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
    names = {n.lower(): v for n, v in upstream.ws_headers}
    assert names["upgrade"].lower() == "websocket"
    assert "upgrade" in names["connection"].lower()
    assert "sec-websocket-key" in names
    assert wait_for(lambda: len(proxy.observer.tunnels) == 1)


def test_session_record_carries_user_agent_and_byte_counts(proxy: RunningProxy) -> None:
    """The tunnel's record (access log, metrics) keeps the upgrade request's User-Agent."""
    with connect(
        ws_url(proxy), open_timeout=5, close_timeout=2, user_agent_header="probe-ws/2.1"
    ) as ws:
        ws.send("12345")
        assert ws.recv(timeout=5) == "12345"
    assert wait_for(lambda: len(proxy.observer.tunnels) == 1)
    record = proxy.observer.tunnels[0]
    assert record.user_agent == "probe-ws/2.1"
    assert record.close_reason in ("client_closed", "upstream_closed")
    assert record.bytes_from_client > 5  # the masked frame and the close frame
    assert record.bytes_to_client > 5


def test_bytes_behind_handshake_in_same_packet(proxy: RunningProxy) -> None:
    ws = client_frames()
    frame = ws.send(wse.TextMessage(data="riding along"))
    with proxy.connect() as sock:
        sock.sendall(upgrade_request() + frame)  # one write: head and first frame together
        reader = ResponseReader(sock)
        head = reader.read()
        assert head.status == 101
        assert head.header(b"upgrade") == b"websocket"
        events = read_ws_events(reader, ws, 1)
        assert isinstance(events[0], wse.TextMessage)
        assert events[0].data == "riding along"


def test_bytes_upstream_sends_right_behind_its_101(proxy: RunningProxy) -> None:
    ws = client_frames()
    with proxy.connect() as sock:
        sock.sendall(upgrade_request("/ws?greet=1"))
        reader = ResponseReader(sock)
        assert reader.read().status == 101
        events = read_ws_events(reader, ws, 1)
        assert isinstance(events[0], wse.TextMessage)
        assert events[0].data == "hello from upstream"
        sock.sendall(ws.send(wse.TextMessage(data="and back")))
        events = read_ws_events(reader, ws, 1)
        assert isinstance(events[0], wse.TextMessage)
        assert events[0].data == "and back"


def test_large_messages_both_ways(proxy: RunningProxy) -> None:
    payload = os.urandom(8 * MB)
    with connect(ws_url(proxy), open_timeout=5, close_timeout=2, max_size=None) as ws:
        for _ in range(2):
            ws.send(payload)
            assert ws.recv(timeout=20) == payload


def test_idle_timeout_closes_session(proxy_factory: ProxyFactory, upstream: Upstream) -> None:
    proxy = proxy_factory(websocket={"idle_timeout": 0.5})
    started = time.monotonic()
    with connect(ws_url(proxy), open_timeout=5, close_timeout=1) as ws:
        ws.send("ping-ish")
        assert ws.recv(timeout=5) == "ping-ish"
        with pytest.raises((ConnectionClosed, TimeoutError)):
            ws.recv(timeout=5)
    assert time.monotonic() - started < 4
    assert wait_for(lambda: upstream.ws_open == 0)
    assert wait_for(lambda: len(proxy.observer.tunnels) == 1)
    assert proxy.observer.tunnels[0].close_reason == "idle_timeout"


def test_client_close_closes_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    with proxy.connect() as sock:
        sock.sendall(upgrade_request())
        assert ResponseReader(sock).read().status == 101
        assert wait_for(lambda: upstream.ws_open == 1)
    # The client went away without a close frame: the upstream side must end too.
    assert wait_for(lambda: upstream.ws_open == 0)
    still_serving(proxy)


def test_upstream_close_closes_client(proxy: RunningProxy) -> None:
    ws = client_frames()
    with proxy.connect() as sock:
        sock.sendall(upgrade_request())
        reader = ResponseReader(sock)
        assert reader.read().status == 101
        sock.sendall(ws.send(wse.TextMessage(data="close-me")))
        events = read_ws_events(reader, ws, 1)
        assert isinstance(events[0], wse.CloseConnection)
        assert reader.read_until_close(timeout=3) == b""
        assert reader.closed


def test_refused_upgrade_returns_to_http(proxy: RunningProxy) -> None:
    with proxy.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(upgrade_request("/ws-401"))
        resp = reader.read()
        assert resp.status == 401
        assert resp.body == b"unauthorized"
        sock.sendall(raw_request("GET", "/echo?after=401"))
        after = reader.read()
        assert after.status == 200
        assert b"/echo?after=401" in after.body


def test_h2c_upgrade_is_stripped_not_tunnelled(proxy: RunningProxy) -> None:
    with proxy.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            raw_request(
                "GET",
                "/echo",
                headers=[
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
            )
        )
        resp = reader.read()
        assert resp.status == 200
        lowered = resp.body.lower()
        assert b"h2c" not in lowered
        assert b"http2-settings" not in lowered
        sock.sendall(raw_request("GET", "/echo?still-http"))
        assert reader.read().status == 200


def test_unrequested_101_becomes_502(proxy: RunningProxy) -> None:
    with proxy.connect() as sock:
        sock.sendall(raw_request("GET", "/switch"))
        resp = ResponseReader(sock).read()
        assert resp.status == 502
    still_serving(proxy)
