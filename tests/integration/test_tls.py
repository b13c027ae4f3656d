"""TLS listeners on loopback, over 127.0.0.1 and ::1 and both codecs: real clients (httpx,
curl, websockets), handshakes that fail and how they are counted, certificate reloads.

The proxy listens on a cleartext ``[::]:0`` and a TLS ``[::]:0`` at once, with a
certificate for localhost, 127.0.0.1 and ::1 made by trustme (``tests/tlsutil.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from websockets.sync.client import connect

from dsproxy.config import TlsConfig
from dsproxy.net.addr import HostPort
from dsproxy.proxy import tlsfront
from dsproxy.proxy.shared import Shared
from dsproxy.tools import probe
from tests.conftest import IPV6, LoopThread, ProxyFactory, RunningProxy, wait_for
from tests.tlsutil import TlsFiles, make_tls_files, tls_connect

HEAD_TIMEOUT_SECONDS = 0.4  # server.header_timeout: the handshake's deadline here


@dataclasses.dataclass
class TlsProxy:
    proxy: RunningProxy
    files: TlsFiles
    tls_port: int

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.tls_port}"

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(verify=self.files.client_context(), timeout=5, trust_env=False,
                            **options)  # fmt: skip

    def connect(self, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        context = context or self.files.client_context()
        return tls_connect(self.host, self.tls_port, context, server_hostname=self.host)

    def raw(self) -> socket.socket:
        return socket.create_connection((self.host, self.tls_port), timeout=5)


def start(
    factory: ProxyFactory, files: TlsFiles, min_version: str = "1.2", **server: Any
) -> TlsProxy:
    server.setdefault("header_timeout", HEAD_TIMEOUT_SECONDS)
    proxy = factory(
        server={"tls_listen": (HostPort("::", 0),), **server},
        tls=TlsConfig(cert=files.cert, key=files.key, min_version=min_version),  # type: ignore[arg-type]
    )
    return TlsProxy(proxy, files, proxy.server.tls_addresses[0].port)


@pytest.fixture
def tls(proxy_factory: ProxyFactory, tls_files: TlsFiles) -> TlsProxy:
    return start(proxy_factory, tls_files)


def get(sock: ssl.SSLSocket, path: str = "/echo") -> bytes:
    """One keep-alive request on ``sock``; the response head and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")).split(b":")[1])  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def peer_der(sock: ssl.SSLSocket) -> bytes:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


# -- requests over TLS --------------------------------------------------------------------------


def test_https_reaches_the_upstream_with_forwarded_proto(tls: TlsProxy) -> None:
    with tls.client() as client:
        response = client.get(f"{tls.url}/echo?x=1")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    headers = {name.lower(): value for name, value in response.json()["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == str(tls.tls_port)
    assert headers["x-forwarded-for"] == tls.host
    # The cleartext listener of the same proxy still says http.
    with httpx.Client(timeout=5, trust_env=False) as client:
        plain = client.get(f"{tls.proxy.url}/echo")
    assert {n.lower(): v for n, v in plain.json()["headers"]}["x-forwarded-proto"] == "http"
    assert tls.proxy.observer.opened == ["ipv6" if ":" in tls.host else "ipv4"] * 2
    assert tls.proxy.observer.tls_failures == []


def test_keep_alive_requests_share_one_tls_connection(tls: TlsProxy) -> None:
    with tls.connect() as sock:
        assert sock.version() == "TLSv1.3"
        assert sock.selected_alpn_protocol() == "http/1.1"
        for _ in range(3):
            assert get(sock).startswith(b"HTTP/1.1 200 ")
    assert len(tls.proxy.observer.requests) == 3
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


def test_a_client_offering_h2_gets_http1_until_h2_is_registered(tls: TlsProxy) -> None:
    with tls.client(http2=True) as client:
        response = client.get(f"{tls.url}/echo")
    assert (response.status_code, response.http_version) == (200, "HTTP/1.1")


def test_curl_over_tls(tls: TlsProxy) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    result = subprocess.run(
        [curl, "-sS", "--cacert", str(tls.files.ca_file), "-o", "/dev/null",
         "-w", "%{http_code} %{http_version} %{ssl_verify_result}", f"{tls.url}/echo"],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "200 1.1 0"), result.stderr


def test_websocket_over_tls(tls: TlsProxy) -> None:
    wss = tls.url.replace("https://", "wss://") + "/ws"
    with connect(wss, ssl=tls.files.client_context(), open_timeout=5) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=5) == "over tls"
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=5) == b"\x00\x01" * 40000
    assert wait_for(lambda: len(tls.proxy.observer.tunnels) == 1)
    assert tls.proxy.observer.tunnels[0].bytes_from_client > 80000
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


# -- failed handshakes, by reason -----------------------------------------------------------------


def client_hello(files: TlsFiles) -> bytes:
    out = ssl.MemoryBIO()
    client = files.client_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return out.read()


def refused(tls: TlsProxy, context: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls.connect(context).close()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` within ``within`` seconds (after an alert or not)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("reason", ["version", "cipher", "http", "eof", "timeout", "certificate"])
def test_failed_handshakes_are_counted_by_reason(
    proxy_factory: ProxyFactory, tmp_path: Any, tls_files: TlsFiles, reason: str
) -> None:
    tls = start(proxy_factory, tls_files, min_version="1.3" if reason == "version" else "1.2")
    if reason == "version":
        old = tls_files.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        refused(tls, old)
    elif reason == "cipher":
        cbc = tls_files.client_context()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256")
        refused(tls, cbc)
    elif reason == "certificate":
        refused(tls, make_tls_files(tmp_path, prefix="stranger").client_context())
    elif reason == "http":
        with tls.raw() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert closed_by_server(sock, 5)
    elif reason == "eof":
        hello = client_hello(tls_files)
        with tls.raw() as sock:
            sock.sendall(hello[: len(hello) // 2])
            time.sleep(0.05)
    elif reason == "timeout":
        with tls.raw() as sock:
            started = time.monotonic()
            assert closed_by_server(sock, 5)
            assert HEAD_TIMEOUT_SECONDS * 0.8 < time.monotonic() - started < 4
    observer = tls.proxy.observer
    assert wait_for(lambda: observer.tls_failures == [reason]), observer.tls_failures
    assert observer.opened == []  # nothing reached the HTTP side
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)
    with tls.client() as client:  # and everyone else is still served
        assert client.get(f"{tls.url}/echo").status_code == 200


def test_handshakes_count_against_max_connections(
    proxy_factory: ProxyFactory, tls_files: TlsFiles
) -> None:
    tls = start(proxy_factory, tls_files, max_connections=1, header_timeout=5)
    with tls.raw() as silent:  # holds the one place while it handshakes (never)
        assert wait_for(lambda: tls.proxy.server.connection_count == 1)
        with tls.raw() as second:
            assert closed_by_server(second, 5)
        assert tls.proxy.observer.client_errors == ["over_capacity"]
        silent.settimeout(0.2)
        with pytest.raises(TimeoutError):
            silent.recv(1)  # the first one is still waiting for its ClientHello
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


def test_shutdown_aborts_a_handshake_without_counting_it(
    proxy_factory: ProxyFactory, loop_thread: LoopThread, tls_files: TlsFiles
) -> None:
    tls = start(proxy_factory, tls_files, header_timeout=30)
    with tls.raw() as silent:
        assert wait_for(lambda: tls.proxy.server.connection_count == 1)
        started = time.monotonic()
        loop_thread.call(tls.proxy.server.shutdown(grace=0.2))
        assert closed_by_server(silent, 5)
        assert time.monotonic() - started < 3
    assert tls.proxy.server.connection_count == 0
    assert tls.proxy.observer.tls_failures == []
    assert not tls.proxy.server.listening


# -- ALPN: the seam the HTTP/2 front end plugs into ---------------------------------------------


class FakeH2:
    """Stands in for the HTTP/2 front end: records its transport and says hello."""

    made: list[asyncio.BaseTransport] = []

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        FakeH2.made.append(transport)
        tls = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's
        tls.write(b"fake h2")
        tls.close()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def test_alpn_h2_goes_to_the_registered_protocol(
    proxy_factory: ProxyFactory, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: dict[str, Callable[[Shared], Any]] = {**tlsfront.ALPN_HANDLERS, "h2": FakeH2}
    monkeypatch.setattr(tlsfront, "ALPN_HANDLERS", handlers)
    FakeH2.made.clear()
    tls = start(proxy_factory, tls_files)
    with tls.connect(tls_files.client_context(alpn=("h2", "http/1.1"))) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        assert sock.recv(100) == b"fake h2"
    (transport,) = FakeH2.made
    assert transport.get_extra_info("ssl_object") is not None
    with tls.connect() as sock:  # http/1.1 only: the HTTP/1.1 connection, as before
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert get(sock).startswith(b"HTTP/1.1 200 ")


# -- certificate reloads ----------------------------------------------------------------------


def test_reload_serves_a_new_certificate_and_keeps_open_connections(
    loop_thread: LoopThread, tls: TlsProxy
) -> None:
    # A reload closes idle keep-alive connections (the client reconnects) and lets busy
    # ones finish: a WebSocket session over TLS is the long-lived case.
    server = tls.proxy.server
    old_der = tls.files.leaf_der
    wss = tls.url.replace("https://", "wss://") + "/ws"
    with connect(wss, ssl=tls.files.client_context(), open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        tls.files.reissue()  # renewed in place: same paths, new files
        loop_thread.call(server.reload(server.config))
        ws.send("after")
        assert ws.recv(timeout=5) == "after"  # the session it has goes on
        sock = ws.socket
        assert isinstance(sock, ssl.SSLSocket)
        assert peer_der(sock) == old_der
        with tls.connect() as fresh:
            assert peer_der(fresh) == tls.files.leaf_der != old_der
            assert get(fresh).startswith(b"HTTP/1.1 200 ")
    assert len(tls.proxy.observer.certificates) == 2
    assert tls.proxy.observer.certificates[1] != 0


def test_a_handshake_across_a_reload_is_served_by_the_new_configuration(
    loop_thread: LoopThread, tls: TlsProxy
) -> None:
    # Accepted before the reload, handshaken after: the old generation's pools are
    # closed by then, so its request must go to the new one (not a 502).
    server = tls.proxy.server
    raw = tls.raw()
    assert wait_for(lambda: server.connection_count == 1)
    loop_thread.call(server.reload(server.config))
    context = tls.files.client_context()
    with context.wrap_socket(raw, server_hostname=tls.host) as sock:
        assert get(sock).startswith(b"HTTP/1.1 200 ")
    assert [r.status for r in tls.proxy.observer.requests] == [200]


def test_reload_with_unchanged_files_keeps_the_context(
    loop_thread: LoopThread, tls: TlsProxy
) -> None:
    server = tls.proxy.server
    before = server.tls.current
    loop_thread.call(server.reload(server.config))
    assert server.tls.current is before  # and its session ticket keys
    assert len(tls.proxy.observer.certificates) == 1


def test_reload_with_a_bad_key_keeps_the_certificate_in_force(
    loop_thread: LoopThread, tls: TlsProxy, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = tls.proxy.server
    tls.files.key.write_bytes(make_tls_files(tmp_path, prefix="other").key.read_bytes())
    new = dataclasses.replace(
        server.config, server=dataclasses.replace(server.config.server, keepalive_timeout=42.0)
    )
    with caplog.at_level(logging.ERROR, logger="dsproxy.proxy.tls"):
        loop_thread.call(server.reload(new))
    assert "does not match the certificate in tls.cert" in caplog.text
    assert "kept the certificate in force" in caplog.text
    assert server.config.server.keepalive_timeout == 42.0  # the rest of the reload applied
    with tls.connect() as sock:
        assert peer_der(sock) == tls.files.leaf_der
        assert get(sock).startswith(b"HTTP/1.1 200 ")
    assert len(tls.proxy.observer.certificates) == 1


def test_reload_opens_and_closes_tls_listeners(
    proxy_factory: ProxyFactory, loop_thread: LoopThread, tls_files: TlsFiles
) -> None:
    proxy = proxy_factory()
    server = proxy.server
    assert server.tls_addresses == []
    with_tls = dataclasses.replace(
        server.config,
        server=dataclasses.replace(server.config.server, tls_listen=(HostPort("::", 0),)),
        tls=TlsConfig(cert=tls_files.cert, key=tls_files.key),
    )
    loop_thread.call(server.reload(with_tls))
    (address,) = server.tls_addresses
    tls = TlsProxy(proxy, tls_files, address.port)
    with tls.client() as client:
        assert client.get(f"{tls.url}/echo").status_code == 200
    without = dataclasses.replace(
        with_tls, server=dataclasses.replace(with_tls.server, tls_listen=())
    )
    loop_thread.call(server.reload(without))
    assert server.tls_addresses == []
    with pytest.raises(ConnectionRefusedError):
        tls.raw().close()
    assert [a.port for a in server.addresses] == [proxy.port]  # cleartext untouched


# -- dsproxy probe https:// --------------------------------------------------------------------


@pytest.fixture
def tls_h11(loop_thread: LoopThread, upstream: Any, tls_files: TlsFiles) -> Iterator[TlsProxy]:
    """One proxy (h11) on a dual-stack TLS listener, for the probe's two families."""
    factory = ProxyFactory(loop_thread, "h11", "127.0.0.1", upstream)
    try:
        yield start(factory, tls_files)
    finally:
        factory.stop_all()


def probe_rows(out: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in ("ipv4", "ipv6"):
            rows[cells[0]] = cells[1:]
    return rows


def test_probe_https_reports_tls_per_family(
    tls_h11: TlsProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"https://localhost:{tls_h11.tls_port}/echo"
    assert probe.main(url, "/ws", 3.0, cacert=tls_h11.files.ca_file) == 0
    rows = probe_rows(capsys.readouterr().out)
    assert rows["ipv4"][:4] == ["127.0.0.1", "200", "TLSv1.3 http/1.1", "ok"]
    if IPV6:
        assert rows["ipv6"][:4] == ["::1", "200", "TLSv1.3 http/1.1", "ok"]


def test_probe_https_verifies_the_certificate(
    tls_h11: TlsProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"https://127.0.0.1:{tls_h11.tls_port}/echo"
    assert probe.main(url, None, 3.0) == 1  # the system's CAs do not know the test CA
    row = probe_rows(capsys.readouterr().out)["ipv4"]
    assert row[1] == "TLS: self-signed certificate in certificate chain", row
    assert probe.main(url, None, 3.0, insecure=True) == 0
    assert probe_rows(capsys.readouterr().out)["ipv4"][1:3] == ["200", "TLSv1.3 http/1.1"]


def test_probe_reports_h2_and_still_gets_over_http1(
    tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that picks h2 when offered: the TLS column says so, the GET goes over 1.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_files.leaf.configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1":
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        writer.close()

    async def body() -> int:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            url = f"https://127.0.0.1:{port}/"
            return await asyncio.to_thread(probe.main, url, None, 3.0, cacert=tls_files.ca_file)

    assert asyncio.run(body()) == 0
    assert probe_rows(capsys.readouterr().out)["ipv4"][1:3] == ["204", "TLSv1.3 h2"]


# -- the acceptor ---------------------------------------------------------------------------


class FlakyListenSocket:
    """A listen socket whose accept() fails as told, then hands out the real one's."""

    def __init__(self, real: socket.socket, errors: list[int]) -> None:
        self.real = real
        self.errors = errors

    def accept(self) -> tuple[socket.socket, Any]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.real.accept()

    def fileno(self) -> int:
        return self.real.fileno()

    def getsockname(self) -> Any:
        return self.real.getsockname()

    def close(self) -> None:
        self.real.close()


def test_acceptor_pauses_when_out_of_descriptors(
    loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tlsfront, "ACCEPT_RETRY_SECONDS", 0.2)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepted: list[socket.socket] = []
    # A client gave up while queued (skipped), then the process ran out of descriptors.
    flaky = FlakyListenSocket(listener, [errno.ECONNABORTED, errno.EMFILE])

    async def make() -> tlsfront.TlsAcceptor:
        return tlsfront.TlsAcceptor(cast(socket.socket, flaky), lambda s, p: accepted.append(s))

    acceptor = loop_thread.call(make())
    with caplog.at_level(logging.ERROR, logger="dsproxy.proxy.tls"):
        client = socket.create_connection(listener.getsockname(), timeout=5)
        assert wait_for(lambda: "accept failed" in caplog.text)
    paused_at = time.monotonic()
    assert wait_for(lambda: len(accepted) == 1)  # the queued connection, after the pause
    assert time.monotonic() - paused_at > 0.1
    assert acceptor.is_serving()

    async def close() -> None:
        acceptor.close()
        await acceptor.wait_closed()

    loop_thread.call(close())
    assert not acceptor.is_serving()
    assert listener.fileno() == -1  # the acceptor owns and closed it
    for sock in (client, *accepted):
        sock.close()
