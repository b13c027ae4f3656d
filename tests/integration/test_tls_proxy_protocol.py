"""The PROXY protocol in front of TLS listeners, on loopback over 127.0.0.1 and ::1 and
both HTTP/1.1 codecs.

The header comes before the ClientHello: from ``curl --haproxy-protocol`` (a real
sender), and hand-built v1 and v2 bytes (spoofed IPv4 and IPv6 sources, UNKNOWN, LOCAL)
sent in the same write as the ClientHello or byte by byte. The TLS client here runs
over memory BIOs, so the test decides how the bytes are cut. The header's source is the
client's address over TLS too; refusals are the cleartext listeners' (closed, counted as
``proxy_protocol``, nothing reaches the upstream), and a handshake that fails after a
good header is still counted as a TLS failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import shutil
import socket
import ssl
import struct
import subprocess
import time
from typing import Any, cast

import pytest

from dsproxy.config import TlsConfig
from dsproxy.net.addr import HostPort
from fuzz.proxyproto_harness import tlv, v1, v1_unknown, v2
from tests import tlsutil
from tests.conftest import LoopThread, ProxyFactory, ResponseReader, wait_for
from tests.tlsutil import TlsFiles, make_tls_files
from tests.upstream_server import Upstream

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ON: dict[str, Any] = {"proxy_protocol": True, "proxy_protocol_from": LOOPBACK}
DEST4, DEST6 = HostPort("192.0.2.80", 443), HostPort("2001:db8::80", 443)
REQUEST = b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n"


class TlsProxy(tlsutil.TlsProxy):
    def client(self, context: ssl.SSLContext | None = None) -> BioClient:
        return BioClient(self.raw(), context or self.files.client_context(), self.host)


def start(factory: ProxyFactory, files: TlsFiles, **server: Any) -> TlsProxy:
    settings = {"tls_listen": (HostPort("::", 0),), "header_timeout": 5.0, **ON, **server}
    proxy = factory(server=settings, tls=TlsConfig(cert=files.cert, key=files.key))
    return TlsProxy(proxy, files, proxy.server.tls_addresses[0].port)


class BioClient:
    """A TLS client over a plain socket through memory BIOs: ``hello`` gives the
    ClientHello's bytes to send however the test likes, ``handshake`` finishes."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)

    def hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def send_with(self, header: bytes, *, one_by_one: bool = False) -> None:
        """The header and the ClientHello: in one write, or the header (and the first
        bytes of the hello) one byte a write."""
        data = header + self.hello()
        if not one_by_one:
            self.sock.sendall(data)
            return
        cut = len(header) + 3
        for i in range(cut):
            self.sock.sendall(data[i : i + 1])
            time.sleep(0.002)
        self.sock.sendall(data[cut:])

    def handshake(self) -> None:
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    self._flush()
                    self._fill()
        finally:
            self._flush()  # the last flight, or the alert of a failure

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def echo(self) -> dict[str, Any]:
        self.sendall(REQUEST)
        response = ResponseReader(cast(socket.socket, self)).read()
        assert response.status == 200
        body: dict[str, Any] = json.loads(response.body)
        return body

    def close(self) -> None:
        self.sock.close()


def client_hello(files: TlsFiles) -> bytes:
    out = ssl.MemoryBIO()
    tls = files.client_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def headers_of(echo: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in echo["headers"]}


def closed_by_server(sock: socket.socket, within: float = 3.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def refused(tls: TlsProxy, upstream: Upstream, kind: str = "proxy_protocol") -> None:
    """Counted once as ``kind``, no handshake was tried, nothing reached the upstream."""
    observer = tls.proxy.observer
    assert wait_for(lambda: observer.client_errors == [kind]), observer.client_errors
    assert observer.tls_failures == []
    assert observer.opened == []
    assert upstream.accepted == 0
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


@pytest.fixture
def tls(proxy_factory: ProxyFactory, tls_files: TlsFiles) -> TlsProxy:
    return start(proxy_factory, tls_files)


# -- the header's address is the client's ---------------------------------------------------


def test_curl_haproxy_protocol_over_tls(tls: TlsProxy, upstream: Upstream) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    family = "-6" if ":" in tls.host else "-4"
    command = [curl, "-sS", family, "--max-time", "10", "--cacert", str(tls.files.ca_file)]
    result = subprocess.run(
        [*command, "--haproxy-protocol", f"{tls.url}/echo"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    headers = headers_of(json.loads(result.stdout))
    # curl's header says "PROXY TCP4|TCP6 <its address> <ours> <ports>": its loopback address.
    assert headers["x-forwarded-for"] == tls.host
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == str(tls.tls_port)
    # Without the header, the same curl is refused: the listener requires it.
    plain = subprocess.run(
        [*command, f"{tls.url}/echo"], capture_output=True, text=True, timeout=15, check=False
    )
    assert plain.returncode != 0
    observer = tls.proxy.observer
    assert wait_for(lambda: observer.client_errors == ["proxy_protocol"])
    assert observer.tls_failures == []  # refused before any handshake
    assert len(upstream.requests) == 1


HEADERS = [
    (v1(HostPort("203.0.113.7", 51000), DEST4), "203.0.113.7", "ipv4"),
    (v1(HostPort("2001:db8::7", 51000), DEST6), "2001:db8::7", "ipv6"),
    (v2(HostPort("198.51.100.9", 40000), DEST4), "198.51.100.9", "ipv4"),
    (
        v2(HostPort("2001:db8:1::9", 40000), DEST6, tlvs=tlv(0x01, b"h2"), checksum=True),
        "2001:db8:1::9",
        "ipv6",
    ),
    (v1_unknown(), None, None),  # the socket's peer
    (v2(command=0), None, None),  # LOCAL: the socket's peer
]
HEADER_IDS = ["v1-ipv4", "v1-ipv6", "v2-ipv4", "v2-ipv6-tlvs", "v1-unknown", "v2-local"]


def check_served_as(tls: TlsProxy, client: BioClient, ip: str | None, family: str | None) -> None:
    peer_family = "ipv6" if ":" in tls.host else "ipv4"
    expected_ip, expected_family = ip or tls.host, family or peer_family
    assert client.tls.selected_alpn_protocol() == "http/1.1"
    for _ in range(2):  # keep-alive: the same client for every request
        headers = headers_of(client.echo())
        assert headers["x-forwarded-for"] == expected_ip
        assert headers["x-real-ip"] == expected_ip
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-port"] == str(tls.tls_port)  # the socket's
    observer = tls.proxy.observer
    assert wait_for(lambda: len(observer.requests) == 2)
    assert {(r.client_ip, r.family) for r in observer.requests} == {(expected_ip, expected_family)}
    assert observer.opened == [expected_family]
    assert (observer.client_errors, observer.tls_failures) == ([], [])


@pytest.mark.parametrize(("header", "ip", "family"), HEADERS, ids=HEADER_IDS)
def test_header_in_the_same_write_as_the_client_hello(
    tls: TlsProxy, header: bytes, ip: str | None, family: str | None
) -> None:
    client = tls.client()
    try:
        client.send_with(header)
        client.handshake()
        check_served_as(tls, client, ip, family)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("header", "ip", "family"), [HEADERS[1], HEADERS[3]], ids=HEADER_IDS[1:4:2]
)
def test_header_byte_by_byte(
    tls: TlsProxy, header: bytes, ip: str | None, family: str | None
) -> None:
    client = tls.client()
    try:
        client.send_with(header, one_by_one=True)
        client.handshake()
        check_served_as(tls, client, ip, family)
    finally:
        client.close()


def test_per_client_limits_count_the_header_address(
    proxy_factory: ProxyFactory, tls_files: TlsFiles
) -> None:
    tls = start(proxy_factory, tls_files, max_connections_per_ip=1)
    first, second = tls.client(), tls.client()
    try:
        first.send_with(v2(HostPort("203.0.113.7", 1), DEST4))
        first.handshake()
        assert headers_of(first.echo())["x-forwarded-for"] == "203.0.113.7"
        second.send_with(v1(HostPort("203.0.113.7", 2), DEST4))  # the same client again
        second.handshake()  # (the limit is the HTTP side's: after the handshake)
        assert closed_by_server(second.sock)
        assert wait_for(lambda: tls.proxy.observer.client_errors == ["too_many_connections"])
    finally:
        first.close()
        second.close()


# -- refusals ----------------------------------------------------------------------------


def test_peer_outside_the_allowed_networks_is_closed_at_once(
    proxy_factory: ProxyFactory, tls_files: TlsFiles, upstream: Upstream
) -> None:
    tls = start(
        proxy_factory, tls_files, proxy_protocol_from=(ipaddress.ip_network("192.0.2.0/24"),)
    )
    client = tls.client()
    started = time.monotonic()
    try:
        client.send_with(v1(HostPort("203.0.113.7", 1), DEST4))
        assert closed_by_server(client.sock)
    finally:
        client.close()
    assert time.monotonic() - started < 2.0  # not at the header deadline (5 s)
    refused(tls, upstream)


def test_a_bare_client_hello_is_refused_at_its_first_byte(
    tls: TlsProxy, upstream: Upstream
) -> None:
    client = tls.client()
    started = time.monotonic()
    try:
        client.sock.sendall(client.hello()[:1])
        assert closed_by_server(client.sock)
    finally:
        client.close()
    assert time.monotonic() - started < 2.0  # not at the header deadline (5 s)
    refused(tls, upstream)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 ::1 1 2\r\n",
        v2(HostPort("203.0.113.7", 1), DEST4, version=1),
        b"GET / HTTP/1.1\r\n",
    ],
    ids=["v1-mixed-families", "v2-version-1", "plain-http"],
)
def test_a_malformed_header_is_refused(tls: TlsProxy, upstream: Upstream, header: bytes) -> None:
    client = tls.client()
    try:
        client.send_with(header)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client.handshake()
    finally:
        client.close()
    refused(tls, upstream)


@pytest.mark.parametrize(
    "sent",
    [b"", b"PROXY TCP6 2001:db8::7 ", v2(HostPort("203.0.113.7", 1), DEST4)[:20]],
    ids=["missing", "truncated-v1", "truncated-v2"],
)
def test_no_complete_header_within_header_timeout(
    proxy_factory: ProxyFactory, tls_files: TlsFiles, upstream: Upstream, sent: bytes
) -> None:
    tls = start(proxy_factory, tls_files, header_timeout=0.3)
    started = time.monotonic()
    with tls.raw() as sock:
        sock.sendall(sent)
        assert closed_by_server(sock, 5)
    assert 0.25 <= time.monotonic() - started < 3.0
    refused(tls, upstream)


def test_the_peer_going_away(tls: TlsProxy, upstream: Upstream) -> None:
    with tls.raw() as sock:  # a TCP health check: connect, close; not an error
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock)
    time.sleep(0.1)
    assert tls.proxy.observer.client_errors == []
    with tls.raw() as sock:  # inside the header: truncated
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2")
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock)
    assert wait_for(lambda: tls.proxy.observer.client_errors == ["proxy_protocol"])
    sock = tls.raw()  # inside the header, and reset
    sock.sendall(b"\r\n\r\n\x00\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    refused_twice = ["proxy_protocol"] * 2
    assert wait_for(lambda: tls.proxy.observer.client_errors == refused_twice)
    assert upstream.accepted == 0
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("http", "http"), ("certificate", "certificate"), ("half-hello", "eof"),
     ("health-check", "eof"), ("timeout", "timeout")],
)  # fmt: skip
def test_a_handshake_failing_after_a_good_header_is_counted(
    proxy_factory: ProxyFactory,
    tls_files: TlsFiles,
    tmp_path: Any,
    upstream: Upstream,
    case: str,
    reason: str,
) -> None:
    tls = start(proxy_factory, tls_files, header_timeout=0.3)
    header = v2(HostPort("203.0.113.7", 1), DEST4)
    if case == "certificate":
        stranger = make_tls_files(tmp_path, prefix="stranger").client_context()
        client = tls.client(stranger)
        client.send_with(header)
        with pytest.raises(ssl.SSLCertVerificationError):
            client.handshake()
        client.close()
    else:
        with tls.raw() as sock:
            if case == "http":
                sock.sendall(header + REQUEST)
            elif case == "half-hello":
                hello = client_hello(tls.files)
                sock.sendall(header + hello[: len(hello) // 2])
                time.sleep(0.05)
            elif case == "health-check":  # a balancer's: LOCAL, then it hangs up
                sock.sendall(v2(command=0))
                time.sleep(0.05)
            else:
                sock.sendall(header)  # then nothing: the handshake's own deadline
            if case in ("http", "timeout"):
                assert closed_by_server(sock, 5)
    observer = tls.proxy.observer
    assert wait_for(lambda: observer.tls_failures == [reason]), observer.tls_failures
    assert (observer.client_errors, observer.opened) == ([], [])
    assert upstream.accepted == 0
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


# -- capacity, reload, shutdown -----------------------------------------------------------


def test_waiting_headers_count_against_max_connections(
    proxy_factory: ProxyFactory, tls_files: TlsFiles
) -> None:
    tls = start(proxy_factory, tls_files, max_connections=1)
    with tls.raw() as silent:  # holds the one place while it sends no header
        assert wait_for(lambda: tls.proxy.server.connection_count == 1)
        with tls.raw() as second:
            assert closed_by_server(second)
        assert tls.proxy.observer.client_errors == ["over_capacity"]
        silent.settimeout(0.2)
        with pytest.raises(TimeoutError):
            silent.recv(1)  # the first one is still waiting for its header
    assert wait_for(lambda: tls.proxy.server.connection_count == 0)


def test_a_header_across_a_reload_is_served_and_reload_turns_it_off(
    tls: TlsProxy, loop_thread: LoopThread
) -> None:
    server = tls.proxy.server
    client = tls.client()
    try:
        assert wait_for(lambda: server.connection_count == 1)
        loop_thread.call(server.reload(server.config))  # a waiting header is not idle
        client.send_with(v1(HostPort("203.0.113.8", 1), DEST4))
        client.handshake()
        assert headers_of(client.echo())["x-forwarded-for"] == "203.0.113.8"
    finally:
        client.close()
    off = dataclasses.replace(
        server.config, server=dataclasses.replace(server.config.server, proxy_protocol=False)
    )
    loop_thread.call(server.reload(off))
    plain = tls.client()
    try:
        plain.sock.sendall(plain.hello())  # no header: a TLS listener as without the option
        plain.handshake()
        assert headers_of(plain.echo())["x-forwarded-for"] == tls.host
    finally:
        plain.close()
    assert tls.proxy.observer.client_errors == []


def test_shutdown_aborts_a_waiting_header_without_counting_it(
    tls: TlsProxy, loop_thread: LoopThread
) -> None:
    with tls.raw() as silent:
        assert wait_for(lambda: tls.proxy.server.connection_count == 1)
        started = time.monotonic()
        loop_thread.call(tls.proxy.server.shutdown(grace=0.2))
        assert closed_by_server(silent, 5)
        assert time.monotonic() - started < 3
    assert tls.proxy.server.connection_count == 0
    assert (tls.proxy.observer.client_errors, tls.proxy.observer.tls_failures) == ([], [])


# -- without the option -------------------------------------------------------------------


def test_without_proxy_protocol_a_tls_listener_takes_no_header(
    proxy_factory: ProxyFactory, tls_files: TlsFiles
) -> None:
    tls = start(proxy_factory, tls_files, proxy_protocol=False, proxy_protocol_from=())
    plain = tls.client()
    try:
        plain.sock.sendall(plain.hello())
        plain.handshake()
        assert headers_of(plain.echo())["x-forwarded-for"] == tls.host
    finally:
        plain.close()
    with tls.raw() as sock:  # a header is the start of a broken handshake here
        sock.sendall(v1(HostPort("203.0.113.7", 1), DEST4) + client_hello(tls.files))
        assert closed_by_server(sock)
    observer = tls.proxy.observer
    assert wait_for(lambda: len(observer.tls_failures) == 1)
    assert observer.client_errors == []
