"""WebSocket load client for the benchmarks (raw sockets, asyncio + uvloop).

Modes:

``rt``   open ``--conns`` WebSocket sessions, then on each one send a small masked
         frame and wait for the same bytes to come back (the bench upstream echoes raw
         bytes), again and again for ``--duration`` seconds. Prints one JSON line:
         ``{"roundtrips": N, "seconds": S, "rate": N/S, "conns": C, "failed": F,
         "cpu_seconds": client CPU during the window}``.
``idle`` open ``--sessions`` sessions (``--concurrency`` handshakes at a time), print
         ``READY <open> <failed>`` and hold them until stdin gets a line or EOF, or
         ``--hold`` seconds pass; then close them all and print ``DONE``.

The client never parses frames: it counts echoed bytes, so its cost per round trip is a
callback and a ``write``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
from typing import cast

HANDSHAKE_TIMEOUT = 10.0


def make_frame(size: int) -> bytes:
    """A masked binary client frame with ``size`` payload bytes (size < 126)."""
    if not 0 < size < 126:
        raise ValueError("size must be 1..125")
    mask = os.urandom(4)
    payload = bytes(i & 0xFF for i in range(size))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | size]) + mask + masked


class WSClient(asyncio.Protocol):
    """Does the upgrade handshake, then counts echoed frames."""

    def __init__(self, host_header: str, frame: bytes) -> None:
        self.host_header = host_header
        self.frame = frame
        self.flen = len(frame)
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending = 0  # echoed bytes not yet making a whole frame
        self.count = 0
        self.running = False
        self.is_upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        key = base64.b64encode(os.urandom(16))
        tr.write(
            b"GET /ws HTTP/1.1\r\nHost: "
            + self.host_header.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        if self.is_upgraded:
            self._echoed(len(data))
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        status_line = bytes(self.head[: self.head.find(b"\r\n")])
        rest = len(self.head) - end - 4
        self.head.clear()
        if b" 101 " not in status_line + b" ":
            if not self.upgraded.done():
                self.upgraded.set_exception(RuntimeError(status_line.decode(errors="replace")))
            assert self.transport is not None
            self.transport.close()
            return
        self.is_upgraded = True
        if not self.upgraded.done():
            self.upgraded.set_result(None)
        if rest:
            self._echoed(rest)

    def _echoed(self, n: int) -> None:
        self.pending += n
        flen = self.flen
        while self.pending >= flen:
            self.pending -= flen
            if self.running:
                self.count += 1
                assert self.transport is not None
                self.transport.write(self.frame)

    def start(self) -> None:
        self.running = True
        assert self.transport is not None
        self.transport.write(self.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed before 101"))
        if not self.closed.done():
            self.closed.set_result(None)


async def open_session(host: str, port: int, frame: bytes) -> WSClient | None:
    loop = asyncio.get_running_loop()
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: WSClient(host_header, frame), host, port),
            HANDSHAKE_TIMEOUT,
        )
        await asyncio.wait_for(proto.upgraded, HANDSHAKE_TIMEOUT)
    except (TimeoutError, OSError, RuntimeError) as exc:
        print(f"wsload: session failed: {exc!r}", file=sys.stderr)
        return None
    return proto


async def open_many(
    host: str, port: int, frame: bytes, count: int, concurrency: int
) -> tuple[list[WSClient], int]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> WSClient | None:
        async with sem:
            return await open_session(host, port, frame)

    results = await asyncio.gather(*(one() for _ in range(count)))
    sessions = [r for r in results if r is not None]
    return sessions, count - len(sessions)


async def close_all(sessions: list[WSClient]) -> None:
    for s in sessions:
        if s.transport is not None:
            s.transport.close()
    if sessions:
        await asyncio.wait([s.closed for s in sessions], timeout=5)


async def run_rt(args: argparse.Namespace) -> None:
    frame = make_frame(args.size)
    sessions, failed = await open_many(args.host, args.port, frame, args.conns, args.conns)
    if not sessions:
        print(json.dumps({"roundtrips": 0, "seconds": 0, "rate": 0, "conns": 0,
                          "failed": failed}))
        return
    t0 = time.perf_counter()
    c0 = time.process_time()
    for s in sessions:
        s.start()
    await asyncio.sleep(args.duration)
    for s in sessions:
        s.running = False
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    total = sum(s.count for s in sessions)
    await close_all(sessions)
    print(json.dumps({"roundtrips": total, "seconds": round(elapsed, 3),
                      "rate": round(total / elapsed, 1), "conns": len(sessions),
                      "failed": failed, "cpu_seconds": round(cpu, 3)}), flush=True)


async def run_idle(args: argparse.Namespace) -> None:
    frame = make_frame(args.size)
    sessions, failed = await open_many(
        args.host, args.port, frame, args.sessions, args.concurrency
    )
    print(f"READY {len(sessions)} {failed}", flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    alive = sum(1 for s in sessions if not s.closed.done())
    await close_all(sessions)
    print(f"DONE {alive}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="WebSocket load client for dsproxy bench")
    parser.add_argument("mode", choices=["rt", "idle"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=16, help="frame payload bytes (1..125)")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--hold", type=float, default=120.0, help="idle: max seconds to hold")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    coro = run_rt(args) if args.mode == "rt" else run_idle(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
