"""The WebSocket tunnel: after a 101, raw bytes both ways until either side ends.

The tunnel owns both transports from the switch on. Flow control is
symmetric: when one side's write buffer passes its high-water mark the other
side stops reading until it drains. An idle timer (websocket.idle_timeout)
closes sessions that move no bytes either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dsproxy.observe.records import TunnelRecord


class Tunnel:
    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float,
        record: TunnelRecord,
        on_close: Callable[[Tunnel], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.record = record
        self._on_close = on_close
        self._started = time.monotonic()
        self._last_activity = self._started
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._client_eof = False
        self._upstream_eof = False
        if idle_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(idle_timeout, self._check_idle)

    def start(self, to_client: bytes, to_upstream: bytes) -> None:
        """Deliver the bytes that arrived behind each side's handshake head."""
        if to_client:
            self.upstream_data(to_client)
        if to_upstream:
            self.client_data(to_upstream)

    # -- data ---------------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        self.record.bytes_from_client += len(data)
        self._last_activity = time.monotonic()
        self.upstream.write(data)

    def upstream_data(self, data: bytes) -> None:
        self.record.bytes_to_client += len(data)
        self._last_activity = time.monotonic()
        self.client.write(data)

    # -- half-close: pass a FIN on; close once both directions are done -------------
    def client_eof(self) -> bool:
        self._client_eof = True
        if self._upstream_eof:
            self.close("client_closed")
        elif self.upstream.can_write_eof():
            self.upstream.write_eof()
        return True

    def upstream_eof(self) -> bool:
        self._upstream_eof = True
        if self._client_eof:
            self.close("upstream_closed")
        elif self.client.can_write_eof():
            self.client.write_eof()
        return True

    def client_lost(self) -> None:
        self.close("client_closed")

    def upstream_lost(self) -> None:
        self.close("upstream_closed")

    # -- flow control ---------------------------------------------------------------
    def client_pause_writing(self) -> None:
        self.upstream.pause_reading()

    def client_resume_writing(self) -> None:
        if not self.closed:
            self.upstream.resume_reading()

    def upstream_pause_writing(self) -> None:
        self.client.pause_reading()

    def upstream_resume_writing(self) -> None:
        if not self.closed:
            self.client.resume_reading()

    # -- ending -----------------------------------------------------------------------
    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        idle_for = time.monotonic() - self._last_activity
        if idle_for >= self.idle_timeout:
            self.close("idle_timeout")
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.idle_timeout - idle_for, self._check_idle)

    def close(self, reason: str) -> None:
        """End the session: both transports are closed (buffered bytes are flushed)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.client.close()
        self.upstream.close()
        self.record.close_reason = reason
        self.record.duration = time.monotonic() - self._started
        self._on_close(self)

    def abort(self, reason: str) -> None:
        """End at once without flushing (shutdown grace ran out)."""
        if not self.closed:
            self.client.abort()
            self.upstream.abort()
            self.close(reason)
