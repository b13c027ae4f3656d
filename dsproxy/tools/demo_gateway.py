"""The demo gateway: a small HTTP/1.1 + WebSocket upstream (``dsproxy demo`` runs it).

The gateway is also the upstream the integration tests use. Routes (any method):

  ``Upgrade: websocket`` (any path)   WebSocket echo: text and binary, pings answered
  ``/ws`` without an upgrade          426 Upgrade Required
  ``/status/NNN``                     that status with a short body (none for 204 and 304)
  ``/bytes/N``                        N bytes (byte i is ``i % 256``), chunked transfer-encoding
  ``/delay/S``                        the request description, after S seconds (at most 30)
  anything else                       200 ``application/json`` describing the request seen

Per connection: HTTP, driven by h11 with one response at a time (a pipelined request
waits in h11's buffer, reading paused) -> after a 101, WebSocket driven by wsproto ->
closed. Request bodies are hashed as they arrive, never kept whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WSLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

from dsproxy.net.addr import HostPort, family_of, normalise_ip

DEFAULT_DEMO_LISTEN = HostPort("::", 16980)
MAX_DELAY_SECONDS = 30.0
MAX_BYTES_RESPONSE = 1 << 30
BYTES_CHUNK_SIZE = 64 * 1024  # a multiple of 256, so every chunk starts the pattern afresh
_BYTES_PATTERN = bytes(range(256)) * (BYTES_CHUNK_SIZE // 256)

_STATUS_PATH = re.compile(r"/status/(\d{3})")
_BYTES_PATH = re.compile(r"/bytes/(\d{1,10})")
_DELAY_PATH = re.compile(r"/delay/(\d{1,6}(?:\.\d{0,6})?)")


def demo_bytes(length: int) -> bytes:
    """The body ``/bytes/<length>`` sends: byte ``i`` is ``i % 256``."""
    return (bytes(range(256)) * (length // 256 + 1))[:length]


@dataclass(slots=True)
class _SeenRequest:
    method: str
    target: str
    http_version: str
    raw_headers: list[tuple[bytes, bytes]]
    body_length: int = 0
    body_hash: Any = field(default_factory=hashlib.sha256)  # hashlib's type is private

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def wants_websocket(self) -> bool:
        return any(
            name.lower() == b"upgrade"
            and b"websocket" in [token.strip() for token in value.lower().split(b",")]
            for name, value in self.raw_headers
        )


class _DemoConnection(asyncio.Protocol):
    """One client connection of the demo gateway."""

    def __init__(self, gateway: DemoGateway) -> None:
        self._gateway = gateway
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._http = h11.Connection(h11.SERVER)
        self._ws: WSConnection | None = None
        self._request: _SeenRequest | None = None
        # True while a response is produced asynchronously (/delay, /bytes).
        self._responding = False
        self._task: asyncio.Task[None] | None = None
        self._read_blockers: set[str] = set()
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = (str(peer[0]), int(peer[1]))
        self._gateway._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws_receive(data)
            return
        self._http.receive_data(data)
        self._process_http()

    def eof_received(self) -> bool:
        if self._ws is not None:
            self._ws_receive(None)
            return False
        self._http.receive_data(b"")
        self._process_http()
        # Half-closed client with a response still in the making: keep the socket open
        # for writing; the response's end closes it.
        return self._responding

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
        self._writable.set()
        self._gateway._connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()
        self._block_reading("writing")

    def resume_writing(self) -> None:
        self._writable.set()
        self._unblock_reading("writing")

    # -- plumbing ----------------------------------------------------------------------------

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _block_reading(self, reason: str) -> None:
        if not self._read_blockers and self._transport is not None:
            self._transport.pause_reading()
        self._read_blockers.add(reason)

    def _unblock_reading(self, reason: str) -> None:
        self._read_blockers.discard(reason)
        if not self._read_blockers and not self._closing():
            assert self._transport is not None
            self._transport.resume_reading()

    # -- HTTP --------------------------------------------------------------------------------

    def _process_http(self) -> None:
        while self._ws is None and not self._responding and not self._closing():
            if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
                self._http.start_next_cycle()
            elif self._http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                self._close()  # MUST_CLOSE, CLOSED, or the client went away
                return
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                assert self._request is not None
                self._request.body_length += len(event.data)
                self._request.body_hash.update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _on_request(self, event: h11.Request) -> None:
        self._request = _SeenRequest(
            method=event.method.decode("ascii"),
            target=event.target.decode("ascii"),
            http_version=event.http_version.decode("ascii"),
            raw_headers=list(event.headers.raw_items()),
        )
        if self._http.they_are_waiting_for_100_continue:
            continue_ = h11.InformationalResponse(status_code=100, headers=[])
            self._write(self._http.send(continue_) or b"")

    def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """Answer a request h11 could not parse (400, 431...) and close."""
        with contextlib.suppress(h11.LocalProtocolError):
            self._send_whole(
                exc.error_status_hint, f"bad request: {exc}\n", [("connection", "close")]
            )
        self._close()

    def _respond(self) -> None:
        request = self._request
        assert request is not None
        path = request.path
        if request.wants_websocket:
            self._accept_websocket(request)
        elif path == "/ws":
            self._send_whole(
                426, "this path takes a WebSocket upgrade\n", [("upgrade", "websocket")]
            )
        elif path.startswith("/status/"):
            match = _STATUS_PATH.fullmatch(path)
            status = int(match.group(1)) if match else 0
            if 200 <= status <= 599:
                self._send_whole(status, f"status {status}\n")
            else:
                self._send_whole(400, "use /status/NNN with NNN from 200 to 599\n")
        elif path.startswith("/bytes/"):
            match = _BYTES_PATH.fullmatch(path)
            length = int(match.group(1)) if match else -1
            if 0 <= length <= MAX_BYTES_RESPONSE:
                self._respond_later(self._stream_bytes(length))
            else:
                self._send_whole(400, f"use /bytes/N with N from 0 to {MAX_BYTES_RESPONSE}\n")
        elif path.startswith("/delay/"):
            match = _DELAY_PATH.fullmatch(path)
            if match:
                seconds = min(float(match.group(1)), MAX_DELAY_SECONDS)
                self._respond_later(self._delayed_description(seconds))
            else:
                self._send_whole(400, "use /delay/S with S in seconds (at most 30)\n")
        else:
            self._send_description()

    def _send_whole(
        self, status: int, text: str, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        body = text.encode()
        self._send_response(status, "text/plain; charset=utf-8", body, extra_headers)

    def _send_description(self) -> None:
        assert self._request is not None
        body = (json.dumps(self._describe(self._request), indent=2) + "\n").encode()
        self._send_response(200, "application/json", body)

    def _send_response(
        self,
        status: int,
        content_type: str,
        body: bytes,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        # RFC 9110 §15.3.5, §15.4.5: 204 and 304 carry no body (nor Content-Length here).
        bodiless = status in (204, 304)
        headers = [("server", "dsproxy-demo"), *extra_headers]
        if not bodiless:
            headers += [("content-type", content_type), ("content-length", str(len(body)))]
        data = self._http.send(h11.Response(status_code=status, headers=headers)) or b""
        head_only = bodiless or (self._request is not None and self._request.method == "HEAD")
        if body and not head_only:
            data += self._http.send(h11.Data(data=body)) or b""
        data += self._http.send(h11.EndOfMessage()) or b""
        self._write(data)

    def _describe(self, request: _SeenRequest) -> dict[str, Any]:
        host, port = self._peer
        return {
            "method": request.method,
            "target": request.target,
            "http_version": request.http_version,
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in request.raw_headers
            ],
            "body_length": request.body_length,
            "body_sha256": request.body_hash.hexdigest(),
            "peer": {"host": host, "port": port, "family": family_of(normalise_ip(host))},
        }

    # -- responses that take time ------------------------------------------------------------

    def _respond_later(self, coro: Coroutine[Any, Any, None]) -> None:
        self._responding = True
        self._block_reading("responding")  # pipelined requests wait; see _finish_later
        self._task = asyncio.get_running_loop().create_task(coro)

    def _finish_later(self) -> None:
        self._responding = False
        self._task = None
        self._unblock_reading("responding")
        self._process_http()

    async def _stream_bytes(self, length: int) -> None:
        # No Content-Length: h11 frames the body with chunked transfer-encoding
        # (or by closing the connection for an HTTP/1.0 client).
        headers = [("server", "dsproxy-demo"), ("content-type", "application/octet-stream")]
        self._write(self._http.send(h11.Response(status_code=200, headers=headers)) or b"")
        assert self._request is not None
        if self._request.method != "HEAD":
            sent = 0
            while sent < length:
                await self._writable.wait()
                if self._closing():
                    return
                size = min(BYTES_CHUNK_SIZE, length - sent)
                self._write(self._http.send(h11.Data(data=_BYTES_PATTERN[:size])) or b"")
                sent += size
        self._write(self._http.send(h11.EndOfMessage()) or b"")
        self._finish_later()

    async def _delayed_description(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._send_description()
        self._finish_later()

    # -- WebSocket ---------------------------------------------------------------------------

    def _accept_websocket(self, request: _SeenRequest) -> None:
        # h11 parsed the head and now waits for our decision (MIGHT_SWITCH_PROTOCOL);
        # wsproto validates the handshake from the same bytes and writes the 101.
        head = f"{request.method} {request.target} HTTP/{request.http_version}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in request.raw_headers)
        head += b"\r\n"
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            handshake = [event for event in ws.events() if isinstance(event, Request)]
        except WSRemoteProtocolError as exc:
            self._send_whole(400, f"bad WebSocket handshake: {exc}\n")
            return
        if not handshake:
            self._send_whole(400, "bad WebSocket handshake\n")
            return
        trailing, _closed = self._http.trailing_data  # bytes sent right after the head
        self._write(ws.send(AcceptConnection()))
        self._ws = ws
        self._request = None
        if trailing:
            self._ws_receive(trailing)

    def _ws_receive(self, data: bytes | None) -> None:
        ws = self._ws
        assert ws is not None
        try:
            ws.receive_data(data)
        except WSLocalProtocolError:
            return  # data after the close handshake
        out = bytearray()
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                # Echo fragment by fragment: a long message is never held whole.
                echo = Message[Any](data=event.data, message_finished=event.message_finished)
                out += ws.send(echo)
            elif isinstance(event, Ping):
                out += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(WSLocalProtocolError):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        out += ws.send(event.response())
                    elif ws.state is ConnectionState.OPEN:
                        # A frame wsproto refused: it reports the close code to send.
                        out += ws.send(CloseConnection(code=event.code, reason=event.reason))
                self._write(bytes(out))
                self._close()
                return
        self._write(bytes(out))


class DemoGateway:
    """A running demo gateway; ``close()`` stops it and closes its connections."""

    def __init__(self, server: asyncio.Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port
        self._connections: set[_DemoConnection] = set()

    @property
    def url(self) -> str:
        return f"http://{HostPort(self.host, self.port)}"

    async def close(self) -> None:
        self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        # Wait for connection_lost so every socket is really closed before the loop ends.
        await asyncio.gather(*(connection.lost for connection in connections))
        await self._server.wait_closed()


async def start_demo_gateway(
    host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> DemoGateway:
    """Start the demo gateway on ``host:port`` (port 0: the OS picks) or on ``sock``.

    ``sock`` is a bound socket the caller made (a dual-stack ``[::]`` socket, say);
    the gateway listens on it and closes it on ``close()``.
    """
    loop = asyncio.get_running_loop()
    holder: list[DemoGateway] = []

    def factory() -> _DemoConnection:
        return _DemoConnection(holder[0])

    if sock is not None:
        server = await loop.create_server(factory, sock=sock)
    else:
        server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()
    holder.append(DemoGateway(server, str(bound[0]), int(bound[1])))
    return holder[0]


# -- dsproxy demo ------------------------------------------------------------------------------
