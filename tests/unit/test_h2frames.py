"""Pure tests of FrameGuard (dsproxy.http.h2frames): frame headers counted before h2 parses."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from dsproxy.http.h2codec import PREFACE
from dsproxy.http.h2frames import (
    CONTROL_FLOOD,
    HEADER_BLOCK_TOO_LARGE,
    MAX_BLOCK_FRAMES,
    OK,
    RESET_FLOOD,
    FrameGuard,
    TokenBucket,
)


def frame(ftype: int, flags: int = 0, stream: int = 1, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((ftype, flags))
        + struct.pack(">I", stream)
        + payload
    )


def guard(block: int = 1000, control: int = 5, resets: int = 5, rate: float = 1.0) -> FrameGuard:
    return FrameGuard(block, TokenBucket(rate, control), TokenBucket(rate, resets))


def feed_all(g: FrameGuard, data: bytes, cuts: list[int], now: float = 0.0) -> int:
    """Feed ``data`` split at ``cuts``; the first violation, or OK."""
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        verdict = g.feed(data[last:cut], now)
        if verdict:
            return verdict
        last = cut
    return OK


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(0.4)  # 0.8 of a token
    assert bucket.take(0.5)
    assert bucket.take(10.0)
    assert bucket.take(10.0)
    assert not bucket.take(10.0)


def test_ordinary_traffic_passes() -> None:
    g = guard()
    data = PREFACE + frame(0x4) + frame(0x8, payload=b"\x00\x00\x10\x00", stream=0)
    for sid in range(1, 200, 2):
        data += frame(0x1, 0x4 | 0x1, sid, b"\x82\x86\x84") + frame(0x0, 0x1, sid, b"body")
    assert g.feed(data, 0.0) == OK
    assert g.block_started == 0.0


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_a_header_block_is_tracked_across_any_split(cuts: list[int]) -> None:
    g = guard(block=100)
    data = (
        PREFACE
        + frame(0x1, 0, 1, b"a" * 40)  # HEADERS without END_HEADERS
        + frame(0x9, 0, 1, b"b" * 40)
        + frame(0x9, 0x4, 1, b"c" * 10)  # END_HEADERS: 90 bytes in all
        + frame(0x1, 0, 3, b"d" * 60)
        + frame(0x9, 0, 3, b"e" * 41)  # 101 bytes: over
    )
    assert feed_all(g, data, cuts, now=3.0) == HEADER_BLOCK_TOO_LARGE


def test_block_started_is_set_while_a_block_is_open() -> None:
    g = guard()
    assert g.feed(PREFACE + frame(0x1, 0, 1, b"x"), 7.0) == OK
    assert g.block_started == 7.0
    assert g.feed(frame(0x9, 0x4, 1, b"y"), 8.0) == OK
    assert g.block_started == 0.0


def test_continuation_flood_of_empty_frames() -> None:
    g = guard(control=1000)
    data = PREFACE + frame(0x1, 0, 1, b"x") + frame(0x9, 0, 1) * MAX_BLOCK_FRAMES
    assert g.feed(data, 0.0) == HEADER_BLOCK_TOO_LARGE


@given(st.sampled_from([0x2, 0x4, 0x6, 0xA, 0x10]), st.lists(st.integers(0, 200), max_size=4))
def test_control_frame_flood(ftype: int, cuts: list[int]) -> None:
    g = guard(control=5)
    payload = {0x2: b"\x00" * 5, 0x6: b"\x00" * 8}.get(ftype, b"")
    data = PREFACE + frame(ftype, 0, 0 if ftype in (0x4, 0x6) else 1, payload) * 6
    assert feed_all(g, data, cuts) == CONTROL_FLOOD


def test_empty_data_frames_count_unless_they_end_the_stream() -> None:
    g = guard(control=3)
    assert g.feed(PREFACE + frame(0x0, 0x1, 1) * 10, 0.0) == OK  # END_STREAM: legitimate
    assert g.feed(frame(0x0, 0, 1, b"x") * 10, 0.0) == OK  # data: legitimate
    assert g.feed(frame(0x0, 0, 1) * 4, 0.0) == CONTROL_FLOOD


def test_the_control_budget_refills() -> None:
    g = guard(control=2, rate=10.0)
    assert g.feed(PREFACE + frame(0x6, 0, 0, b"\x00" * 8) * 2, 0.0) == OK
    assert g.feed(frame(0x6, 0, 0, b"\x00" * 8), 0.0) == CONTROL_FLOOD
    g = guard(control=2, rate=10.0)
    assert g.feed(PREFACE + frame(0x6, 0, 0, b"\x00" * 8) * 2, 0.0) == OK
    assert g.feed(frame(0x6, 0, 0, b"\x00" * 8), 0.5) == OK


def test_rst_stream_takes_from_the_reset_budget() -> None:
    g = guard(resets=3)
    data = PREFACE
    for sid in (1, 3, 5, 7):
        data += frame(0x1, 0x5, sid, b"\x82") + frame(0x3, 0, sid, b"\x00\x00\x00\x08")
    assert g.feed(data, 0.0) == RESET_FLOOD
