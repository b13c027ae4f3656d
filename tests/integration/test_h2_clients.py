"""Loopback: real HTTP/2 clients against the proxy, over 127.0.0.1 and ::1, with both codecs.

httpx (http2=True), curl (--http2-prior-knowledge; --http2 over TLS with ALPN),
h2load for a short load smoke test, and the h2 library as a raw client for
WebSocket over HTTP/2 (RFC 8441) and for flow control. The TLS listener here is
made by the test (a trustme certificate, ALPN h2 + http/1.1) around the proxy's
own ``ClientConnection``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
import wsproto.events as wse
from h2.settings import SettingCodes
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from dsproxy.http.h2codec import HTTP_1_1_REQUIRED, PREFACE
from dsproxy.proxy.h2connection import Http2Connection
from dsproxy.proxy.h2stream import STREAM_BUFFER_BYTES
from tests.conftest import LoopThread, ProxyFactory, RunningProxy, still_serving, wait_for
from tests.h2client import H2Peer, H2Socket, StreamSeen
from tests.integration.test_tls import TlsProxy
from tests.integration.test_tls import start as start_tls
from tests.tlsutil import TlsFiles
from tests.upstream_server import pattern_sha256

H2C = {"h2c": True}
CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")


@pytest.fixture
def h2proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    return proxy_factory(server=H2C)


def h2_records(proxy: RunningProxy) -> list[str]:
    return [r.protocol for r in proxy.observer.requests]


def test_httpx_prior_knowledge(h2proxy: RunningProxy) -> None:
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        got = client.get(f"{h2proxy.url}/echo?x=1", headers={"cookie": "a=1"})
        assert got.http_version == "HTTP/2"
        echo = got.json()
        headers = {n.lower(): v for n, v in echo["headers"]}
        assert echo["target"] == "/echo?x=1"
        assert headers["host"] == h2proxy.authority
        assert headers["x-forwarded-proto"] == "http"
        body = bytes(range(256)) * 4000
        posted = client.post(f"{h2proxy.url}/echo", content=body).json()
        assert posted["body_len"] == len(body)
        assert posted["body_sha256"] == hashlib.sha256(body).hexdigest()
        chunks = client.post(f"{h2proxy.url}/echo", content=iter([b"ab", b"cd"])).json()
        assert chunks["body_len"] == 4
        assert ["Transfer-Encoding", "chunked"] in chunks["headers"]
        big = client.get(f"{h2proxy.url}/stream?n=3000000")
        assert hashlib.sha256(big.content).hexdigest() == pattern_sha256(3_000_000)
    assert wait_for(lambda: len(h2proxy.observer.requests) == 4)
    assert set(h2_records(h2proxy)) == {"h2"}


def test_many_streams_at_once(h2proxy: RunningProxy) -> None:
    async def fetch_all() -> list[int]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.get(f"{h2proxy.url}/echo?i={i}") for i in range(60))
            )
        return [a.status_code for a in answers]

    assert asyncio.run(fetch_all()) == [200] * 60


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_prior_knowledge(h2proxy: RunningProxy) -> None:
    done = subprocess.run(
        [str(CURL), "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
         "-w", "%{http_version} %{http_code} %{size_download}",
         f"{h2proxy.url}/stream?n=100000"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 200 100000"


@pytest.mark.skipif(H2LOAD is None, reason="h2load (nghttp2-client) is not installed")
def test_h2load_smoke(h2proxy: RunningProxy) -> None:
    done = subprocess.run(
        [str(H2LOAD), "-n", "400", "-c", "4", "-m", "25", f"{h2proxy.url}/echo"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "400 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert re.search(r"status codes: 400 2xx", done.stdout), done.stdout
    still_serving(h2proxy)


def test_without_h2c_the_preface_is_told_http_1_1_required(proxy: RunningProxy) -> None:
    with proxy.connect() as sock:
        sock.sendall(PREFACE)
        peer = H2Peer()
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        peer.feed(data)
    assert peer.goaway_codes() == [HTTP_1_1_REQUIRED]
    still_serving(proxy)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_prior_knowledge_without_h2c_fails_cleanly(proxy: RunningProxy) -> None:
    done = subprocess.run(
        [str(CURL), "-sS", "-v", "--http2-prior-knowledge", f"{proxy.url}/echo"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 16  # curl's "HTTP/2 error"
    assert "GOAWAY, error=13" in done.stderr, done.stderr  # 13: HTTP_1_1_REQUIRED


# ------------------------------------------------------------------------------- TLS + ALPN
@pytest.fixture
def tls(proxy_factory: ProxyFactory, tls_files: TlsFiles) -> TlsProxy:
    """The proxy's TLS listener (ALPN h2, http/1.1) beside its cleartext one (no h2c)."""
    return start_tls(proxy_factory, tls_files, header_timeout=5.0)


def test_alpn_h2_over_tls(tls: TlsProxy) -> None:
    with tls.client(http2=True) as client:
        got = client.get(f"{tls.url}/echo?tls=1")
        assert got.http_version == "HTTP/2"
        echo = got.json()
        assert echo["target"] == "/echo?tls=1"
        assert {n.lower(): v for n, v in echo["headers"]}["x-forwarded-proto"] == "https"
    with tls.client(http2=False) as client:
        assert client.get(f"{tls.url}/echo").http_version == "HTTP/1.1"
    assert wait_for(lambda: len(tls.proxy.observer.requests) == 2)
    assert h2_records(tls.proxy) == ["h2", "http1"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_over_tls(tls: TlsProxy) -> None:
    done = subprocess.run(
        [str(CURL), "-sS", "--http2", "--cacert", str(tls.files.ca_file), "-o", "/dev/null",
         "-w", "%{http_version} %{http_code} %{size_download}", f"{tls.url}/stream?n=250000"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 200 250000"


@pytest.mark.skipif(H2LOAD is None, reason="h2load (nghttp2-client) is not installed")
def test_h2load_over_tls(tls: TlsProxy) -> None:
    done = subprocess.run(
        [str(H2LOAD), "-n", "300", "-c", "3", "-m", "20", f"{tls.url}/echo"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "300 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout + done.stderr
    assert "Application protocol: h2" in done.stdout


def test_raw_h2_client_over_tls(tls: TlsProxy) -> None:
    client = H2Socket(
        (tls.host, tls.tls_port),
        ssl_context=tls.files.client_context(alpn=("h2",)),
        server_hostname=tls.host,
    )
    try:
        assert client.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        sid = client.peer.request("/echo", authority="localhost", scheme="https")
        client.send()
        assert client.pump(lambda p: p.streams[sid].ended)
        assert client.peer.streams[sid].status == 200
    finally:
        client.close()


# ----------------------------------------------------------------- WebSocket over HTTP/2
def open_websocket(client: H2Socket, path: str = "/ws") -> int:
    sid = client.peer.conn.get_next_available_stream_id()
    client.peer.conn.send_headers(sid, [
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
        (b":authority", b"example.test"), (b":path", path.encode()),
        (b"sec-websocket-version", b"13"),
    ])  # fmt: skip
    client.peer.streams[sid] = StreamSeen()
    client.send()
    assert client.pump(lambda p: p.streams[sid].status != 0)
    return sid


def test_websocket_over_http2(h2proxy: RunningProxy) -> None:
    client = H2Socket(h2proxy.address)
    try:
        assert client.pump(lambda p: SettingCodes.ENABLE_CONNECT_PROTOCOL in p.remote_settings)
        assert client.peer.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        sid = open_websocket(client, "/ws?greet=1")
        assert client.peer.streams[sid].status == 200
        ws = WSConnection(ConnectionType.CLIENT)
        seen = client.peer.streams[sid]

        got: list[str] = []

        def received(_: H2Peer) -> bool:
            ws.receive_data(bytes(seen.data))
            seen.data.clear()
            got.extend(e.data for e in ws.events() if isinstance(e, wse.TextMessage))
            return bool(got)

        assert client.pump(received)
        for text in ("one", "two" * 1000):
            client.peer.send_body(sid, ws.send(wse.TextMessage(text)))
            client.send()
            got.clear()
            assert client.pump(received)
            assert got == [text]
        client.peer.send_body(sid, ws.send(wse.CloseConnection(1000)), end=True)
        client.send()
        assert client.pump(lambda p: p.streams[sid].ended or p.streams[sid].reset is not None)
        # The same connection still serves ordinary requests.
        other = client.peer.request("/echo")
        client.send()
        assert client.pump(lambda p: p.streams[other].ended)
    finally:
        client.close()
    assert wait_for(lambda: len(h2proxy.observer.tunnels) == 1)
    record = h2proxy.observer.tunnels[0]
    assert (record.protocol, record.target) == ("h2", "/ws?greet=1")


def test_websocket_setting_off_leaves_http1_websockets(proxy_factory: ProxyFactory) -> None:
    from websockets.sync.client import connect

    proxy = proxy_factory(server=H2C, http2={"websocket": False})
    client = H2Socket(proxy.address)
    try:
        assert client.pump(lambda p: SettingCodes.MAX_CONCURRENT_STREAMS in p.remote_settings)
        assert client.peer.remote_settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
    finally:
        client.close()
    ws_url = f"ws://{proxy.authority}/ws"
    with connect(ws_url, open_timeout=5) as ws:
        ws.send("over HTTP/1.1")
        assert ws.recv(timeout=5) == "over HTTP/1.1"


# ------------------------------------------------------------------------ flow control
def proxy_streams(proxy: RunningProxy, loop_thread: LoopThread) -> list[tuple[int, bool]]:
    """(queued bytes, upstream paused) of every HTTP/2 stream, read on the proxy's loop."""

    async def read() -> list[tuple[int, bool]]:
        return [
            (s.out_bytes, s.upstream_paused)
            for c in proxy.server.shared.connections
            if isinstance(c, Http2Connection)
            for s in c.streams.values()
        ]

    return loop_thread.call(read())


def test_large_download_to_a_client_with_a_small_window(
    h2proxy: RunningProxy, loop_thread: LoopThread
) -> None:
    size = 30_000_000
    client = H2Socket(h2proxy.address, auto_ack=False)
    try:
        sid = client.peer.request(f"/stream?n={size}&cl=1")
        client.send()
        assert client.pump(lambda p: len(p.streams[sid].data) >= 65535)
        time.sleep(0.5)  # the upstream keeps sending; the proxy must not keep reading it
        ((queued, paused),) = proxy_streams(h2proxy, loop_thread)
        assert paused
        assert queued <= STREAM_BUFFER_BYTES + 256 * 1024  # one upstream read on top
        client.peer.auto_ack = True
        conn = client.peer.conn
        conn.acknowledge_received_data(len(client.peer.streams[sid].data), sid)
        conn.increment_flow_control_window(2**30)
        conn.increment_flow_control_window(2**30, stream_id=sid)
        client.send()
        assert client.pump(lambda p: p.streams[sid].ended, timeout=30)
        data = bytes(client.peer.streams[sid].data)
        assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)
    finally:
        client.close()


class StallingUpstream:
    """An HTTP/1.1 upstream that reads a request head, then reads its body only when told."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.go = threading.Event()
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            self.go.wait(30)
            while self.received < length:
                chunk = conn.recv(262144)
                if not chunk:
                    return
                self.received += len(chunk)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.2)

    def close(self) -> None:
        self.go.set()
        self.sock.close()


def test_large_upload_is_acknowledged_only_as_the_upstream_takes_it(
    proxy_factory: ProxyFactory,
) -> None:
    upstream = StallingUpstream("127.0.0.1")
    proxy = proxy_factory(server=H2C, upstream_port=upstream.port)
    size = 2400 * 16384  # 39.3 MB in whole DATA frames
    client = H2Socket(proxy.address)
    try:
        sid = client.peer.request(
            "/upload", method="POST", end=False, extra=[(b"content-length", str(size).encode())]
        )
        sent = 0
        piece = b"u" * 16384

        def push() -> None:
            nonlocal sent
            while sent < size:
                window = client.peer.conn.local_flow_control_window(sid)
                if window < len(piece):
                    return
                client.peer.conn.send_data(sid, piece, end_stream=sent + len(piece) >= size)
                sent += len(piece)
                client.send()

        for _ in range(40):  # until the windows stop opening
            before = sent
            push()
            client.pump(lambda p: p.conn.local_flow_control_window(sid) >= len(piece), 0.25)
            if sent == before:
                break
        stalled_at = sent
        # The stream window, the proxy's upstream buffer and the sockets' buffers: far from
        # all of it. (The kernel may buffer a few MiB on loopback.)
        assert stalled_at < 8_000_000, stalled_at
        assert upstream.received == 0
        upstream.go.set()
        deadline = time.monotonic() + 30
        while sent < size and time.monotonic() < deadline:
            push()
            client.pump(lambda p: p.conn.local_flow_control_window(sid) >= len(piece), 0.5)
        assert sent == size
        assert client.pump(lambda p: p.streams[sid].ended, timeout=15)
        assert client.peer.streams[sid].status == 200
        assert upstream.received == size
    finally:
        client.close()
        upstream.close()


# ------------------------------------------------------------------------ shutting down
def test_shutdown_lets_streams_in_flight_finish(
    proxy_factory: ProxyFactory, loop_thread: LoopThread
) -> None:
    proxy = proxy_factory(server=H2C)
    client = H2Socket(proxy.address)
    try:
        sid = client.peer.request("/slow?delay=0.6")
        client.send()
        assert wait_for(lambda: len(proxy.server.shared.connections) == 1)
        time.sleep(0.1)  # the request is with the upstream
        done = asyncio.run_coroutine_threadsafe(proxy.server.shutdown(grace=5.0), loop_thread.loop)
        # (h2 as a client reads nothing after a GOAWAY: the frames tell.)
        assert client.pump(lambda p: p.data_frames(sid)[1], timeout=5)
        assert client.peer.data_frames(sid) == (b"slow", True)
        # This client never answers the PING: the second GOAWAY comes a second later.
        client.pump(lambda p: False, timeout=3)
        assert client.closed
        assert client.peer.goaway_last_ids() == [2**31 - 1, sid]  # the two-step GOAWAY
        done.result(timeout=5)
    finally:
        client.close()
