"""TLS load client for the benchmarks (asyncio + uvloop, the ssl module).

Modes:

``handshake``  ``--conns`` loops, each one: a new TCP connection, a full TLS handshake
               (ALPN ``http/1.1``; no session is ever offered, so nothing is resumed),
               ``GET / HTTP/1.1`` with ``Connection: close``, the response read to EOF,
               close; again and again for ``--duration`` seconds. Prints one JSON line:
               ``{"connections": N, "seconds": S, "rate": N/S, "failed": F,
               "resumed": R, "version": "TLSv1.3", "cipher": ..., "cpu_seconds": ...}``.
               A connection counts when its response starts with ``HTTP/1.1 200``.
``h2idle``     open ``--conns`` TLS connections with ALPN ``h2`` (``--concurrency`` at a
               time); on each, the HTTP/2 preface and one ``GET /`` whose response is read
               to its end (the h2 library), then nothing more: the connection is idle.
               Prints ``READY <open> <failed>`` and holds them (answering PING and
               SETTINGS) until stdin gets a line or EOF, or ``--hold`` seconds pass; then
               closes them all and prints ``DONE <still open>``.

Certificates are not verified (the bench makes a self-signed one per run); the
handshake still checks the server's signature over the transcript.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import ssl
import sys
import time
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, ResponseReceived, StreamEnded
from h2.exceptions import ProtocolError

CONNECT_TIMEOUT = 10.0


def client_context(alpn: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


class _OneRequest(asyncio.Protocol):
    """Sends a GET with ``Connection: close`` and keeps the first bytes of the answer."""

    def __init__(self, host: str, done: asyncio.Future[bytes]) -> None:
        self.request = b"GET / HTTP/1.1\r\nHost: " + host.encode() + (
            b"\r\nConnection: close\r\n\r\n")
        self.done = done
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        if len(self.head) < 16:
            self.head += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.head)


async def handshake_loop(args: argparse.Namespace, ctx: ssl.SSLContext, stop: float,
                         stats: dict[str, int], info: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < stop:
        done: asyncio.Future[bytes] = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(functools.partial(_OneRequest, args.host, done), args.host,
                                       args.port, ssl=ctx, server_hostname="bench"),
                CONNECT_TIMEOUT)
            tls = transport.get_extra_info("ssl_object")
            if tls is not None:
                if tls.session_reused:
                    stats["resumed"] += 1
                if not info:
                    info["version"] = str(tls.version())
                    info["cipher"] = str((tls.cipher() or ("?",))[0])
                    info["alpn"] = str(tls.selected_alpn_protocol())
            head = await asyncio.wait_for(done, CONNECT_TIMEOUT)
            transport.close()
        except (OSError, TimeoutError, ssl.SSLError):
            stats["failed"] += 1
            await asyncio.sleep(0.01)  # a refusing server is not spun against
            continue
        if head.startswith(b"HTTP/1.1 200"):
            stats["ok"] += 1
        else:
            stats["failed"] += 1


async def run_handshake(args: argparse.Namespace) -> None:
    ctx = client_context("http/1.1")
    stats = {"ok": 0, "failed": 0, "resumed": 0}
    info: dict[str, str] = {}
    t0 = time.perf_counter()
    c0 = time.process_time()
    stop = t0 + args.duration
    await asyncio.gather(*(handshake_loop(args, ctx, stop, stats, info)
                           for _ in range(args.conns)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(json.dumps({"connections": stats["ok"], "seconds": round(elapsed, 3),
                      "rate": round(stats["ok"] / elapsed, 1), "failed": stats["failed"],
                      "resumed": stats["resumed"], "cpu_seconds": round(cpu, 3), **info}),
          flush=True)


class H2Idle(asyncio.Protocol):
    """One HTTP/2 connection: a GET, its response, then idle (PING/SETTINGS answered)."""

    def __init__(self, authority: str) -> None:
        self.conn = H2Connection(config=H2Configuration(client_side=True,
                                                        header_encoding=None))
        self.authority = authority.encode()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            self.answered.set_result(False)
            self.transport.close()
            return
        self.conn.initiate_connection()
        self.conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", self.authority), (b":path", b"/")],
                               end_stream=True)
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            events = [ConnectionTerminated()]
        for event in events:
            if isinstance(event, ResponseReceived):
                status = dict(event.headers).get(b":status")
                if status != b"200" and not self.answered.done():
                    self.answered.set_result(False)
            elif isinstance(event, StreamEnded) and not self.answered.done():
                self.answered.set_result(True)
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)


async def open_idle(args: argparse.Namespace, ctx: ssl.SSLContext,
                    sem: asyncio.Semaphore) -> H2Idle | None:
    loop = asyncio.get_running_loop()
    async with sem:
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: H2Idle(f"{args.host}:{args.port}"), args.host,
                                       args.port, ssl=ctx, server_hostname="bench"),
                CONNECT_TIMEOUT)
            if await asyncio.wait_for(proto.answered, CONNECT_TIMEOUT):
                return proto
            if proto.transport is not None:
                proto.transport.close()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        return None


async def run_h2idle(args: argparse.Namespace) -> None:
    ctx = client_context("h2")
    sem = asyncio.Semaphore(args.concurrency)
    opened = await asyncio.gather(*(open_idle(args, ctx, sem) for _ in range(args.conns)))
    conns = [c for c in opened if c is not None]
    print(f"READY {len(conns)} {args.conns - len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    alive = sum(1 for c in conns if not c.closed.done())
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), 10)
    print(f"DONE {alive}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="TLS load client for dsproxy bench")
    parser.add_argument("mode", choices=["handshake", "h2idle"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=16,
                        help="handshake: concurrent loops; h2idle: connections to open")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=100, help="h2idle: at a time")
    parser.add_argument("--hold", type=float, default=120.0, help="h2idle: max seconds")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    coro = run_handshake(args) if args.mode == "handshake" else run_h2idle(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
