"""Shared fixtures: a background event loop, the test upstream, and an in-process proxy.

The proxy and the upstream run on one uvloop loop in a background thread, so
tests use ordinary blocking clients (httpx.Client, raw sockets, curl,
``websockets.sync``) and need no pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dsproxy.app.runner import new_event_loop
from dsproxy.config import (
    Config,
    RouteConfig,
    ServerConfig,
    TlsConfig,
    UpstreamConfig,
    UpstreamServer,
    WebSocketConfig,
)
from dsproxy.http.codec import httptools_available
from dsproxy.net.addr import Family, HostPort
from dsproxy.observe.records import RequestRecord, TunnelRecord
from dsproxy.proxy.server import ProxyServer
from tests.support import ipv6_available
from tests.tlsutil import TlsFiles, make_tls_files
from tests.upstream_server import Upstream

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 15.0


IPV6 = ipv6_available()


class LoopThread:
    """An event loop (uvloop) running in a daemon thread; ``call`` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)
            await self.loop.shutdown_asyncgens()

        self.call(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


class RecordingObserver:
    """An Observer that keeps everything it is told (read from the test thread)."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.tunnels: list[TunnelRecord] = []
        self.client_errors: list[str] = []
        self.upstream_errors: list[str] = []
        self.acquired: list[bool] = []
        self.opened: list[Family] = []
        self.closed: list[Family] = []
        self.tls_failures: list[str] = []
        self.certificates: list[float] = []  # notAfter of every certificate loaded

    def connection_opened(self, family: Family) -> None:
        self.opened.append(family)

    def connection_closed(self, family: Family) -> None:
        self.closed.append(family)

    def request_done(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def client_error(self, kind: str) -> None:
        self.client_errors.append(kind)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.append(kind)

    def upstream_connected(self, seconds: float) -> None:
        pass

    def upstream_acquired(self, reused: bool) -> None:
        self.acquired.append(reused)

    def pool_idle(self, count: int) -> None:
        pass

    def websocket_opened(self) -> None:
        pass

    def websocket_closed(self, record: TunnelRecord) -> None:
        self.tunnels.append(record)

    def tls_handshake_failed(self, reason: str) -> None:
        self.tls_failures.append(reason)

    def tls_certificate_loaded(self, not_after: float) -> None:
        self.certificates.append(not_after)


@pytest.fixture
def upstream(loop_thread: LoopThread) -> Iterator[Upstream]:
    up = Upstream()
    loop_thread.call(up.start())
    yield up
    loop_thread.call(up.close())


@pytest.fixture(
    params=[
        "h11",
        pytest.param(
            "httptools",
            marks=pytest.mark.skipif(
                not httptools_available(),
                reason="httptools ([speedups]) is not installed",
            ),
        ),
    ]
)
def parser(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(
    params=[
        pytest.param("127.0.0.1", id="ipv4"),
        pytest.param(
            "::1", id="ipv6", marks=pytest.mark.skipif(not IPV6, reason="IPv6 loopback unavailable")
        ),
    ]
)
def host(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@dataclass
class RunningProxy:
    server: ProxyServer
    observer: RecordingObserver
    host: str  # the address clients use (127.0.0.1 or ::1)
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)


@dataclass
class ProxyFactory:
    loop_thread: LoopThread
    parser: str
    host: str
    upstream: Upstream | None
    started: list[ProxyServer] = field(default_factory=list)

    def __call__(
        self,
        *,
        server: dict[str, Any] | None = None,
        upstream: dict[str, Any] | None = None,
        websocket: dict[str, Any] | None = None,
        upstream_port: int | None = None,
        host: str | None = None,
        routes: tuple[RouteConfig, ...] = (),
        tls: TlsConfig | None = None,
    ) -> RunningProxy:
        """Start a proxy; ``server``/``upstream``/``websocket`` override config fields."""
        if upstream_port is None:
            assert self.upstream is not None
            upstream_port = self.upstream.port
        server_cfg = replace(
            ServerConfig(listen=(HostPort("::", 0),), parser=self.parser),  # type: ignore[arg-type]
            **(server or {}),
        )
        upstream_cfg = replace(
            UpstreamConfig(servers=(UpstreamServer("127.0.0.1", upstream_port),)),
            **(upstream or {}),
        )
        ws_cfg = replace(WebSocketConfig(), **(websocket or {}))
        cfg = Config(
            server=server_cfg,
            upstream=upstream_cfg,
            websocket=ws_cfg,
            tls=tls or TlsConfig(),
            routes=routes,
        )
        observer = RecordingObserver()
        srv = ProxyServer(cfg, observer)
        self.loop_thread.call(srv.start())
        self.started.append(srv)
        return RunningProxy(srv, observer, host or self.host, srv.addresses[0].port)

    def stop_all(self) -> None:
        for srv in self.started:
            self.loop_thread.call(srv.shutdown(grace=0.5))
        self.started.clear()


@pytest.fixture
def proxy_factory(
    loop_thread: LoopThread, parser: str, host: str, upstream: Upstream
) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(loop_thread, parser, host, upstream)
    yield factory
    factory.stop_all()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A CA and a certificate for localhost, 127.0.0.1 and ::1 (tls.crt, tls.key)."""
    return make_tls_files(tmp_path)


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy with default settings in front of ``upstream``."""
    return proxy_factory()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ----------------------------------------------------------------- raw HTTP helpers
@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased (h11)
    body: bytes
    trailers: list[tuple[bytes, bytes]]
    informational: list[int]

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name.lower():
                return v
        return None

    def names(self) -> set[bytes]:
        return {n for n, _ in self.headers}


class ResponseReader:
    """Reads HTTP/1.1 responses from a blocking socket, keeping bytes behind them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.closed = False

    def recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        return data

    def read(self, method: bytes = b"GET", *, stop_at_101: bool = True) -> RawResponse:
        import h11

        conn = h11.Connection(h11.CLIENT)
        # The dummy request proposes an upgrade so that a 101 can be parsed too.
        dummy = [("Host", "x"), ("Connection", "upgrade"), ("Upgrade", "websocket")]
        conn.send(h11.Request(method=method, target="/", headers=dummy))
        conn.send(h11.EndOfMessage())
        if self.buf:  # receive_data(b"") would mean EOF
            conn.receive_data(self.buf)
        self.buf = b""
        informational: list[int] = []
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.recv())
                continue
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                if event.status_code == 101 and stop_at_101:
                    self.buf = bytes(conn.trailing_data[0])
                    return RawResponse(101, list(event.headers), b"", [], informational[:-1])
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = list(event.headers)
                continue
            if isinstance(event, h11.Data):
                body += event.data
                continue
            if isinstance(event, h11.EndOfMessage):
                self.buf = bytes(conn.trailing_data[0])
                return RawResponse(status, headers, bytes(body), list(event.headers), informational)
            raise ConnectionError(f"connection closed before a full response: {event!r}")

    def read_until_close(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        out = bytearray(self.buf)
        self.buf = b""
        while True:
            data = self.recv()
            if not data:
                return bytes(out)
            out += data


def raw_request(
    method: str,
    target: str,
    host: str = "example.test",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(
    proxy: RunningProxy, data: bytes, method: bytes = b"GET", count: int = 1
) -> list[RawResponse]:
    """Send ``data`` on a fresh connection and read ``count`` responses."""
    with proxy.connect() as sock:
        sock.sendall(data)
        reader = ResponseReader(sock)
        return [reader.read(method) for _ in range(count)]


def still_serving(proxy: RunningProxy) -> None:
    """The proxy answers a normal request on a new connection."""
    import httpx

    with httpx.Client(timeout=5) as client:
        resp = client.get(f"{proxy.url}/echo?still=1")
    assert resp.status_code == 200
    assert resp.json()["target"] == "/echo?still=1"
