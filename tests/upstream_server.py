"""A test upstream: an asyncio HTTP/1.1 server on h11 + wsproto whose behaviour is chosen by path.

Paths (query parameters in brackets):

    /echo            JSON: method, target, headers, body sha256/len, trailers, conn id
    /stream[n,chunked,cl]   n bytes of ``pattern_bytes`` (chunked unless cl=1)
    /slow[delay]     waits ``delay`` seconds before the head
    /close-mid-body[chunked,cl]  head + a tenth of the body (cl bytes, default 1000), then close
    /extra[n]        a Content-Length response of n bytes (default 2) with bytes behind it
    /reset           close (RST) before sending anything
    /garbage         bytes that are not HTTP
    /clte            a response with both Content-Length and Transfer-Encoding
    /dupcl           two different Content-Length fields
    /eof-body        a body delimited by closing the connection (no framing)
    /switch          a 101 nobody asked for
    /ws              WebSocket echo (wsproto); [greet=1] sends a frame right behind the 101
    /ws-401          answers an upgrade with 401 and keeps the connection
    /trailers        chunked response with a trailer field
    /early[code]     a 1xx (103 unless code given) then 200
    /status[code]    an empty response with that status (204, 304, ...)
    /close           a response with ``Connection: close``, then close
    /hop             a response carrying hop-by-hop headers

``Upstream(name, strip)``: /echo reports ``name``; ``strip`` is a path prefix removed
before the paths above are looked up (``/api/echo`` is ``/echo`` with ``strip="/api"``).

``idle_close_seconds``: a kept-alive connection idle that long is closed by us
(to prove the proxy's pool retries a connection closed while idle).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import h11
import wsproto.events as wse
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATTERN_BLOCK = bytes(range(256)) * 256  # 64 KiB
READ_BYTES = 256 * 1024


def pattern_bytes(n: int, block: bytes = PATTERN_BLOCK) -> Iterator[bytes]:
    """``n`` bytes of a fixed pattern, in blocks (the test computes the same)."""
    while n > 0:
        piece = block if n >= len(block) else block[:n]
        n -= len(piece)
        yield piece


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_bytes(n):
        digest.update(piece)
    return digest.hexdigest()


class _Closed(Exception):
    pass


class Upstream:
    def __init__(self, name: str = "", strip: str = "") -> None:
        self.name = name  # reported by /echo as "upstream"
        self.strip = strip  # a path prefix removed before dispatch ("/api" + "/echo")
        self.server: asyncio.Server | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.accepted = 0
        self.requests: list[tuple[str, str]] = []  # (method, target) per request seen
        self.idle_close_seconds = 0.0
        # Requests arriving on an already-used connection to drop (read, then close
        # without answering): the race of a request crossing the upstream's idle close.
        self.drop_reused_requests = 0
        self.ws_headers: list[list[str]] = []  # headers of the last WebSocket handshake
        self.ws_open = 0  # WebSocket sessions in progress
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, t in self.requests if m == method and t.startswith(path_prefix))

    async def start(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.server = await asyncio.start_server(self._handle, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), timeout=2)

    # ----------------------------------------------------------------- plumbing
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        conn_id = self.accepted
        conn = h11.Connection(h11.SERVER)
        try:
            served = 0
            while True:
                timeout = self.idle_close_seconds if served and self.idle_close_seconds else None
                try:
                    event = await self._next(conn, reader, timeout)
                except TimeoutError:
                    break
                if not isinstance(event, h11.Request):
                    break
                served += 1
                if served > 1 and self.drop_reused_requests > 0:
                    self.drop_reused_requests -= 1
                    self.requests.append((event.method.decode(), event.target.decode()))
                    writer.transport.abort()
                    break
                keep = await self._dispatch(conn, event, reader, writer, conn_id)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (_Closed, ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _next(
        self, conn: h11.Connection, reader: asyncio.StreamReader, idle_limit: float | None = None
    ) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if idle_limit is not None:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), idle_limit)
                else:
                    data = await reader.read(READ_BYTES)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    raise _Closed
                continue
            return event

    async def _read_body(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[str, int, list[list[str]]]:
        digest = hashlib.sha256()
        size = 0
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                trailers = [[n.decode(), v.decode()] for n, v in event.headers.raw_items()]
                return digest.hexdigest(), size, trailers
            else:
                raise _Closed

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, conn: h11.Connection, *events: h11.Event) -> None:
        for event in events:
            data = conn.send(event)
            if data:
                writer.write(data)
        await writer.drain()

    # ----------------------------------------------------------------- behaviours
    async def _dispatch(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn_id: int,
    ) -> bool:
        target = req.target.decode("latin-1")
        method = req.method.decode("latin-1")
        self.requests.append((method, target))
        parts = urlsplit(target)
        path = parts.path
        if self.strip and path.startswith(self.strip):
            path = path[len(self.strip) :] or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers.raw_items()]

        if path == "/ws":
            self.ws_headers = headers
            return await self._websocket(conn, req, reader, writer, query.get("greet") == "1")
        if path == "/reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            raise _Closed
        if conn.they_are_waiting_for_100_continue:
            await self._send(writer, conn, h11.InformationalResponse(status_code=100, headers=[]))
        sha, size, trailers = await self._read_body(conn, reader)
        if path == "/echo":
            body = json.dumps(
                {
                    "method": method,
                    "target": target,
                    "headers": headers,
                    "body_sha256": sha,
                    "body_len": size,
                    "trailers": trailers,
                    "conn": conn_id,
                    "upstream": self.name,
                }
            ).encode()
            await self._send(
                writer,
                conn,
                h11.Response(
                    status_code=200,
                    headers=[
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))),
                    ],
                ),
                h11.Data(data=body) if method != "HEAD" else h11.Data(data=b""),
                h11.EndOfMessage(),
            )
            return True
        if path == "/stream":
            n = int(query.get("n", "1000"))
            resp_headers = [("Content-Type", "application/octet-stream")]
            if query.get("cl") == "1":
                resp_headers.append(("Content-Length", str(n)))
            await self._send(writer, conn, h11.Response(status_code=200, headers=resp_headers))
            for piece in pattern_bytes(n):
                await self._send(writer, conn, h11.Data(data=piece))
            await self._send(writer, conn, h11.EndOfMessage())
            return True
        if path == "/slow":
            await asyncio.sleep(float(query.get("delay", "1")))
            await self._send(
                writer,
                conn,
                h11.Response(status_code=200, headers=[("Content-Length", "4")]),
                h11.Data(data=b"slow"),
                h11.EndOfMessage(),
            )
            return True
        if path == "/close-mid-body":
            if query.get("chunked") == "1":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n5\r\nworld\r\n"
                )
            else:
                size = int(query.get("cl", "1000"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                writer.write(b"x" * (size // 10))
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
            raise _Closed
        if path == "/extra":
            size = int(query.get("n", "2"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            writer.write(b"y" * size + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
            await writer.drain()
            await asyncio.sleep(0.1)
            raise _Closed
        raw = {
            "/garbage": b"this is not HTTP at all\r\n\r\n",
            "/clte": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            "/dupcl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "/eof-body": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until EOF",
            "/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade"
            b"\r\n\r\nraw bytes of another protocol",
        }.get(path)
        if raw is not None:
            writer.write(raw)
            await writer.drain()
            await asyncio.sleep(0.1)
            raise _Closed
        if path == "/ws-401":
            body = b"unauthorized"
            await self._send(
                writer,
                conn,
                h11.Response(status_code=401, headers=[("Content-Length", str(len(body)))]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
            return True
        if path == "/trailers":
            await self._send(
                writer,
                conn,
                h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]),
                h11.Data(data=b"part1-"),
                h11.Data(data=b"part2"),
                h11.EndOfMessage(headers=[("X-Checksum", "abc123")]),
            )
            return True
        if path == "/early":
            code = int(query.get("code", "103"))
            await self._send(
                writer,
                conn,
                h11.InformationalResponse(
                    status_code=code, headers=[("Link", "</style.css>; rel=preload")]
                ),
                h11.Response(status_code=200, headers=[("Content-Length", "5")]),
                h11.Data(data=b"final"),
                h11.EndOfMessage(),
            )
            return True
        if path == "/status":
            code = int(query.get("code", "204"))
            extra = [("ETag", '"v1"')] if code == 304 else []
            await self._send(
                writer, conn, h11.Response(status_code=code, headers=extra), h11.EndOfMessage()
            )
            return True
        if path == "/close":
            await self._send(
                writer,
                conn,
                h11.Response(
                    status_code=200, headers=[("Content-Length", "5"), ("Connection", "close")]
                ),
                h11.Data(data=b"bye!!"),
                h11.EndOfMessage(),
            )
            return False
        if path == "/hop":
            body = b"hop"
            await self._send(
                writer,
                conn,
                h11.Response(
                    status_code=200,
                    headers=[
                        ("Content-Length", str(len(body))),
                        ("Connection", "keep-alive, X-Secret-Hop"),
                        ("Keep-Alive", "timeout=5"),
                        ("Proxy-Connection", "keep-alive"),
                        ("X-Secret-Hop", "1"),
                        ("Trailer", "X-Nothing"),
                        ("Upgrade", "h2c"),
                        ("X-Kept", "yes"),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
            return True
        await self._send(
            writer,
            conn,
            h11.Response(status_code=404, headers=[("Content-Length", "0")]),
            h11.EndOfMessage(),
        )
        return True

    async def _websocket(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        greet: bool,
    ) -> bool:
        key = b""
        for name, value in req.headers:
            if name == b"sec-websocket-key":
                key = value
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        await self._read_body(conn, reader)
        head = conn.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", accept.decode()),
                ],
            )
        )
        self.ws_open += 1
        try:
            return await self._ws_echo(conn, reader, writer, head or b"", greet)
        finally:
            self.ws_open -= 1

    async def _ws_echo(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        greet: bool,
    ) -> bool:
        ws = WSConnection(ConnectionType.SERVER)
        out = head
        if greet:
            out += ws.send(wse.TextMessage(data="hello from upstream"))
        writer.write(out)
        await writer.drain()
        leftover = conn.trailing_data[0]
        if leftover:
            ws.receive_data(bytes(leftover))
        while True:
            for event in ws.events():
                if isinstance(event, wse.TextMessage) and event.data == "close-me":
                    writer.write(ws.send(wse.CloseConnection(code=1000)))
                    await writer.drain()
                    writer.transport.abort()
                    return False
                if isinstance(event, wse.TextMessage | wse.BytesMessage):
                    writer.write(
                        ws.send(
                            type(event)(data=event.data, message_finished=event.message_finished)  # type: ignore[arg-type]
                        )
                    )
                elif isinstance(event, wse.Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    writer.write(ws.send(event.response()))
                    await writer.drain()
                    return False
            await writer.drain()
            data = await reader.read(READ_BYTES)
            if not data:
                return False
            ws.receive_data(data)
