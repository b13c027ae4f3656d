"""Soak with chaos: mixed traffic through a dsproxy subprocess against a faulty upstream.

One command, loopback only, every port from the OS::

    python bench/soak.py --duration 1800 --parser auto --json soak.json

It starts a chaos upstream in this process (127.0.0.1, port 0), then
``python -m dsproxy run -c FILE`` listening on ``[::]:0`` (one dual-stack socket)
with ``upstream.read_timeout`` short, and drives ``--concurrency`` client loops
for ``--duration`` seconds, over 127.0.0.1 and ::1 alternately. Each loop picks
one scenario at a time:

* ``keepalive``: 1-20 GETs on one connection, bodies of 0-256 KiB (Content-Length
  or chunked), every body's sha256 checked;
* ``upload``: a POST of 0-1 MiB (Content-Length or chunked); the upstream answers
  the sha256 and length it received, which must match what was sent;
* ``download``: a GET of 0.5-4 MiB, sha256 checked;
* ``websocket``: an upgrade, 1-20 echoed messages (text and binary, up to 64 KiB),
  a close handshake;
* ``fault``: a request whose response the upstream breaks on purpose (``reset``
  before answering, ``stall`` past the read timeout, ``garbage``, a response with
  both Content-Length and Transfer-Encoding, ``midbody`` (close mid-body) and
  ``stallbody`` (stop mid-body)); each fault has its one allowed outcome:
  502, 504, or the client connection aborted before the body's end;
* ``vanish``: the client disappears mid-request (half a head, half an upload body,
  part of a download read, a WebSocket dropped without a close frame).

A wrong response is any other outcome: a 2xx whose body differs, a status that
is not the one the fault must produce, a connection that hangs past
``--op-timeout``. Every ``--sample-every`` seconds the proxy's RSS
(/proc/PID/status), open descriptors (/proc/PID/fd) and active connections
(``dsproxy_connections_active`` on /metrics) are sampled. At the end the clients
stop, the pools drain (short keep-alive timeouts), and a last sample is taken.

Exit status: 0 when there was no wrong response, no traceback in the proxy's log,
descriptors returned to within ``--fd-slack`` of the start, and RSS grew by at
most ``--rss-slack-mib`` MiB over its value after the warm-up; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import wsproto.events as wse
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.frame_protocol import CloseReason

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_BYTES = 65536
READ_TIMEOUT_SECONDS = 2.0  # the proxy's upstream.read_timeout during the soak
STALL_SECONDS = READ_TIMEOUT_SECONDS * 3  # a stalling upstream waits this long, then closes
POOL_IDLE_SECONDS = 2.0  # upstream.keepalive_timeout: the pool drains before the last sample
CLIENT_IDLE_SECONDS = 5.0  # server.keepalive_timeout
FAULTS = ("reset", "stall", "garbage", "clte", "midbody", "stallbody")
# The one outcome each fault may surface as (RFC 9110 §15.6.3 / §15.6.5, docs/reliability.md).
FAULT_OUTCOME = {
    "reset": "502",
    "stall": "504",
    "garbage": "502",
    "clte": "502",
    "midbody": "aborted",
    "stallbody": "aborted",
}
SCENARIOS = {  # weight of each client scenario
    "keepalive": 30,
    "upload": 15,
    "download": 10,
    "websocket": 10,
    "fault": 20,
    "vanish": 15,
}


def pattern(seed: int, n: int) -> Iterator[bytes]:
    """``n`` bytes derived from ``seed``: 64 KiB of seeded random bytes, repeated."""
    block = random.Random(seed).randbytes(65536)
    while n > 0:
        piece = block if n >= len(block) else block[:n]
        n -= len(piece)
        yield piece


def pattern_sha256(seed: int, n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(seed, n):
        digest.update(piece)
    return digest.hexdigest()


# ----------------------------------------------------------------- chaos upstream
class ChaosUpstream:
    """An HTTP/1.1 + WebSocket upstream that breaks the responses it is asked to break.

    ``GET /dl?n=N&seed=S&chunked=0|1[&fault=F]``: N pattern bytes; ``POST /up``: the
    sha256 and length of the body; ``GET /ws``: a WebSocket echo (wsproto).
    """

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``: bound (port 0) before the loop, so the config can name it."""
        self.server = await asyncio.start_server(self._handle, sock=sock)
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                self.requests += 1
                if not await self._serve(conn, event, reader, writer):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        parts = urlsplit(req.target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/ws":
            await self._websocket(conn, req, reader, writer)
            return False
        digest = hashlib.sha256()
        size = 0
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        fault = query.get("fault", "")
        if fault:
            self.faults[fault] += 1
            await self._fault(fault, writer)
            return False
        if parts.path == "/up":
            body = f"{digest.hexdigest()} {size}".encode()
            head = h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])
            for event in (head, h11.Data(data=body), h11.EndOfMessage()):
                writer.write(conn.send(event) or b"")
            await writer.drain()
            return True
        n = int(query.get("n", "0"))
        seed = int(query.get("seed", "0"))
        chunked = query.get("chunked") == "1"
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(n))
        writer.write(conn.send(h11.Response(status_code=200, headers=[framing])) or b"")
        rng = random.Random(seed ^ n)
        for piece in pattern(seed, n):
            # Uneven writes, so chunk boundaries and reads fall anywhere.
            cut = rng.randrange(1, len(piece) + 1)
            for part in (piece[:cut], piece[cut:]):
                if part:
                    writer.write(conn.send(h11.Data(data=part)) or b"")
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True

    async def _fault(self, fault: str, writer: asyncio.StreamWriter) -> None:
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if fault == "stall":
            await asyncio.sleep(STALL_SECONDS)
            return
        if fault == "garbage":
            writer.write(b"\x00\xffSSH-2.0-nope\r\n\r\n" + random.randbytes(64))
        elif fault == "clte":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )
        elif fault in ("midbody", "stallbody"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"m" * 30000)
        await writer.drain()
        if fault == "stallbody":
            await asyncio.sleep(STALL_SECONDS)
        await asyncio.sleep(0.05)

    async def _websocket(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        key = dict(req.headers).get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        while not isinstance(await _next_event(conn, reader), h11.EndOfMessage):
            pass
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
        )
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(bytes(conn.trailing_data[0]))
        parts: list[str | bytes | bytearray] = []
        while True:
            for event in ws.events():
                if isinstance(event, wse.TextMessage | wse.BytesMessage):
                    # wsproto hands a message on in pieces as its bytes arrive.
                    parts.append(event.data)
                    if event.message_finished:
                        writer.write(ws.send(_message(_joined(parts))))
                        parts = []
                elif isinstance(event, wse.CloseConnection):
                    writer.write(ws.send(event.response()))
                    await writer.drain()
                    return
                elif isinstance(event, wse.Ping):
                    writer.write(ws.send(event.response()))
            await writer.drain()
            data = await reader.read(READ_BYTES)
            if not data:
                return
            ws.receive_data(data)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_BYTES)
        conn.receive_data(data)


# ----------------------------------------------------------------- clients
@dataclass
class Response:
    status: int  # 0: no head
    sha256: str
    size: int
    complete: bool  # the whole body arrived
    reusable: bool


@dataclass
class Tally:
    requests: int = 0  # requests whose outcome was checked
    ok_2xx: int = 0
    expected_errors: Counter[str] = field(default_factory=Counter)
    ws_sessions: int = 0
    ws_messages: int = 0
    vanished: int = 0
    wrong: int = 0
    wrong_samples: list[str] = field(default_factory=list)
    scenarios: Counter[str] = field(default_factory=Counter)

    def bad(self, what: str) -> None:
        self.wrong += 1
        if len(self.wrong_samples) < 20:
            self.wrong_samples.append(what)


class Client:
    """One HTTP/1.1 client connection (h11) to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Client:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.transport.abort()

    async def request(
        self,
        method: str,
        target: str,
        body: Iterator[bytes] | None = None,
        *,
        chunked: bool = False,
    ) -> Response:
        headers = [("Host", "soak.test")]
        pieces = list(body) if body is not None else []
        if pieces or method == "POST":
            if chunked:
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                headers.append(("Content-Length", str(sum(map(len, pieces)))))
        conn = self.conn
        self.writer.write(conn.send(h11.Request(method=method, target=target, headers=headers)))
        for piece in pieces:
            self.writer.write(conn.send(h11.Data(data=piece)))
            await self.writer.drain()
        self.writer.write(conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        digest = hashlib.sha256()
        status = size = 0
        try:
            while True:
                event = await _next_event(conn, self.reader)
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    digest.update(event.data)
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return Response(status, digest.hexdigest(), size, False, False)
        except (h11.RemoteProtocolError, ConnectionError):
            return Response(status, digest.hexdigest(), size, False, False)
        reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if reusable:
            conn.start_next_cycle()
        return Response(status, digest.hexdigest(), size, True, reusable)


def _outcome(resp: Response) -> str:
    if resp.complete:
        return str(resp.status)
    return "aborted"


class Load:
    def __init__(self, addresses: list[tuple[str, int]], tally: Tally, seed: int) -> None:
        self.addresses = addresses
        self.tally = tally
        self.rng = random.Random(seed)
        self.next_seed = seed * 1_000_003

    def address(self) -> tuple[str, int]:
        return self.rng.choice(self.addresses)

    def seed(self) -> int:
        self.next_seed += 1
        return self.next_seed

    def check_body(self, what: str, resp: Response, sha: str, size: int) -> None:
        self.tally.requests += 1
        if not resp.complete or resp.status != 200:
            self.tally.bad(f"{what}: status {resp.status} complete={resp.complete}")
        elif (resp.sha256, resp.size) != (sha, size):
            self.tally.bad(f"{what}: 200 with a wrong body ({resp.size} bytes, want {size})")
        else:
            self.tally.ok_2xx += 1

    async def keepalive(self) -> None:
        client = await Client.open(self.address())
        try:
            for _ in range(self.rng.randint(1, 20)):
                n = self.rng.choice([0, 1, 100, 4096, self.rng.randrange(256 * 1024)])
                seed = self.seed()
                chunked = self.rng.random() < 0.5
                target = f"/dl?n={n}&seed={seed}&chunked={int(chunked)}"
                resp = await client.request("GET", target)
                self.check_body(target, resp, pattern_sha256(seed, n), n)
                if not resp.reusable:
                    break
        finally:
            client.close()

    async def upload(self) -> None:
        n = self.rng.choice([0, 10, self.rng.randrange(1024 * 1024)])
        seed = self.seed()
        chunked = self.rng.random() < 0.5
        client = await Client.open(self.address())
        try:
            resp_body = hashlib.sha256()
            resp = await client.request("POST", "/up", pattern(seed, n), chunked=chunked)
            # The answer is "<sha256> <length>" of what the upstream received.
            want = f"{pattern_sha256(seed, n)} {n}".encode()
            resp_body.update(want)
            self.check_body(f"POST /up n={n}", resp, resp_body.hexdigest(), len(want))
        finally:
            client.close()

    async def download(self) -> None:
        n = self.rng.randrange(512 * 1024, 4 * 1024 * 1024)
        seed = self.seed()
        chunked = self.rng.random() < 0.5
        client = await Client.open(self.address())
        try:
            target = f"/dl?n={n}&seed={seed}&chunked={int(chunked)}"
            resp = await client.request("GET", target)
            self.check_body(target, resp, pattern_sha256(seed, n), n)
        finally:
            client.close()

    async def fault(self) -> None:
        fault = self.rng.choice(FAULTS)
        method = self.rng.choice(["GET", "POST"])
        client = await Client.open(self.address())
        try:
            body = pattern(self.seed(), 1000) if method == "POST" else None
            resp = await client.request(method, f"/dl?n=10&fault={fault}", body)
            self.tally.requests += 1
            got = _outcome(resp)
            if got == FAULT_OUTCOME[fault]:
                self.tally.expected_errors[got] += 1
            else:
                self.tally.bad(f"{method} fault={fault}: got {got}, want {FAULT_OUTCOME[fault]}")
        finally:
            client.close()

    async def websocket(self) -> None:
        reader, writer = await asyncio.open_connection(*self.address())
        try:
            key = base64.b64encode(self.rng.randbytes(16))
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: %s\r\n\r\n" % key
            )
            head = await reader.readuntil(b"\r\n\r\n")
            want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            self.tally.requests += 1
            if not head.startswith(b"HTTP/1.1 101 ") or want not in head:
                self.tally.bad(f"websocket handshake: {head[:60]!r}")
                return
            ws = WSConnection(ConnectionType.CLIENT)
            for _ in range(self.rng.randint(1, 20)):
                size = self.rng.choice([0, 1, 125, 126, 65535, self.rng.randrange(65536)])
                text = self.rng.random() < 0.3
                data: str | bytes = "é" * (size // 2) if text else self.rng.randbytes(size)
                writer.write(ws.send(_message(data)))
                got = await _ws_message(ws, reader)
                if got != data:
                    self.tally.bad(f"websocket echo differs ({size} bytes)")
                    return
                self.tally.ws_messages += 1
            writer.write(ws.send(wse.CloseConnection(code=CloseReason.NORMAL_CLOSURE)))
            await writer.drain()
            while not isinstance(await _ws_event(ws, reader), wse.CloseConnection):
                pass
            self.tally.ws_sessions += 1
        finally:
            writer.transport.abort()

    async def vanish(self) -> None:
        how = self.rng.choice(["head", "upload", "download", "websocket"])
        reader, writer = await asyncio.open_connection(*self.address())
        try:
            if how == "head":
                writer.write(b"GET /dl?n=10 HTTP/1.1\r\nHost: soak.te")
            elif how == "upload":
                writer.write(
                    b"POST /up HTTP/1.1\r\nHost: soak.test\r\nContent-Length: 1000000\r\n\r\n"
                )
                writer.write(bytes(self.rng.randrange(1, 500_000)))
            elif how == "download":
                writer.write(b"GET /dl?n=8000000&seed=1 HTTP/1.1\r\nHost: soak.test\r\n\r\n")
                await reader.readexactly(self.rng.randrange(1, 100_000))
            else:
                writer.write(
                    b"GET /ws HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                await reader.readuntil(b"\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(self.rng.random() * 0.2)
            self.tally.vanished += 1
        finally:
            if self.rng.random() < 0.5:  # half of them with a reset, half with a FIN
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


def _joined(parts: list[str | bytes | bytearray]) -> str | bytes:
    """One message from the pieces wsproto delivered."""
    if isinstance(parts[0], str):
        return "".join(str(p) for p in parts)
    return b"".join(p for p in parts if not isinstance(p, str))


def _message(data: str | bytes) -> wse.TextMessage | wse.BytesMessage:
    return wse.TextMessage(data=data) if isinstance(data, str) else wse.BytesMessage(data=data)


async def _ws_event(ws: WSConnection, reader: asyncio.StreamReader) -> wse.Event:
    while True:
        for event in ws.events():
            return event
        data = await reader.read(READ_BYTES)
        if not data:
            raise ConnectionError("closed mid-session")
        ws.receive_data(data)


async def _ws_message(ws: WSConnection, reader: asyncio.StreamReader) -> str | bytes:
    parts: list[str | bytes | bytearray] = []
    while True:
        event = await _ws_event(ws, reader)
        if isinstance(event, wse.TextMessage | wse.BytesMessage):
            parts.append(event.data)
            if event.message_finished:
                return _joined(parts)
        elif isinstance(event, wse.CloseConnection):
            raise ConnectionError("closed by the server")


# ----------------------------------------------------------------- the proxy and its samples
@dataclass
class Sample:
    t: float  # seconds since the start of traffic
    rss_kib: int
    fds: int
    connections_active: int


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _active_connections(admin: tuple[str, int]) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*admin), 5)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        text = (await asyncio.wait_for(reader.read(), 5)).decode("utf-8", "replace")
    finally:
        writer.close()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dsproxy_connections_active{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def sample(pid: int, admin: tuple[str, int], t: float) -> Sample:
    return Sample(round(t, 1), _rss_kib(pid), _fds(pid), await _active_connections(admin))


def _write_config(path: Path, upstream_port: int, parser: str) -> None:
    path.write_text(
        f"""[server]
listen = ["[::]:0"]
parser = "{parser}"
keepalive_timeout = {CLIENT_IDLE_SECONDS}
header_timeout = 5
body_timeout = 5

[upstream]
url = "http://127.0.0.1:{upstream_port}"
read_timeout = {READ_TIMEOUT_SECONDS}
keepalive_timeout = {POOL_IDLE_SECONDS}

[admin]
listen = "127.0.0.1:0"

[shutdown]
delay = 0
grace = 2

[log]
access = "off"
level = "info"
"""
    )


class ProxyProcess:
    """``python -m dsproxy run -c FILE`` as a subprocess; its log is watched, not kept."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.admin_port = 0
        self.tracebacks = 0
        self.log_lines = 0
        self.last_lines: deque[str] = deque(maxlen=50)
        self._log_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, config: Path) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dsproxy",
            "run",
            "-c",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._log_task = asyncio.create_task(self._read_log())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([ready, self._log_task], timeout=20, return_when="FIRST_COMPLETED")
        ready.cancel()
        if not (self.port and self.admin_port):
            raise RuntimeError("dsproxy did not start:\n" + "".join(self.last_lines))

    async def _read_log(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.log_lines += 1
            self.last_lines.append(line)
            if "Traceback" in line:
                self.tracebacks += 1
            if not self.port and (m := re.search(r"listening on \[::\]:(\d+)", line)):
                self.port = int(m.group(1))
            if not self.admin_port and (m := re.search(r"admin listening on [\d.]+:(\d+)", line)):
                self.admin_port = int(m.group(1))
            if self.port and self.admin_port:
                self._ready.set()

    async def stop(self) -> int | None:
        """SIGTERM, then the exit status (killed after 15 s)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_task, 5)
        return proc.returncode


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Report:
    duration_seconds: float
    parser: str
    concurrency: int
    requests_checked: int
    ok_2xx: int
    expected_errors: dict[str, int]
    faults_injected: dict[str, int]
    upstream_requests: int
    ws_sessions: int
    ws_messages: int
    vanished_clients: int
    scenarios: dict[str, int]
    wrong_responses: int
    wrong_samples: list[str]
    tracebacks_in_log: int
    proxy_log_lines: int
    proxy_exit_code: int | None
    start: Sample
    after_warmup: Sample
    end: Sample
    samples: list[Sample]
    fd_slack: int
    rss_slack_mib: float
    failures: list[str]


async def soak(args: argparse.Namespace, upstream_sock: socket.socket, config: Path) -> Report:
    upstream = ChaosUpstream()
    await upstream.start(upstream_sock)
    proxy = ProxyProcess()
    tally = Tally()
    samples: list[Sample] = []
    exit_code: int | None = None
    try:
        await proxy.start(config)
        port = proxy.port
        admin = ("127.0.0.1", proxy.admin_port)
        addresses = [("127.0.0.1", port)]
        if _ipv6_loopback():
            addresses.append(("::1", port))
        t0 = time.monotonic()
        start = await sample(proxy.pid, admin, 0.0)
        samples.append(start)
        stop_at = t0 + args.duration
        warmup_at = t0 + min(max(10.0, args.duration * 0.1), args.duration)

        async def loop(index: int) -> None:
            load = Load(addresses, tally, args.seed * 1000 + index)
            names = list(SCENARIOS)
            weights = list(SCENARIOS.values())
            while time.monotonic() < stop_at:
                name = load.rng.choices(names, weights)[0]
                tally.scenarios[name] += 1
                try:
                    await asyncio.wait_for(getattr(load, name)(), args.op_timeout)
                except TimeoutError:
                    tally.bad(f"{name}: no outcome within {args.op_timeout:.0f}s")
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    if name != "vanish":
                        tally.bad(f"{name}: {type(exc).__name__}: {exc}")

        workers = [asyncio.create_task(loop(i)) for i in range(args.concurrency)]
        after_warmup: Sample | None = None
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(args.sample_every, max(0.0, stop_at - time.monotonic())))
            current = await sample(proxy.pid, admin, time.monotonic() - t0)
            samples.append(current)
            if after_warmup is None and time.monotonic() >= warmup_at:
                after_warmup = current
        await asyncio.wait(workers, timeout=args.op_timeout + 5)
        for task in workers:
            task.cancel()
        # Quiet: client and pool keep-alive timeouts pass, then the last sample.
        await asyncio.sleep(max(CLIENT_IDLE_SECONDS, POOL_IDLE_SECONDS) + 2)
        end = await sample(proxy.pid, admin, time.monotonic() - t0)
        samples.append(end)
        if after_warmup is None:
            after_warmup = end
    finally:
        exit_code = await proxy.stop()
        await upstream.close()
    failures: list[str] = []
    if tally.wrong:
        failures.append(f"{tally.wrong} wrong responses")
    if proxy.tracebacks:
        failures.append(f"{proxy.tracebacks} tracebacks in the proxy's log")
    if end.fds > start.fds + args.fd_slack:
        failures.append(f"descriptors grew from {start.fds} to {end.fds}")
    if end.rss_kib > after_warmup.rss_kib + args.rss_slack_mib * 1024:
        failures.append(f"RSS grew from {after_warmup.rss_kib} KiB to {end.rss_kib} KiB")
    if end.connections_active != 0:
        failures.append(f"{end.connections_active} connections still active when idle")
    if exit_code != 0:
        failures.append(f"dsproxy exited with {exit_code}")
        failures.append("its last log lines:\n" + "".join(proxy.last_lines))
    return Report(
        duration_seconds=args.duration,
        parser=args.parser,
        concurrency=args.concurrency,
        requests_checked=tally.requests,
        ok_2xx=tally.ok_2xx,
        expected_errors=dict(tally.expected_errors),
        faults_injected=dict(upstream.faults),
        upstream_requests=upstream.requests,
        ws_sessions=tally.ws_sessions,
        ws_messages=tally.ws_messages,
        vanished_clients=tally.vanished,
        scenarios=dict(tally.scenarios),
        wrong_responses=tally.wrong,
        wrong_samples=tally.wrong_samples,
        tracebacks_in_log=proxy.tracebacks,
        proxy_log_lines=proxy.log_lines,
        proxy_exit_code=exit_code,
        start=start,
        after_warmup=after_warmup,
        end=end,
        samples=samples,
        fd_slack=args.fd_slack,
        rss_slack_mib=args.rss_slack_mib,
        failures=failures,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--parser", default="auto", help="auto, h11 or httptools")
    parser.add_argument("--concurrency", type=int, default=16, help="client loops")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--op-timeout", type=float, default=30.0, help="seconds per scenario")
    parser.add_argument("--fd-slack", type=int, default=4, help="descriptors allowed over start")
    parser.add_argument(
        "--rss-slack-mib", type=float, default=24.0, help="RSS growth allowed after warm-up"
    )
    parser.add_argument("--json", type=Path, help="write the report here too")
    return parser


def _run(coro: Coroutine[Any, Any, Report]) -> Report:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: Report = uvloop.run(coro)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.concurrency <= 0:
        print("--duration and --concurrency must be > 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dsproxy-soak-") as tmp:
        upstream_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        upstream_sock.bind(("127.0.0.1", 0))
        upstream_sock.listen(1024)
        config = Path(tmp) / "dsproxy.toml"
        _write_config(config, upstream_sock.getsockname()[1], args.parser)
        report = _run(soak(args, upstream_sock, config))
    out = asdict(report)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    brief = {k: v for k, v in out.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    for line in report.failures:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
