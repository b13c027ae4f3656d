"""The HTTP/2 floor: the least a Python uvloop HTTP/2 server does per request (bench only).

Not a server to run: one asyncio Protocol per connection around the ``h2`` library
(python-hyper, the library dsproxy's HTTP/2 front end uses), with its default checks on,
answering every request with the same small response (``200``, ``text/plain``, ``ok``)
and no proxying: no upstream, header rules, timeouts, limits, logs or metrics. Request
bodies are read and their flow-control credit returned. ``run.py``'s ``h2`` suite loads it
with h2load exactly as it loads dsproxy and nginx, so the table shows what CPython,
uvloop, the ssl module and the h2 library cost per request on this machine, and how close
dsproxy's HTTP/2 path comes to it.

Usage: ``python bench/h2floor.py --tls-port P --cert C --key K [--h2c-port Q]``
(``--tls-port`` offers ALPN ``h2`` only; ``--h2c-port`` takes HTTP/2 with prior
knowledge; both listen on ``[::]`` dual-stack).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
from typing import cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import ConnectionTerminated, DataReceived, StreamEnded, StreamReset, WindowUpdated
from h2.exceptions import ProtocolError

BODY = b"ok"
HEADERS = [(b":status", b"200"), (b"content-type", b"text/plain"),
           (b"content-length", str(len(BODY)).encode())]
CONFIG = H2Configuration(client_side=False, header_encoding=None)
BACKLOG = 4096  # create_server listens again, with its own default (100) unless told


class H2Floor(asyncio.Protocol):
    """One connection: every stream that ends gets ``HEADERS`` and ``BODY``."""

    def __init__(self) -> None:
        self.conn = H2Connection(config=CONFIG)
        self.transport: asyncio.Transport | None = None
        self.blocked: set[int] = set()  # streams whose body waits for flow-control credit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            self.transport.close()
            return
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except ProtocolError:
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        try:
            for event in events:
                if isinstance(event, StreamEnded):
                    conn.send_headers(event.stream_id, HEADERS)
                    self._send_body(event.stream_id)
                elif isinstance(event, DataReceived):
                    if event.flow_controlled_length:
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                elif isinstance(event, WindowUpdated):
                    for stream_id in list(self.blocked):
                        self.blocked.discard(stream_id)
                        self._send_body(stream_id)
                elif isinstance(event, StreamReset):
                    self.blocked.discard(event.stream_id)
                elif isinstance(event, ConnectionTerminated):
                    break
        except ProtocolError:  # e.g. a GOAWAY read in the same chunk closed the connection
            pass
        self._flush()
        if conn.state_machine.state is ConnectionState.CLOSED and self.transport is not None:
            self.transport.close()

    def _send_body(self, stream_id: int) -> None:
        if self.conn.local_flow_control_window(stream_id) < len(BODY):
            self.blocked.add(stream_id)
            return
        self.conn.send_data(stream_id, BODY, end_stream=True)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)


def listen_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(BACKLOG)
    return sock


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def serve(tls_port: int, cert: str, key: str, h2c_port: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(H2Floor, sock=listen_socket(tls_port),
                                        ssl=tls_context(cert, key), backlog=BACKLOG)]
    if h2c_port:
        servers.append(await loop.create_server(H2Floor, sock=listen_socket(h2c_port),
                                                backlog=BACKLOG))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM certificate (chain after the leaf)")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--h2c-port", type=int, default=0, help="cleartext prior-knowledge port")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.tls_port, args.cert, args.key, args.h2c_port))


if __name__ == "__main__":
    main()
