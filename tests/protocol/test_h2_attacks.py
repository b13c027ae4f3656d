"""Protocol tier: the known HTTP/2 attacks, each closed (docs/reliability.md, "HTTP/2").

Frames are made with the h2 library (as a client) or by hand where h2 refuses to
send them; the proxy runs on fake transports (tests/protocol/h2rig.py).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsproxy.http.h2codec import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
)
from tests.protocol.h2rig import H2Rig, http_response

LIMITS = {"reset_rate": 1.0, "reset_burst": 10, "control_frame_rate": 1.0,
          "control_frame_burst": 20}  # fmt: skip


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def headers_block(rig: H2Rig, sid: int, path: str = "/", end: bool = True) -> bytes:
    """A complete HEADERS frame for a GET, encoded with the peer's HPACK context."""
    rig.peer.request(path)  # keeps the peer's state (HPACK, stream ids) in step
    data = rig.peer.outgoing()
    assert rig.peer.conn.highest_outbound_stream_id == sid
    return data


def assert_calm(rig: H2Rig) -> None:
    assert rig.peer.goaway_codes()[-1] == ENHANCE_YOUR_CALM
    assert rig.client.closed
    assert rig.observer.client_errors[-1] == "http2_flood"


def test_rapid_reset_ends_the_connection() -> None:
    """CVE-2023-44487: open a stream, reset it, again and again."""

    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS, upstreams=30)
        for _ in range(11):
            sid = rig.peer.request("/")
            rig.send()  # the exchange starts: its request goes upstream
            rig.peer.conn.reset_stream(sid, CANCEL)
            rig.send()
        rig.pump()
        assert_calm(rig)
        # Every exchange started was aborted with its stream, its upstream dropped.
        # (the 11th was aborted with the connection)
        assert [r.status for r in rig.observer.requests] == [499] * 11
        assert all(t.aborted for _, t in rig.upstreams[:11])
        assert rig.proto.streams == {}

    run(scenario)


def test_resets_within_the_budget_are_fine() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS, upstreams=30)
        for _ in range(5):
            sid = rig.peer.request("/")
            rig.peer.conn.reset_stream(sid, CANCEL)
        rig.pump()
        assert not rig.client.closed
        assert rig.peer.goaway_codes() == []

    run(scenario)


def test_server_provoked_resets_count_too() -> None:
    """CVE-2025-8671 ("MadeYouReset"): frames that make the server reset its own streams."""

    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS, upstreams=30)
        for i in range(11):
            sid = rig.peer.request("/", end=False)
            data = rig.peer.outgoing()
            if i % 2:  # DATA after END_STREAM: STREAM_CLOSED
                data += DataFrame(sid, b"x", flags=["END_STREAM"]).serialize()
                data += DataFrame(sid, b"y").serialize()
            else:  # a stream window pushed over 2^31-1: FLOW_CONTROL_ERROR
                update = WindowUpdateFrame(sid)
                update.window_increment = 2**31 - 1
                data += update.serialize()
            rig.send(data)
        rig.pump()
        resets = rig.peer.resets()
        assert len(resets) == 11
        assert set(resets.values()) <= {3, 5}
        assert_calm(rig)
        # Each stream the proxy reset had its exchange aborted (its upstream dropped).
        assert len(rig.observer.requests) == 11
        assert all(r.status == 499 for r in rig.observer.requests)

    run(scenario)


def test_streams_refused_by_the_server_count_too() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2={**LIMITS, "max_concurrent_streams": 2}, upstreams=40)
        assert rig.peer.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 2
        rig.peer.ignore_limits()
        for _ in range(13):  # 2 served, then REFUSED_STREAM for each: over the burst of 10
            rig.peer.request("/")
        rig.pump()
        assert set(rig.peer.resets().values()) == {REFUSED_STREAM}
        assert len(rig.peer.resets()) == 11  # the 11th is over the burst of 10
        assert_calm(rig)

    run(scenario)


def test_too_many_concurrent_streams_are_refused() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2={"max_concurrent_streams": 2}, upstreams=5)
        # The peer obeys the limit it was told; a client that has not seen it yet may not.
        rig.peer.ignore_limits()
        sids = [rig.peer.request(f"/{i}") for i in range(3)]
        rig.pump()
        assert rig.peer.streams[sids[2]].reset == REFUSED_STREAM
        for i in range(2):
            rig.upstream_of(i)[0].data_received(http_response(b"ok"))
        await rig.settle()
        assert [rig.peer.streams[s].status for s in sids[:2]] == [200, 200]
        again = rig.peer.request("/again")  # room again
        rig.pump()
        rig.upstream_of(2)[0].data_received(http_response(b"ok"))
        await rig.settle()
        assert rig.peer.streams[again].status == 200

    run(scenario)


def test_continuation_flood() -> None:
    """CVE-2024-27316 class: a header block that never ends."""

    async def scenario() -> None:
        rig = H2Rig(http2={"max_header_list_bytes": 4096})
        data = HeadersFrame(1, b"\x82", flags=[]).serialize()
        data += ContinuationFrame(1, b"\x00" * 1000).serialize() * 9  # 9001 > 2 * 4096
        rig.send(data)
        rig.pump()
        assert_calm(rig)

    run(scenario)


def test_continuation_flood_of_empty_frames() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        data = HeadersFrame(1, b"\x82", flags=[]).serialize()
        data += ContinuationFrame(1, b"").serialize() * 100
        rig.send(data)
        rig.pump()
        assert_calm(rig)

    run(scenario)


def test_hpack_bomb_ends_the_connection() -> None:
    """A small block that decodes to a huge header list (one table entry, referenced often)."""

    async def scenario() -> None:
        rig = H2Rig(http2={"max_header_list_bytes": 8192})
        rig.peer.conn.encoder.header_table_size = 4096
        big = b"x" * 3000
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"a"), (b"x-bomb", big)]  # fmt: skip
        block = rig.peer.conn.encoder.encode(fields)
        # 0xbe: the most recent dynamic-table entry (x-bomb) again, each costing 1 byte.
        block += b"\xbe" * 20
        rig.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        rig.pump()
        assert rig.peer.goaway_codes()[-1] == ENHANCE_YOUR_CALM
        assert rig.client.closed

    run(scenario)


def test_header_list_over_the_limit_is_431_and_the_connection_stays() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2={"max_header_list_bytes": 4096})
        assert rig.peer.remote_settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 4096
        rig.peer.ignore_limits()  # the peer would refuse to send it
        sid = rig.peer.request("/", extra=[(b"x-big", b"v" * 5000)])
        rig.pump()
        assert rig.peer.streams[sid].status == 431
        assert rig.observer.client_errors[-1] == "header_too_large"
        ok = rig.peer.request("/next")
        rig.pump()
        rig.upstream_of(0)[0].data_received(http_response(b"ok"))
        await rig.settle()
        assert rig.peer.streams[ok].status == 200

    run(scenario)


def _flood(frame: bytes, count: int) -> Callable[[], Coroutine[Any, Any, None]]:
    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS)
        rig.send(frame * count)
        rig.pump()
        assert_calm(rig)

    return scenario


def test_settings_flood() -> None:
    run(
        _flood(SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 65535}).serialize(), 25)
    )


def test_ping_flood() -> None:
    run(_flood(PingFrame(0, b"12345678").serialize(), 25))


def test_priority_flood() -> None:
    run(_flood(PriorityFrame(1, depends_on=0, stream_weight=16).serialize(), 25))


def test_empty_data_flood() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS)
        sid = rig.peer.request("/up", method="POST", end=False)
        rig.send(rig.peer.outgoing() + DataFrame(sid, b"").serialize() * 25)
        rig.pump()
        assert_calm(rig)

    run(scenario)


def test_unknown_frame_flood() -> None:
    frame = struct.pack(">I", 4)[1:] + b"\xfa\x00" + struct.pack(">I", 0) + b"abcd"
    run(_flood(frame, 25))


def test_malformed_request_is_a_stream_error_and_others_carry_on() -> None:
    async def scenario() -> None:
        rig = H2Rig(peer={"validate": False})
        bad = rig.peer.request("/", extra=[(b"connection", b"keep-alive")])
        good = rig.peer.request("/fine")
        rig.pump()
        assert rig.peer.streams[bad].reset == PROTOCOL_ERROR
        rig.upstream_of(0)[0].data_received(http_response(b"ok"))
        await rig.settle()
        assert rig.peer.streams[good].status == 200
        assert not rig.client.closed

    run(scenario)


def test_smuggling_attempts_never_reach_the_upstream() -> None:
    async def scenario() -> None:
        rig = H2Rig(peer={"validate": False})
        sids = [
            rig.peer.request("/", extra=[(b"x-a", b"1\r\nX-Injected: 1")]),
            rig.peer.request("/ HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /"),
            rig.peer.request("/", extra=[(b"transfer-encoding", b"chunked")]),
            rig.peer.request("/", extra=[(b"host", b"other.example")]),
        ]
        rig.pump()
        assert rig.upstream_of(0)[1].written == b""
        assert [rig.peer.streams[s].reset for s in sids] == [PROTOCOL_ERROR] * 4
        assert not rig.client.closed
        # Conflicting Content-Length fields: h2 itself makes that a connection error.
        rig.peer.request("/", extra=[(b"content-length", b"5"), (b"content-length", b"6")])
        rig.pump()
        assert rig.upstream_of(0)[1].written == b""
        assert rig.peer.goaway_codes() == [PROTOCOL_ERROR]
        assert rig.client.closed

    run(scenario)


def test_an_unfinished_header_block_times_out() -> None:
    async def scenario() -> None:
        rig = H2Rig(server={"header_timeout": 0.2})
        rig.send(HeadersFrame(1, b"\x82", flags=[]).serialize())
        await rig.settle(0.4)
        assert rig.client.closed
        assert rig.peer.goaway_codes()[-1] == ENHANCE_YOUR_CALM

    run(scenario)


def test_an_idle_connection_is_closed_after_keepalive_timeout() -> None:
    async def scenario() -> None:
        rig = H2Rig(server={"keepalive_timeout": 0.2})
        sid = rig.peer.request("/")
        rig.pump()
        rig.upstream_of(0)[0].data_received(http_response(b"ok"))
        await rig.settle(0.1)
        assert rig.peer.streams[sid].status == 200
        assert not rig.client.closed
        await rig.settle(0.3)
        assert rig.client.closed
        assert rig.peer.goaway_codes() == [NO_ERROR]

    run(scenario)


def test_a_connection_that_never_sends_a_request() -> None:
    async def scenario() -> None:
        rig = H2Rig(server={"header_timeout": 0.2, "keepalive_timeout": 60.0})
        await rig.settle(0.4)
        assert rig.client.closed

    run(scenario)


def test_garbage_after_the_preface_is_a_protocol_error() -> None:
    async def scenario() -> None:
        rig = H2Rig()
        rig.send(b"\x00\x00\x04\x01\x05\x00\x00\x00\x02" + b"\xff" * 4)  # even stream id
        rig.pump()
        assert rig.peer.goaway_codes()[-1] == PROTOCOL_ERROR
        assert rig.client.closed
        assert rig.observer.client_errors[-1] == "http2_protocol_error"

    run(scenario)


def test_rst_stream_frames_without_streams_are_still_counted() -> None:
    async def scenario() -> None:
        rig = H2Rig(http2=LIMITS)
        rig.send(RstStreamFrame(1, error_code=CANCEL).serialize() * 12)
        rig.pump()
        assert rig.client.closed

    run(scenario)


_frames = st.lists(
    st.tuples(
        st.integers(0, 0x11),  # frame type, unknown ones too
        st.integers(0, 255),  # flags
        st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),  # stream id
        st.binary(max_size=40),
    ),
    max_size=12,
)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_frames, cut=st.integers(0, 200))
def test_arbitrary_frames_never_raise(frames: list[tuple[int, int, int, bytes]], cut: int) -> None:
    """Whatever the frames, a stream or connection error: no exception, no error logged."""

    async def scenario() -> None:
        rig = H2Rig(upstreams=2)
        rig.peer.request("/up", method="POST", end=False)  # stream 1 open: frames may hit it
        data = rig.peer.outgoing() + b"".join(
            struct.pack(">I", len(p))[1:] + bytes((t, f)) + struct.pack(">I", s) + p
            for t, f, s, p in frames
        )
        rig.send(data[:cut])
        rig.send(data[cut:])
        await rig.settle()
        rig.proto.connection_lost(None)

    errors = _Errors()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        run(scenario)
    finally:
        root.removeHandler(errors)
    assert errors.seen == []
