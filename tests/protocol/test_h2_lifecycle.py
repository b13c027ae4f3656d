"""Protocol tier: how HTTP/2 connections start (preface, h2c off), drain, and carry WebSockets."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from dsproxy.config import Config, ServerConfig, UpstreamConfig
from dsproxy.http.codec import get_codec
from dsproxy.http.h2codec import (
    CANCEL,
    HTTP_1_1_REQUIRED,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
)
from dsproxy.http.h2map import websocket_accept
from dsproxy.net.addr import HostPort
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.h2connection import DRAIN_PING_SECONDS, Http2Connection
from dsproxy.proxy.h2tunnel import RelayUpstream
from dsproxy.proxy.pool import PoolRegistry
from dsproxy.proxy.router import build_router
from dsproxy.proxy.shared import Shared
from tests.conftest import RecordingObserver
from tests.h2client import H2Peer, request_fields
from tests.protocol.h2rig import SERVER, H2Rig, http_response, upstream_request
from tests.protocol.test_connection_fake import FakePool, FakeTransport


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def plain_connection(h2c: bool) -> tuple[ClientConnection, FakeTransport, FakePool]:
    config = Config(
        server=ServerConfig(listen=(HostPort("::", 16980),), h2c=h2c),
        upstream=UpstreamConfig(servers=(SERVER,)),
    )
    pool = FakePool()
    pools = PoolRegistry({"default": pool})
    shared = Shared(config, get_codec("h11"), pools, build_router(config, pools),
                    RecordingObserver())  # fmt: skip
    proto = ClientConnection(shared)
    transport = FakeTransport(("192.0.2.1", 5000), ("0.0.0.0", 16980))
    proto.connection_made(cast(asyncio.Transport, transport))
    return proto, transport, pool


def test_without_h2c_the_preface_gets_http_1_1_required() -> None:
    async def scenario() -> None:
        proto, transport, _ = plain_connection(h2c=False)
        proto.data_received(PREFACE[:10])  # split: it may still be the preface
        assert transport.written == b""
        assert not transport.closed
        proto.data_received(PREFACE[10:] + SettingsFrame(0).serialize())
        peer = H2Peer()
        peer.feed(transport.take())
        assert peer.goaway_codes() == [HTTP_1_1_REQUIRED]
        assert isinstance(peer.frames[0], SettingsFrame)  # the server preface comes first
        assert transport.closed

    run(scenario)


@pytest.mark.parametrize("cuts", [[1], [3, 4], [14, 15, 16, 23]])
def test_the_preface_is_recognised_however_it_is_split(cuts: list[int]) -> None:
    async def scenario() -> None:
        proto, transport, _ = plain_connection(h2c=True)
        peer = H2Peer()
        data = peer.outgoing()
        last = 0
        for cut in [*cuts, len(data)]:
            proto.data_received(data[last:cut])
            last = cut
        assert isinstance(transport.protocol, Http2Connection)
        peer.feed(transport.take())
        assert SettingCodes.MAX_CONCURRENT_STREAMS in peer.remote_settings
        transport.protocol.connection_lost(None)

    run(scenario)


def test_http_1_1_that_starts_like_the_preface_is_still_http_1_1() -> None:
    async def scenario() -> None:
        proto, transport, pool = plain_connection(h2c=True)
        proto.data_received(b"P")
        proto.data_received(b"OST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        assert transport.protocol is None
        assert pool.waiting
        proto.connection_lost(None)

    run(scenario)


def test_accounting_moves_to_the_http2_connection() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        assert rig.shared.connections == {rig.proto}
        assert rig.observer.opened == ["ipv4"]
        rig.proto.connection_lost(None)
        assert rig.shared.connections == set()
        assert rig.observer.closed == ["ipv4"]

    run(scenario)


def test_graceful_shutdown_is_the_two_step_goaway() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        first = rig.peer.request("/in-flight")
        rig.pump()
        assert rig.proto.close_if_idle() is False
        rig.peer.feed(rig.client.take())
        goaway, ping = rig.peer.frames[-2:]
        assert isinstance(goaway, GoAwayFrame)
        assert goaway.last_stream_id == 2**31 - 1
        assert isinstance(ping, PingFrame)
        assert "ACK" not in ping.flags
        # h2 as a client stops at a GOAWAY: from here on the frames are made by hand.
        late = HeadersFrame(3, rig.peer.conn.encoder.encode(request_fields("/late")),
                            flags=["END_HEADERS", "END_STREAM"]).serialize()  # fmt: skip
        rig.send(PingFrame(0, ping.opaque_data, flags=["ACK"]).serialize())
        rig.peer.feed(rig.client.take())
        assert rig.peer.goaway_last_ids() == [2**31 - 1, first]
        rig.send(late)  # a client that has not read the second GOAWAY yet
        rig.peer.feed(rig.client.take())
        assert rig.peer.resets() == {3: REFUSED_STREAM}
        assert not rig.client.closed
        rig.upstream_of(0)[0].data_received(http_response(b"done"))
        await asyncio.sleep(0)
        rig.peer.feed(rig.client.take())
        data = [f for f in rig.peer.frames if isinstance(f, DataFrame) and f.stream_id == first]
        assert data[-1].data == b"done"
        assert "END_STREAM" in data[-1].flags
        assert rig.client.closed
        assert set(rig.peer.goaway_codes()) == {NO_ERROR}
        assert rig.observer.requests[-1].status == 200

    run(scenario)


def test_the_second_goaway_goes_out_without_a_ping_answer() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        rig.peer.request("/in-flight")
        rig.pump()
        rig.proto.close_if_idle()
        rig.client.take()  # the peer never answers the PING
        await asyncio.sleep(DRAIN_PING_SECONDS + 0.2)
        rig.peer.feed(rig.client.take())
        assert rig.peer.goaway_last_ids()[-1] == 1

    run(scenario)


def test_an_idle_connection_closes_at_once_on_shutdown() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        assert rig.proto.close_if_idle() is True
        rig.pump()
        assert rig.client.closed
        assert rig.peer.goaway_codes() == [NO_ERROR]

    run(scenario)


def test_abort_ends_everything() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        rig.peer.request("/x")
        rig.pump()
        rig.proto.abort()
        assert rig.client.aborted
        rig.proto.connection_lost(None)
        assert rig.observer.requests[-1].status == 499
        assert rig.upstream_of(0)[1].aborted

    run(scenario)


def test_client_goaway_ends_the_streams_in_flight() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        rig.peer.request("/x")
        rig.pump()
        rig.peer.conn.close_connection()
        rig.pump()
        assert rig.client.closed
        assert rig.upstream_of(0)[1].aborted

    run(scenario)


# ---------------------------------------------------------------- WebSocket (RFC 8441)
WS = [(b"sec-websocket-version", b"13"), (b"sec-websocket-protocol", b"chat")]


def extended_connect(rig: H2Rig) -> int:
    sid = rig.peer.conn.get_next_available_stream_id()
    rig.peer.conn.send_headers(sid, [
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
        (b":authority", b"chat.example"), (b":path", b"/ws?room=1"), *WS,
    ])  # fmt: skip
    rig.pump()
    return sid


def switch(rig: H2Rig, greeting: bytes = b"") -> tuple[int, FakeTransport]:
    sid = extended_connect(rig)
    conn, up = rig.upstream_of(0)
    line, fields, _ = upstream_request(up)
    assert line == b"GET /ws?room=1 HTTP/1.1"
    assert fields[b"upgrade"] == b"websocket"
    assert fields[b"connection"] == b"upgrade"
    assert fields[b"sec-websocket-protocol"] == b"chat"
    key = fields[b"sec-websocket-key"]
    assert len(base64.b64decode(key)) == 16
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + websocket_accept(key) + b"\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n\r\n" + greeting
    )
    return sid, up


def test_websocket_over_http2_relays_both_ways() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid, up = switch(rig, greeting=b"\x81\x02hi")
        await rig.settle()
        seen = rig.peer.streams[sid]
        assert seen.status == 200
        assert seen.header(b"sec-websocket-protocol") == b"chat"
        assert seen.header(b"sec-websocket-accept") is None
        assert bytes(seen.data) == b"\x81\x02hi"
        assert not seen.ended
        rig.peer.send_body(sid, b"\x81\x85mask!hello")
        rig.pump()
        assert up.take() == b"\x81\x85mask!hello"
        relay_proto = up.protocol
        assert relay_proto is not None
        relay_proto.data_received(b"\x81\x03yes")  # type: ignore[attr-defined]
        await rig.settle()
        assert bytes(seen.data).endswith(b"\x81\x03yes")
        rig.peer.conn.end_stream(sid)  # the client is done: FIN upstream
        rig.pump()
        assert up.eof_written
        relay_proto.eof_received()  # type: ignore[attr-defined]
        await rig.settle()
        assert seen.ended
        assert up.closed
        (record,) = rig.observer.tunnels
        assert (record.protocol, record.close_reason, record.target) == ("h2", "upstream_closed",
                                                                         "/ws?room=1")  # fmt: skip
        assert (record.bytes_from_client, record.bytes_to_client) == (12, 9)
        assert rig.proto.streams == {}
        assert rig.observer.requests == []

    run(scenario)


def test_websocket_data_before_the_upstream_answers_waits_for_the_switch() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = extended_connect(rig)
        rig.peer.send_body(sid, b"early", end=True)
        rig.pump()
        conn, up = rig.upstream_of(0)
        head = up.take()
        assert head.endswith(b"\r\n\r\n")  # the Upgrade request alone
        key = re.search(rb"(?i)sec-websocket-key: (\S+)", head)
        assert key is not None
        conn.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + websocket_accept(key.group(1)) + b"\r\n\r\n"
        )
        await rig.settle()
        assert rig.peer.streams[sid].status == 200
        assert up.take() == b"early"
        assert up.eof_written  # the client's END_STREAM, passed on as FIN

    run(scenario)


def test_websocket_upstream_lost_resets_the_stream() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid, up = switch(rig)
        await rig.settle()
        assert up.protocol is not None
        up.protocol.connection_lost(ConnectionResetError())
        await rig.settle()
        assert rig.peer.streams[sid].reset == CANCEL
        assert rig.observer.tunnels[0].close_reason == "upstream_closed"

    run(scenario)


def test_websocket_client_reset_closes_the_upstream() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid, up = switch(rig)
        await rig.settle()
        rig.peer.conn.reset_stream(sid, CANCEL)
        rig.pump()
        assert up.closed
        assert rig.observer.tunnels[0].close_reason == "client_closed"

    run(scenario)


def test_websocket_idle_timeout() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid, up = switch(rig)
        await rig.settle()
        assert up.protocol is not None
        relay = up.protocol.relay  # type: ignore[attr-defined]
        relay.idle_timeout = 0.1
        relay._check_idle()  # re-arm with the short timeout
        await rig.settle(0.3)
        assert rig.peer.streams[sid].reset == CANCEL
        assert rig.observer.tunnels[0].close_reason == "idle_timeout"

    run(scenario)


def test_websocket_client_window_pauses_the_upstream() -> None:
    async def scenario() -> None:
        rig = H2Rig(peer={"auto_ack": False})
        sid, up = switch(rig)
        await rig.settle()
        relay = cast(RelayUpstream, up.protocol)
        relay.data_received(b"z" * 200_000)
        await rig.settle()
        assert len(rig.peer.streams[sid].data) == 65535
        assert not up.reading
        rig.peer.conn.increment_flow_control_window(10**6)
        rig.peer.conn.increment_flow_control_window(10**6, stream_id=sid)
        await rig.settle()
        assert len(rig.peer.streams[sid].data) == 200_000
        assert up.reading

    run(scenario)


def test_a_bad_accept_key_is_502() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = extended_connect(rig)
        conn, up = rig.upstream_of(0)
        conn.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
        )
        await rig.settle()
        assert rig.peer.streams[sid].status == 502
        assert up.aborted
        assert rig.observer.requests[-1].status == 502

    run(scenario)


def test_a_refused_upgrade_is_an_ordinary_response() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = extended_connect(rig)
        rig.upstream_of(0)[0].data_received(http_response(b"no", status="401 Unauthorized"))
        await rig.settle()
        assert rig.peer.streams[sid].status == 401

    run(scenario)


def test_websocket_off_is_not_advertised_and_refused() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2={"websocket": False}, peer={"validate": False})
        assert rig.peer.remote_settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
        sid = extended_connect(rig)
        assert rig.peer.streams[sid].reset == PROTOCOL_ERROR
        assert rig.upstream_of(0)[1].written == b""

    run(scenario)
