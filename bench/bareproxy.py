"""The floor: the least a Python uvloop HTTP/1.1 proxy can do per request (bench only).

Not a proxy to run: no header rules, no timeouts, no pool, no error handling,
no request bodies. Each client connection gets its own upstream connection;
a request head is parsed, re-serialised with a replaced Host and an
X-Forwarded-For, and sent; the response head is parsed, re-serialised without
Connection/Keep-Alive, and sent back with its body. ``--codec httptools``
parses with llhttp's callbacks; ``--codec h11`` runs both sides through h11, as
dsproxy's h11 codec does. The ``http`` suite of ``run.py`` runs it next to
dsproxy, so the table shows how much of a request's cost is the language and
the event loop (this floor) and how much is dsproxy's own work.

Usage: ``python bench/bareproxy.py --port P --upstream-port U [--codec h11]``
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any, cast

_DROP = frozenset({b"connection", b"keep-alive", b"host", b"transfer-encoding"})


class _Upstream(asyncio.Protocol):
    """The upstream side of one client connection."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client.upstream = self
        self.client.upstream_ready()

    def data_received(self, data: bytes) -> None:
        self.client.response_bytes(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    """One client connection; subclasses parse and serialise."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.waiting: list[bytes] = []  # request heads written before the upstream connected
        self.client_ip = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client_ip = str(transport.get_extra_info("peername")[0]).encode()
        loop = asyncio.get_running_loop()
        loop.create_task(
            loop.create_connection(lambda: _Upstream(self), "127.0.0.1", self.upstream_port)
        )

    def upstream_ready(self) -> None:
        waiting, self.waiting = self.waiting, []
        for data in waiting:
            self.send_up(data)

    def send_up(self, data: bytes) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self.waiting.append(data)

    def response_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    client_ip: bytes,
    authority: bytes,
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [n + b": " + v for n, v in headers if n.lower() not in _DROP]
    lines += [b"Host: " + authority, b"X-Forwarded-For: " + client_ip]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _response_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 %d OK" % status]
    lines += [n + b": " + v for n, v in headers if n.lower() not in _DROP]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class HttptoolsClient(_Client):
    def __init__(self, upstream_port: int) -> None:
        import httptools

        super().__init__(upstream_port)
        self.authority = b"127.0.0.1:%d" % upstream_port
        self.req_parser = httptools.HttpRequestParser(self._RequestEvents(self))
        self.resp_parser = httptools.HttpResponseParser(self._ResponseEvents(self))
        self.out: list[bytes] = []

    class _RequestEvents:
        def __init__(self, owner: HttptoolsClient) -> None:
            self.owner = owner
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []

        def on_message_begin(self) -> None:
            self.url = b""
            self.headers = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            o = self.owner
            o.send_up(
                _request_head(
                    o.req_parser.get_method(), self.url, self.headers, o.client_ip, o.authority
                )
            )

    class _ResponseEvents:
        def __init__(self, owner: HttptoolsClient) -> None:
            self.owner = owner
            self.headers: list[tuple[bytes, bytes]] = []

        def on_message_begin(self) -> None:
            self.headers = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            o = self.owner
            o.out.append(_response_head(o.resp_parser.get_status_code(), self.headers))

        def on_body(self, body: bytes) -> None:
            self.owner.out.append(body)

    def data_received(self, data: bytes) -> None:
        self.req_parser.feed_data(data)

    def response_bytes(self, data: bytes) -> None:
        self.resp_parser.feed_data(data)
        if self.transport is not None and self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()


class H11Client(_Client):
    def __init__(self, upstream_port: int) -> None:
        import h11

        super().__init__(upstream_port)
        self.h11 = h11
        self.authority = b"127.0.0.1:%d" % upstream_port
        self.server = h11.Connection(h11.SERVER)
        self.client = h11.Connection(h11.CLIENT)

    def data_received(self, data: bytes) -> None:
        self.server.receive_data(data)
        self._requests()

    def _requests(self) -> None:
        h11 = self.h11
        while True:
            event = self.server.next_event()
            if isinstance(event, h11.Request):
                headers = [(n, v) for n, v in event.headers.raw_items() if n.lower() not in _DROP]
                headers += [(b"Host", self.authority), (b"X-Forwarded-For", self.client_ip)]
                self.send_up(
                    self.client.send(
                        h11.Request(method=event.method, target=event.target, headers=headers)
                    )
                    or b""
                )
            elif isinstance(event, h11.EndOfMessage):
                self.send_up(self.client.send(h11.EndOfMessage()) or b"")
            elif not isinstance(event, h11.Data):  # NEED_DATA, PAUSED, ConnectionClosed
                return

    def response_bytes(self, data: bytes) -> None:
        h11 = self.h11
        self.client.receive_data(data)
        out: list[bytes] = []
        while True:
            event: Any = self.client.next_event()
            if isinstance(event, h11.Response):
                headers = [(n, v) for n, v in event.headers.raw_items() if n.lower() not in _DROP]
                out.append(
                    self.server.send(h11.Response(status_code=event.status_code, headers=headers))
                    or b""
                )
            elif isinstance(event, h11.Data):
                out.append(self.server.send(h11.Data(data=event.data)) or b"")
            elif isinstance(event, h11.EndOfMessage):
                out.append(self.server.send(h11.EndOfMessage()) or b"")
                if self.transport is not None:
                    self.transport.write(b"".join(out))
                out.clear()
                self.client.start_next_cycle()
                self.server.start_next_cycle()
                self._requests()  # a pipelined request may be waiting
            else:
                break
        if self.transport is not None and out:
            self.transport.write(b"".join(out))


async def serve(port: int, upstream_port: int, codec: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(4096)
    cls = HttptoolsClient if codec == "httptools" else H11Client
    server = await loop.create_server(lambda: cls(upstream_port), sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--codec", choices=("httptools", "h11"), default="httptools")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.upstream_port, args.codec))


if __name__ == "__main__":
    main()
