"""Raw upstream for the benchmarks: WebSocket echo and upload sink.

* ``GET`` with ``Upgrade: websocket``: answers ``101`` (computed
  ``Sec-WebSocket-Accept``) and from then on echoes raw bytes. It never parses
  frames, so the measured cost is the proxy's, not this server's.
* ``GET /chunked?n=N``: answers ``200`` with N zero bytes in chunked coding
  (256 KiB chunks from one preallocated buffer, sent as the socket drains).
* Any other request: reads and discards the body (``Content-Length`` or
  ``chunked``), answers ``200`` with the number of body bytes received, and
  keeps the connection open for the next request. ``Expect: 100-continue``
  gets a ``100 Continue``.

Usage: ``python bench/rawup.py --host 127.0.0.1 --port P`` prints ``READY`` when
listening and stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import resource
import signal
import sys
from typing import cast

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
MAX_HEAD = 65536
CHUNK_BYTES = 256 * 1024
CHUNK = b"%x\r\n" % CHUNK_BYTES + bytes(CHUNK_BYTES) + b"\r\n"
SEND_HIGH_WATER_BYTES = 4 * len(CHUNK)


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


class Upstream(asyncio.Protocol):
    __slots__ = ("transport", "state", "buf", "remaining", "received", "chunk_state", "to_send")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.state = "head"  # head | body | chunked | echo | sending
        self.buf = bytearray()
        self.remaining = 0
        self.received = 0
        self.chunk_state = "size"  # size | data | crlf | trailer
        self.to_send = 0  # body bytes of a /chunked download still to send

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.state == "echo":
            transport.write(data)
            return
        if self.state == "body" and not self.buf:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                self.received += n
                return
        self.buf += data
        self._process()

    def _process(self) -> None:
        transport = self.transport
        assert transport is not None
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        transport.close()
                    return
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                self._on_head(head)
                if self.state == "echo":
                    if self.buf:
                        transport.write(bytes(self.buf))
                        self.buf.clear()
                    return
            elif self.state == "body":
                take = min(self.remaining, len(self.buf))
                del self.buf[:take]
                self.remaining -= take
                self.received += take
                if self.remaining:
                    return
                self._respond()
            elif self.state == "chunked":
                if not self._chunked_step():
                    return
            else:
                return

    def _chunked_step(self) -> bool:
        """Advance the chunked decoder; False when more bytes are needed."""
        if self.chunk_state == "size":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            line = bytes(self.buf[:end]).split(b";", 1)[0].strip()
            del self.buf[: end + 2]
            size = int(line, 16)
            if size == 0:
                self.chunk_state = "trailer"
            else:
                self.remaining = size
                self.chunk_state = "data"
            return True
        if self.chunk_state == "data":
            take = min(self.remaining, len(self.buf))
            del self.buf[:take]
            self.remaining -= take
            self.received += take
            if self.remaining:
                return False
            self.chunk_state = "crlf"
            return True
        if self.chunk_state == "crlf":
            if len(self.buf) < 2:
                return False
            del self.buf[:2]
            self.chunk_state = "size"
            return True
        # trailer section: lines until an empty line
        end = self.buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        if not line:
            self.chunk_state = "size"
            self._respond()
        return True

    def _on_head(self, head: bytes) -> None:
        transport = self.transport
        assert transport is not None
        lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"upgrade", b"").lower() == b"websocket":
            accept = ws_accept(headers.get(b"sec-websocket-key", b""))
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.state = "echo"
            return
        request_line = lines[0].split(b" ")
        if request_line[0] == b"GET" and request_line[1].startswith(b"/chunked?n="):
            self.to_send = int(request_line[1].partition(b"=")[2])
            transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.state = "sending"
            self._send_more()
            return
        if headers.get(b"expect", b"").lower() == b"100-continue":
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.received = 0
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = "chunked"
            self.chunk_state = "size"
            return
        length = int(headers.get(b"content-length", b"0") or b"0")
        if length:
            self.state = "body"
            self.remaining = length
            return
        self._respond()

    def _send_more(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.to_send and transport.get_write_buffer_size() < SEND_HIGH_WATER_BYTES:
            if self.to_send >= CHUNK_BYTES:
                transport.write(CHUNK)
                self.to_send -= CHUNK_BYTES
            else:
                transport.write(b"%x\r\n%s\r\n" % (self.to_send, bytes(self.to_send)))
                self.to_send = 0
        if not self.to_send and self.state == "sending":
            transport.write(b"0\r\n\r\n")
            self.state = "head"

    def pause_writing(self) -> None:
        pass  # _send_more checks the buffer size itself

    def resume_writing(self) -> None:
        if self.state == "sending":
            self._send_more()

    def _respond(self) -> None:
        transport = self.transport
        assert transport is not None
        body = b"%d\n" % self.received
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.state = "head"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    print("READY", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        print("rawup: uvloop not installed, using asyncio", file=sys.stderr)
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
