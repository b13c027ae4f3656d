"""Protocol tier: HTTP/2 streams through the real connection, stream and exchange objects.

Fake transports on both sides, an h2 peer as the client (tests/protocol/h2rig.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from h2.settings import SettingCodes
from hyperframe.frame import HeadersFrame, WindowUpdateFrame

from dsproxy.errors import UpstreamError
from dsproxy.http.h2codec import CANCEL, INTERNAL_ERROR
from dsproxy.proxy.h2stream import STREAM_BUFFER_BYTES
from tests.protocol.h2rig import H2Rig, http_response, upstream_request

CODECS = ["h11", "httptools"]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def window_updates(rig: H2Rig, sid: int) -> int:
    """The total WINDOW_UPDATE increment the proxy sent for stream ``sid``."""
    return sum(
        f.window_increment
        for f in rig.peer.frames
        if isinstance(f, WindowUpdateFrame) and f.stream_id == sid
    )


@pytest.mark.parametrize("codec", CODECS)
def test_get_is_forwarded_and_answered(codec: str) -> None:
    async def scenario() -> None:
        rig = H2Rig(codec=codec)
        assert rig.peer.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
        assert rig.peer.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        sid = rig.peer.request(
            "/items?q=a%2Fb",
            extra=[(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        )
        rig.pump()
        conn, up = rig.upstream_of(0)
        line, fields, rest = upstream_request(up)
        assert line == b"GET /items?q=a%2Fb HTTP/1.1"
        assert fields[b"host"] == b"example.test"
        assert fields[b"cookie"] == b"a=1; b=2"
        assert fields[b"x-forwarded-for"] == b"192.0.2.10"
        assert fields[b"x-forwarded-proto"] == b"http"
        assert rest == b""
        conn.data_received(http_response(b"hello", extra="Keep-Alive: 5\r\nX-Up: 1\r\n"))
        await rig.settle()
        seen = rig.peer.streams[sid]
        assert seen.status == 200
        assert seen.ended
        assert bytes(seen.data) == b"hello"
        assert seen.header(b"x-up") == b"1"
        assert seen.header(b"keep-alive") is None
        assert rig.pool.released == [conn]
        record = rig.observer.requests[-1]
        assert (record.status, record.protocol, record.http_version) == (200, "h2", "2.0")
        assert (record.client_ip, record.bytes_sent) == ("192.0.2.10", 5)
        assert rig.proto.streams == {}

    run(scenario)


def test_responses_of_one_loop_iteration_go_out_in_one_write() -> None:
    async def scenario() -> None:
        rig = H2Rig(upstreams=3)
        sids = [rig.peer.request(f"/r{i}") for i in range(3)]
        rig.send()
        await rig.settle()
        before = rig.writes()
        for i in range(3):
            rig.upstream_of(i)[0].data_received(http_response(b"r%d" % i))
        assert rig.writes() == before  # nothing yet: written once the iteration's reads are done
        await asyncio.sleep(0)
        assert rig.writes() == before + 1
        rig.pump()
        assert [bytes(rig.peer.streams[s].data) for s in sids] == [b"r0", b"r1", b"r2"]

    run(scenario)


@pytest.mark.parametrize("codec", CODECS)
def test_request_body_is_acknowledged_only_as_the_upstream_takes_it(codec: str) -> None:
    # h2 gives a stream's window back once half of it was taken (its WindowManager), so
    # the pieces here are over half of the 65535-byte window.
    async def scenario() -> None:
        rig = H2Rig(codec=codec, upstreams=0, http2={"stream_window_bytes": 65535})
        sid = rig.peer.request("/upload", method="POST", end=False,
                               extra=[(b"content-length", b"140000")])  # fmt: skip
        rig.peer.send_body(sid, b"a" * 40000)
        rig.pump()
        # No upstream connection yet: the bytes are held, and not given back.
        assert rig.pool.waiting
        assert window_updates(rig, sid) == 0
        conn, up = rig.add_upstream()
        rig.pool.idle.clear()
        exchange = rig.pool.waiting.pop()
        exchange.upstream_ready(conn, False)
        await rig.settle()
        assert up.take().endswith(b"a" * 40000)
        assert window_updates(rig, sid) == 40000
        # The upstream's buffer fills: what arrives now is written but not given back.
        conn.pause_writing()
        rig.peer.send_body(sid, b"b" * 60000)
        rig.pump()
        assert up.take() == b"b" * 60000
        assert window_updates(rig, sid) == 40000
        assert rig.peer.conn.local_flow_control_window(sid) == 5535  # the client must wait
        conn.resume_writing()
        await rig.settle()
        assert window_updates(rig, sid) == 100000
        rig.peer.send_body(sid, b"c" * 40000, end=True)
        rig.pump()
        assert up.take() == b"c" * 40000
        conn.data_received(http_response(b"done"))
        await rig.settle()
        assert rig.peer.streams[sid].status == 200
        assert rig.observer.requests[-1].bytes_received == 140000

    run(scenario)


def test_chunked_upload_with_trailers_both_ways() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = rig.peer.request("/grpc", method="POST", end=False,
                               extra=[(b"te", b"trailers")])  # fmt: skip
        rig.peer.send_body(sid, b"part")
        rig.peer.conn.send_headers(sid, [(b"x-checksum", b"42")], end_stream=True)
        rig.pump()
        conn, up = rig.upstream_of(0)
        line, fields, rest = upstream_request(up)
        assert fields[b"transfer-encoding"] == b"chunked"
        assert fields[b"te"] == b"trailers"
        assert rest == b"4\r\npart\r\n0\r\nx-checksum: 42\r\n\r\n"
        conn.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
            b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
        )
        await rig.settle()
        seen = rig.peer.streams[sid]
        assert bytes(seen.data) == b"abc"
        assert seen.ended
        assert seen.trailers == [(b"grpc-status", b"0")]
        assert seen.header(b"trailer") is None
        assert seen.header(b"transfer-encoding") is None

    run(scenario)


def test_a_closed_client_window_pauses_the_upstream_and_bounds_the_buffer() -> None:
    async def scenario() -> None:
        rig = H2Rig(peer={"auto_ack": False})
        sid = rig.peer.request("/big")
        rig.pump()
        conn, up = rig.upstream_of(0)
        size = 1_000_000
        conn.data_received(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        conn.data_received(b"x" * 200_000)
        await rig.settle()
        stream = rig.proto.streams[sid]
        assert len(rig.peer.streams[sid].data) == 65535  # the client's default window
        assert stream.out_bytes == 200_000 - 65535
        assert up.calls.count("pause_reading") == 1
        assert not up.reading
        assert stream.out_bytes <= STREAM_BUFFER_BYTES + 200_000
        # The client reads: the proxy sends as far as the window goes, then resumes.
        rig.peer.conn.acknowledge_received_data(65535, sid)
        rig.peer.conn.increment_flow_control_window(10**6)
        rig.peer.conn.increment_flow_control_window(10**6, stream_id=sid)
        await rig.settle()
        assert len(rig.peer.streams[sid].data) == 200_000
        assert up.reading
        conn.data_received(b"y" * (size - 200_000))
        await rig.settle()
        assert len(rig.peer.streams[sid].data) == size
        assert rig.peer.streams[sid].ended

    run(scenario)


def test_a_client_that_never_opens_its_window_is_reset_after_body_timeout() -> None:
    async def scenario() -> None:
        rig = H2Rig(peer={"auto_ack": False}, server={"body_timeout": 0.2})
        sid = rig.peer.request("/big")
        rig.pump()
        conn, up = rig.upstream_of(0)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 500000\r\n\r\n" + b"x" * 300_000)
        await rig.settle(0.5)
        assert rig.peer.streams[sid].reset == CANCEL
        assert up.aborted  # never put back in the pool mid-response
        record = rig.observer.requests[-1]
        assert record.error == "client_write_timeout"
        assert record.status == 200
        assert rig.proto.streams == {}
        assert not rig.client.closed

    run(scenario)


def test_a_full_client_socket_pauses_reading_everywhere() -> None:
    async def scenario() -> None:
        rig = H2Rig(upstreams=2, server={"body_timeout": 0.3})
        for path in ("/a", "/b"):
            rig.peer.request(path)
        rig.pump()
        ups = [rig.upstream_of(i) for i in range(2)]
        for conn, _ in ups:
            conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        rig.proto.pause_writing()
        assert not rig.client.reading
        assert all(not t.reading for _, t in ups)
        rig.proto.resume_writing()
        assert rig.client.reading
        assert all(t.reading for _, t in ups)
        rig.proto.pause_writing()
        await asyncio.sleep(0.45)
        assert rig.client.closed  # a client that stops reading altogether is cut off

    run(scenario)


def test_client_reset_aborts_the_exchange_and_drops_the_upstream() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = rig.peer.request("/slow")
        rig.pump()
        conn, up = rig.upstream_of(0)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await rig.settle()
        rig.peer.conn.reset_stream(sid, CANCEL)
        rig.pump()
        assert up.aborted
        assert conn not in rig.pool.released
        record = rig.observer.requests[-1]
        assert record.error == "client reset the stream"
        assert rig.proto.streams == {}
        sid2 = rig.peer.request("/next")  # the connection keeps serving
        rig.pump()
        rig.upstream_of(1)[0].data_received(http_response(b"ok"))
        await rig.settle()
        assert rig.peer.streams[sid2].status == 200

    run(scenario)


def test_client_reset_before_the_response_is_499() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = rig.peer.request("/slow")
        rig.pump()
        rig.peer.conn.reset_stream(sid, CANCEL)
        rig.pump()
        assert rig.upstream_of(0)[1].aborted
        assert rig.observer.requests[-1].status == 499

    run(scenario)


@pytest.mark.parametrize("codec", CODECS)
def test_upstream_failures(codec: str) -> None:
    async def scenario() -> None:
        rig = H2Rig(codec=codec)
        before = rig.peer.request("/a")
        started = rig.peer.request("/b")
        rig.pump()
        (c0, _), (c1, _) = rig.upstream_of(0), rig.upstream_of(1)
        c0.data_received(b"this is not HTTP\r\n\r\n")
        c1.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await rig.settle()
        c1.connection_lost(ConnectionResetError("gone"))
        await rig.settle()
        failed = rig.peer.streams[before]
        assert failed.status == 502
        assert failed.ended
        assert failed.header(b"content-type") == b"text/plain; charset=utf-8"
        assert bytes(failed.data) == b"502 Bad Gateway\n"
        assert rig.peer.streams[started].reset == INTERNAL_ERROR
        assert bytes(rig.peer.streams[started].data) == b"12345"

    run(scenario)


def test_upstream_timeout_is_504() -> None:
    async def scenario() -> None:
        rig = H2Rig(upstream={"read_timeout": 0.1})
        sid = rig.peer.request("/slow")
        rig.pump()
        await rig.settle(0.3)
        assert rig.peer.streams[sid].status == 504

    run(scenario)


def test_head_and_empty_responses_end_with_the_headers() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = rig.peer.request("/nothing")
        rig.pump()
        rig.upstream_of(0)[0].data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
        await rig.settle()
        heads = [f for f in rig.peer.frames if isinstance(f, HeadersFrame)]
        assert "END_STREAM" in heads[-1].flags
        assert rig.peer.streams[sid].status == 204
        assert rig.peer.streams[sid].ended

    run(scenario)


def test_expect_continue_and_early_hints() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        sid = rig.peer.request("/up", method="POST", end=False,
                               extra=[(b"expect", b"100-continue")])  # fmt: skip
        rig.pump()
        conn, _ = rig.upstream_of(0)
        conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n")
        await rig.settle()
        assert [f[0] for f in rig.peer.streams[sid].informational] == [
            (b":status", b"100"),
            (b":status", b"103"),
        ]

    run(scenario)


def test_body_over_max_body_bytes_is_413_then_the_body_is_stopped() -> None:
    async def scenario() -> None:
        rig = H2Rig(server={"max_body_bytes": 1000})
        sid = rig.peer.request("/up", method="POST", end=False)
        rig.peer.send_body(sid, b"z" * 1500)
        rig.pump()
        seen = rig.peer.streams[sid]
        assert seen.status == 413
        assert seen.ended
        assert rig.peer.resets().get(sid) == 0  # RST_STREAM NO_ERROR: stop sending (§8.1)
        assert rig.upstream_of(0)[1].aborted

    run(scenario)


def test_upstream_error_is_logged_with_the_upstream_error_kind() -> None:
    async def scenario() -> None:
        rig = H2Rig(upstreams=0)
        sid = rig.peer.request("/x")
        rig.pump()
        rig.pool.waiting.pop().upstream_failed(None, UpstreamError("refused", kind="connect"))
        await rig.settle()
        assert rig.peer.streams[sid].status == 502
        assert rig.observer.upstream_errors == ["connect"]

    run(scenario)
