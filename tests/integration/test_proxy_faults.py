"""Faults get the statuses in docs/architecture.md, and the proxy keeps serving the rest."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest

from tests.conftest import (
    ProxyFactory,
    ResponseReader,
    RunningProxy,
    raw_request,
    still_serving,
    wait_for,
)
from tests.upstream_server import Upstream


def answer_and_close(proxy: RunningProxy, data: bytes, method: bytes = b"GET") -> tuple[int, bool]:
    """Send ``data``; return the status and whether the proxy then closed the connection."""
    with proxy.connect() as sock:
        sock.sendall(data)
        reader = ResponseReader(sock)
        resp = reader.read(method)
        rest = reader.read_until_close(timeout=3)
        return resp.status, reader.closed and rest == b""


# ============================================================ client faults
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="no-version"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", id="bad-cl"),
    ],
)
def test_malformed_request_400(proxy: RunningProxy, data: bytes) -> None:
    status, closed = answer_and_close(proxy, data)
    assert status == 400
    assert closed
    still_serving(proxy)


def test_content_length_and_transfer_encoding_400_and_close(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    smuggle = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    status, closed = answer_and_close(proxy, smuggle, b"POST")
    assert status == 400
    assert closed
    assert upstream.requests == []
    still_serving(proxy)


def test_bad_chunk_framing_400(proxy: RunningProxy) -> None:
    data = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
    status, closed = answer_and_close(proxy, data, b"POST")
    assert status == 400
    assert closed
    still_serving(proxy)


@pytest.mark.parametrize("pieces", [1, 40])
def test_head_over_max_header_bytes_431(proxy_factory: ProxyFactory, pieces: int) -> None:
    proxy = proxy_factory(server={"max_header_bytes": 1024})
    data = raw_request("GET", "/echo", headers=[("X-Big", "a" * 2000)])
    with proxy.connect() as sock:
        step = len(data) // pieces + 1
        try:
            for i in range(0, len(data), step):
                sock.sendall(data[i : i + step])
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reader = ResponseReader(sock)
        assert reader.read().status == 431
    still_serving(proxy)


def test_head_just_under_max_header_bytes_passes(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"max_header_bytes": 4096})
    with proxy.connect() as sock:
        sock.sendall(raw_request("GET", "/echo", headers=[("X-Big", "a" * 3000)]))
        assert ResponseReader(sock).read().status == 200


def test_body_over_max_body_bytes_content_length_413(
    proxy_factory: ProxyFactory, upstream: Upstream
) -> None:
    proxy = proxy_factory(server={"max_body_bytes": 100})
    status, closed = answer_and_close(proxy, raw_request("POST", "/echo", body=b"x" * 200), b"POST")
    assert status == 413
    assert closed
    assert upstream.count("POST", "/echo") == 0
    with httpx.Client(timeout=5) as client:
        assert client.post(f"{proxy.url}/echo", content=b"x" * 100).status_code == 200


def test_body_over_max_body_bytes_chunked_413(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"max_body_bytes": 100})
    data = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"50\r\n"
        + b"x" * 80
        + b"\r\n"
        + b"50\r\n"
        + b"x" * 80
        + b"\r\n0\r\n\r\n"
    )
    with proxy.connect() as sock:
        sock.sendall(data)
        reader = ResponseReader(sock)
        try:
            status = reader.read(b"POST").status
        except ConnectionError:
            status = 0  # aborted: acceptable only if a response had started (it cannot here)
        assert status == 413
    still_serving(proxy)


def test_header_timeout_is_a_total_deadline(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"header_timeout": 1.0})
    data = raw_request("GET", "/echo", headers=[("X-Padding", "p" * 40)])
    with proxy.connect() as sock:
        started = time.monotonic()
        answered = False
        for byte in data[:-4]:  # never complete the head
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                answered = True
                break
            if time.monotonic() - started > 5:
                break
        elapsed = time.monotonic() - started
        assert answered, "the proxy never answered a trickled head"
        assert elapsed < 2.0, f"header_timeout=1 but answered after {elapsed:.1f}s"
        reader = ResponseReader(sock)
        assert reader.read().status == 408
        assert reader.read_until_close(timeout=3) == b""
        assert reader.closed
    still_serving(proxy)


# ============================================================ upstream faults
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_upstream_refused_502(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(upstream_port=closed_port())
    with httpx.Client(timeout=5) as client:
        for _ in range(2):
            assert client.get(f"{proxy.url}/echo").status_code == 502
    assert "connect" in proxy.observer.upstream_errors


@pytest.mark.parametrize("path", ["/reset", "/garbage", "/clte", "/dupcl"])
def test_upstream_invalid_or_reset_502(proxy: RunningProxy, path: str) -> None:
    with httpx.Client(timeout=5) as client:
        resp = client.get(f"{proxy.url}{path}")
        assert resp.status_code == 502
    still_serving(proxy)


def test_upstream_read_timeout_504(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(upstream={"read_timeout": 0.5})
    started = time.monotonic()
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{proxy.url}/slow?delay=3").status_code == 504
    assert time.monotonic() - started < 2.5
    assert "timeout" in proxy.observer.upstream_errors
    still_serving(proxy)


@pytest.mark.parametrize("size", [1000, 1_000_000])  # small, and a body passed by unparsed
def test_upstream_dies_mid_body_content_length(proxy: RunningProxy, size: int) -> None:
    with proxy.connect() as sock:
        sock.sendall(raw_request("GET", f"/close-mid-body?cl={size}"))
        reader = ResponseReader(sock)
        raw = reader.read_until_close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: %d" % size in head.lower()
    assert len(body) < size  # aborted, never padded or completed
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{proxy.url}/close-mid-body?cl={size}")
    still_serving(proxy)


@pytest.mark.parametrize("size", [2, 1_000_000])
def test_bytes_behind_a_response_end_that_upstream_connection(
    proxy: RunningProxy, size: int
) -> None:
    """The response is delivered; what the upstream sent behind it never answers anyone."""
    with httpx.Client(timeout=5) as client:
        for _ in range(3):
            resp = client.get(f"{proxy.url}/extra?n={size}")
            assert resp.status_code == 200
            assert resp.content == b"y" * size
            follow = client.get(f"{proxy.url}/echo")
            assert follow.status_code == 200
            assert follow.json()["target"] == "/echo"
    assert "protocol" in proxy.observer.upstream_errors
    still_serving(proxy)


def test_upstream_dies_mid_chunked_body_no_final_chunk(proxy: RunningProxy) -> None:
    with proxy.connect() as sock:
        sock.sendall(raw_request("GET", "/close-mid-body?chunked=1"))
        reader = ResponseReader(sock)
        raw = reader.read_until_close()
        assert reader.closed
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"hello" in body
    assert not body.endswith(b"0\r\n\r\n")
    assert b"\r\n0\r\n\r\n" not in body
    still_serving(proxy)


def test_over_max_connections_closed_at_once(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"max_connections": 2})
    first, second = proxy.connect(), proxy.connect()
    try:
        readers = [ResponseReader(first), ResponseReader(second)]
        for sock, reader in zip((first, second), readers, strict=True):
            sock.sendall(raw_request("GET", "/echo"))
            assert reader.read().status == 200
        with proxy.connect() as third:
            third.settimeout(3)
            try:
                third.sendall(raw_request("GET", "/echo"))
                data = third.recv(4096)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 503")
        # The connections already served keep working.
        for sock, reader in zip((first, second), readers, strict=True):
            sock.sendall(raw_request("GET", "/echo?again"))
            assert reader.read().status == 200
    finally:
        first.close()
        second.close()
    assert "over_capacity" in proxy.observer.client_errors
    # Once they are gone, new clients are served again.
    assert wait_for(lambda: proxy.server.connection_count == 0)
    still_serving(proxy)


def test_body_timeout_408(proxy_factory: ProxyFactory, upstream: Upstream) -> None:
    proxy = proxy_factory(server={"body_timeout": 0.5})
    with proxy.connect() as sock:
        sock.sendall(raw_request("POST", "/echo", headers=[("Content-Length", "10")]) + b"12345")
        started = time.monotonic()
        reader = ResponseReader(sock)
        try:
            status = reader.read(b"POST").status
        except ConnectionError:
            status = 0
        assert status == 408
        assert time.monotonic() - started < 2.5
    still_serving(proxy)


def test_header_timeout_on_keep_alive_connection(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(server={"header_timeout": 1.0})
    with proxy.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(raw_request("GET", "/echo"))
        assert reader.read().status == 200
        started = time.monotonic()
        for byte in b"GET /echo HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable or time.monotonic() - started > 5:
                break
        assert time.monotonic() - started < 2.0
        assert reader.read().status == 408


def test_client_that_stops_reading_is_cut_off_after_body_timeout(
    proxy_factory: ProxyFactory, upstream: Upstream
) -> None:
    """The response piles up until the proxy's write buffer is full; after
    server.body_timeout more (not upstream.read_timeout's 60 s) the client is cut off."""
    proxy = proxy_factory(server={"body_timeout": 1.0})
    family = socket.AF_INET6 if ":" in proxy.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(proxy.address)
        started = time.monotonic()
        sock.sendall(b"GET /stream?n=200000000&cl=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(
            lambda: any(r.error == "client_write_timeout" for r in proxy.observer.requests),
            timeout=8,
        )
        assert time.monotonic() - started < 6
    still_serving(proxy)
