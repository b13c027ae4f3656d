"""Flow helpers of the client side: a read gate, a deadline timer, a held request body.

``ReadGate`` pauses reading from a transport for any number of named reasons
and resumes it when none is left, so one reason lifting (the upstream drained)
cannot resume reading that another (a pipelined request waiting) still needs
paused. ``DeadlineTimer`` is one timer per connection: callers say "check no
later than T"; a later T than the one armed costs nothing, because the check
that runs first re-arms itself for whatever is still due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dsproxy.http.codec.base import ClientCodec, Headers


class ReadGate:
    __slots__ = ("transport", "reasons")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reasons = 0  # bits, one per reason

    def pause(self, reason: int) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reasons: int) -> None:
        was = self.reasons
        self.reasons &= ~reasons
        transport = self.transport
        if was and not self.reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()


class DeadlineTimer:
    __slots__ = ("loop", "callback", "handle", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0

    def arm(self, when: float) -> None:
        """Run the callback no later than ``when`` (loop time)."""
        handle = self.handle
        if handle is not None:
            if self.at <= when:
                return  # an earlier check is due anyway and re-arms for the rest
            handle.cancel()
        self.at = when
        self.handle = self.loop.call_at(when, self._fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        self.callback()


# Request body bytes held while the upstream connection is being opened; past
# this, reading from the client pauses until the connection is there.
HELD_BODY_HIGH_WATER_BYTES = 256 * 1024


class HeldBody:
    """Request body pieces (and trailers) that arrived before the upstream connection."""

    __slots__ = ("pieces", "size", "trailers")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.trailers: Headers | None = None  # set once the request has ended

    def hold(self, data: bytes) -> bool:
        """Keep ``data``; True when reading should pause."""
        self.pieces.append(data)
        self.size += len(data)
        return self.size > HELD_BODY_HIGH_WATER_BYTES

    def encoded(self, head: bytes, codec: ClientCodec) -> list[bytes]:
        """The request head and the held body, framed for the upstream, in order."""
        out = [head]
        for data in self.pieces:
            out += codec.encode_body(data)
        return out
