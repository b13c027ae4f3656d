"""``dsproxy probe`` against real loopback listeners.

The demo gateway runs in the test's event loop; ``probe.main`` (which runs its own
loop with ``asyncio.run``) runs in a worker thread, as the command line would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dsproxy.tools import probe
from dsproxy.tools.demo_gateway import DemoGateway, start_demo_gateway
from tests.support import needs_ipv6

TEST_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 2.0


def dual_stack_socket() -> socket.socket:
    """A ``[::]:0`` socket that also takes IPv4 (IPV6_V6ONLY cleared), as dsproxy listens."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
    except OSError:
        sock.close()
        raise
    return sock


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def run_probe(
    url: str, ws_path: str | None, probe_timeout: float = PROBE_TIMEOUT_SECONDS
) -> int:
    return await asyncio.to_thread(probe.main, url, ws_path, probe_timeout)


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), TEST_TIMEOUT_SECONDS)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def gateway_on(host: str | None) -> AsyncIterator[DemoGateway]:
    """The demo gateway on ``host``, or on a dual-stack ``[::]`` socket when None."""
    if host is None:
        gateway = await start_demo_gateway(sock=dual_stack_socket())
    else:
        gateway = await start_demo_gateway(host)
    try:
        yield gateway
    finally:
        await gateway.close()


def table_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by family: ``{"ipv4": [address, http, websocket, latency]}``."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in ("ipv4", "ipv6"):
            rows[cells[0]] = cells[1:]
    return rows


@needs_ipv6
def test_dual_stack_listener_passes_on_both_families(capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        async with gateway_on(None) as gateway:
            code = await run_probe(f"http://localhost:{gateway.port}/hello", "/ws")
        assert code == 0

    run(body)
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["ipv4"][:3] == ["127.0.0.1", "200", "ok"]
    assert rows["ipv6"][:3] == ["::1", "200", "ok"]
    assert rows["ipv4"][3].endswith(" ms")
    assert "ok: reached over ipv4 and ipv6" in out


@needs_ipv6
def test_ipv4_only_listener_fails_on_ipv6(capsys: pytest.CaptureFixture[str]) -> None:
    # The case probe exists for: a gateway that listens on IPv4 only.
    async def body() -> None:
        async with gateway_on("127.0.0.1") as gateway:
            code = await run_probe(f"http://localhost:{gateway.port}", "/ws")
        assert code == 1

    run(body)
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["ipv4"][:3] == ["127.0.0.1", "200", "ok"]
    assert rows["ipv6"][:3] == ["::1", "connection refused", "not tried (HTTP failed)"]
    assert "FAIL: ipv6" in out


@pytest.mark.parametrize(
    ("host", "url_host", "family"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", "ipv4", id="ipv4"),
        pytest.param("::1", "[::1]", "ipv6", id="ipv6", marks=needs_ipv6),
    ],
)
def test_ip_literal_tests_only_its_family(
    capsys: pytest.CaptureFixture[str], host: str, url_host: str, family: str
) -> None:
    async def body() -> None:
        async with gateway_on(host) as gateway:
            code = await run_probe(f"http://{url_host}:{gateway.port}/x?y=1", "/ws")
        assert code == 0

    run(body)
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == [family]
    assert rows[family][:3] == [host, "200", "ok"]


def test_without_ws_the_websocket_column_is_a_dash(capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        async with gateway_on("127.0.0.1") as gateway:
            assert await run_probe(f"http://127.0.0.1:{gateway.port}", None) == 0

    run(body)
    assert table_rows(capsys.readouterr().out)["ipv4"][:3] == ["127.0.0.1", "200", "-"]


@pytest.mark.parametrize(("status", "code"), [(404, 0), (503, 1)])
def test_http_status_decides(capsys: pytest.CaptureFixture[str], status: int, code: int) -> None:
    async def body() -> None:
        async with gateway_on("127.0.0.1") as gateway:
            url = f"http://127.0.0.1:{gateway.port}/status/{status}"
            assert await run_probe(url, None) == code

    run(body)
    assert table_rows(capsys.readouterr().out)["ipv4"][1] == str(status)


def test_closed_port_fails(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()

    async def body() -> None:
        assert await run_probe(f"http://localhost:{port}", "/ws") == 1

    run(body)
    rows = table_rows(capsys.readouterr().out)
    assert rows["ipv4"][1:3] == ["connection refused", "not tried (HTTP failed)"]
    assert rows["ipv4"][3] == "-"
    assert "ipv6" in rows  # localhost is always probed on both families


async def fixed_answer_server(
    answer: bytes | None, *, then_close_silently: bool = False
) -> tuple[asyncio.Server, int]:
    """A tiny server: reads a head, answers ``answer`` and closes (None: never answers).

    ``then_close_silently``: only the first connection gets ``answer``; later ones
    are closed without a word.
    """
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
                if then_close_silently and connections > 1:
                    pass
                elif answer is None:
                    await reader.read()  # until the client gives up
                else:
                    writer.write(answer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def test_websocket_refused_fails(capsys: pytest.CaptureFixture[str]) -> None:
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    async def body() -> None:
        server, port = await fixed_answer_server(answer)
        async with server:
            assert await run_probe(f"http://127.0.0.1:{port}", "/ws") == 1

    run(body)
    rows = table_rows(capsys.readouterr().out)
    assert rows["ipv4"][1:3] == ["404", "handshake refused: HTTP 404"]


def test_server_closing_at_once_fails(capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        server, port = await fixed_answer_server(b"")
        async with server:
            assert await run_probe(f"http://127.0.0.1:{port}", None) == 1

    run(body)
    assert table_rows(capsys.readouterr().out)["ipv4"][1] == "closed before a response"


def test_server_closing_during_websocket_handshake_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first connection (HTTP) gets an answer; so does the second (the WebSocket
    # handshake), but it is a bare close: no 101.
    async def body() -> None:
        server, port = await fixed_answer_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", then_close_silently=True
        )
        async with server:
            assert await run_probe(f"http://127.0.0.1:{port}", "/ws") == 1

    run(body)
    rows = table_rows(capsys.readouterr().out)
    assert rows["ipv4"][1:3] == ["200", "connection closed during the handshake"]


def test_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        server, port = await fixed_answer_server(None)
        async with server:
            assert await run_probe(f"http://127.0.0.1:{port}", "/ws", probe_timeout=0.3) == 1

    run(body)
    rows = table_rows(capsys.readouterr().out)
    assert rows["ipv4"][1:3] == ["timeout after 0.3s", "not tried (HTTP failed)"]


@pytest.mark.parametrize(
    "url",
    ["ftp://localhost:16980", "http://[::]:16980", "http://0.0.0.0:1", "not a url", "http://"],
)
def test_bad_url_exits_2(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert probe.main(url, None) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dsproxy probe: ")


def test_bad_ws_path_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main("http://127.0.0.1:1", "ws") == 2
    assert "must start with '/'" in capsys.readouterr().err
