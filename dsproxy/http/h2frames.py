"""A guard in front of the HTTP/2 parser: frame headers read before h2 sees the bytes.

The h2 library parses frames and keeps the protocol's state; it does not
bound how fast a client may send frames that cost the server work but carry
no request, nor how many bytes of one header block it buffers before it can
decode them. ``FrameGuard`` reads only the 9-byte frame headers (RFC 9113
§4.1) of what a client sends, skipping payloads by arithmetic, and says when
a client crossed a line:

* CONTINUATION flood (the CVE-2024-27316 class): a header block still open
  after ``max_block_bytes`` of HEADERS + CONTINUATION payload, or after
  ``MAX_BLOCK_FRAMES`` frames, is refused before anything is decoded.
* control-frame floods (SETTINGS, PING, PRIORITY, empty DATA without
  END_STREAM, empty CONTINUATION, frames of unknown types): a token bucket.
* rapid reset (CVE-2023-44487): every RST_STREAM the client sends takes a
  token from the reset bucket; the connection takes one more for each stream
  it resets itself because of a client's error ("MadeYouReset",
  CVE-2025-8671), so both draw on one budget.

A refusal is a connection error ENHANCE_YOUR_CALM (RFC 9113 §5.4.1, §11).
``block_started`` is the loop time the open header block began (0: none),
for the header timeout of a HEADERS frame whose CONTINUATIONs never come.
"""

from __future__ import annotations

from typing import Final

# Frame types (RFC 9113 §6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
CONTINUATION: Final = 0x9
LAST_KNOWN_TYPE: Final = 0x9
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4
FRAME_HEADER_BYTES: Final = 9
PREFACE_BYTES: Final = 24
# h2 itself refuses a block of more than 64 CONTINUATION frames; stop earlier and
# with the code that says why.
MAX_BLOCK_FRAMES: Final = 32

# What feed() returns.
OK: Final = 0
HEADER_BLOCK_TOO_LARGE: Final = 1
CONTROL_FLOOD: Final = 2
RESET_FLOOD: Final = 3
VIOLATIONS = {
    HEADER_BLOCK_TOO_LARGE: "header block over its limit (CONTINUATION flood)",
    CONTROL_FLOOD: "control frames over http2.control_frame_rate",
    RESET_FLOOD: "stream resets over http2.reset_rate",
}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take`` says whether one was left."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = 0.0

    def take(self, now: float) -> bool:
        tokens = self.tokens
        if tokens < self.burst:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class FrameGuard:
    """Reads frame headers of a client's byte stream (after its preface); counts and bounds."""

    __slots__ = (
        "skip", "partial", "block_bytes", "block_frames", "block_started", "max_block_bytes",
        "control", "resets",
    )  # fmt: skip

    def __init__(self, max_block_bytes: int, control: TokenBucket, resets: TokenBucket) -> None:
        self.skip = PREFACE_BYTES  # bytes of the current frame's payload (or the preface) left
        self.partial = b""  # a frame header split across reads
        self.block_bytes = 0
        self.block_frames = 0
        self.block_started = 0.0  # loop time an unfinished header block began; 0 = none
        self.max_block_bytes = max_block_bytes
        self.control = control
        self.resets = resets

    def feed(self, data: bytes, now: float) -> int:
        """Account for ``data``; return OK or the violation (a connection error)."""
        n = len(data)
        i = self.skip
        if i >= n:
            self.skip = i - n
            return OK
        if self.partial:
            need = FRAME_HEADER_BYTES - len(self.partial)
            header = self.partial + data[i : i + need]
            if len(header) < FRAME_HEADER_BYTES:
                self.partial = header
                self.skip = 0
                return OK
            self.partial = b""
            verdict = self._frame(header, 0, now)
            if verdict:
                return verdict
            i += need + ((header[0] << 16) | (header[1] << 8) | header[2])
        while i + FRAME_HEADER_BYTES <= n:
            verdict = self._frame(data, i, now)
            if verdict:
                return verdict
            i += FRAME_HEADER_BYTES + ((data[i] << 16) | (data[i + 1] << 8) | data[i + 2])
        if i < n:
            self.partial = data[i:]
            self.skip = 0
        else:
            self.skip = i - n
        return OK

    def _frame(self, data: bytes, i: int, now: float) -> int:
        ftype = data[i + 3]
        if ftype == DATA:
            empty = data[i + 2] == 0 and data[i + 1] == 0 and data[i] == 0
            if empty and not data[i + 4] & END_STREAM and not self.control.take(now):
                return CONTROL_FLOOD
            return OK
        length = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
        if ftype == HEADERS:
            if data[i + 4] & END_HEADERS:
                return OK
            self.block_bytes = length
            self.block_frames = 1
            self.block_started = now or 1e-9
            return HEADER_BLOCK_TOO_LARGE if length > self.max_block_bytes else OK
        if ftype == CONTINUATION:
            self.block_bytes += length
            self.block_frames += 1
            if data[i + 4] & END_HEADERS:
                self.block_started = 0.0
            elif length == 0 and not self.control.take(now):
                return CONTROL_FLOOD
            if self.block_bytes > self.max_block_bytes or self.block_frames > MAX_BLOCK_FRAMES:
                return HEADER_BLOCK_TOO_LARGE
            return OK
        if ftype == RST_STREAM:
            return OK if self.resets.take(now) else RESET_FLOOD
        if ftype in (SETTINGS, PING, PRIORITY) or ftype > LAST_KNOWN_TYPE:
            return OK if self.control.take(now) else CONTROL_FLOOD
        return OK  # WINDOW_UPDATE, GOAWAY; PUSH_PROMISE is h2's protocol error
