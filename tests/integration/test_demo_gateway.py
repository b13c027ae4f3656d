"""The demo gateway on real loopback sockets, 127.0.0.1 and ::1.

httpx drives HTTP, the ``websockets`` client drives WebSocket, and raw sockets check
what clients hide (pipelining, 100-continue, bytes right after the handshake, garbage).
Each test runs its own event loop with ``asyncio.run`` and is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from websockets.asyncio.client import connect

from dsproxy.cli import build_parser
from dsproxy.net.addr import HostPort
from dsproxy.tools.demo import demo_config, demo_instructions
from dsproxy.tools.demo_gateway import DemoGateway, demo_bytes, start_demo_gateway
from tests.support import ipv6_available, needs_ipv6

TEST_TIMEOUT_SECONDS = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


LOOPBACKS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6", marks=needs_ipv6),
]


# The proxy runs on uvloop, whose transports differ from asyncio's in small ways
# (they are not asyncio.Transport subclasses): the key tests run on both loops.
LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


def run_with_gateway(
    host: str,
    body: Callable[[DemoGateway], Awaitable[None]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> None:
    """Start a gateway on ``host``, run ``body`` against it (bounded), close the gateway."""

    async def main() -> None:
        gateway = await start_demo_gateway(host)
        try:
            await asyncio.wait_for(body(gateway), TEST_TIMEOUT_SECONDS)
        finally:
            await gateway.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def url(gateway: DemoGateway, path: str) -> str:
    return f"http://{HostPort(gateway.host, gateway.port)}{path}"


def ws_url(gateway: DemoGateway, path: str) -> str:
    return f"ws://{HostPort(gateway.host, gateway.port)}{path}"


async def raw_exchange(gateway: DemoGateway, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, half-close, read until the server closes."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("host", LOOPBACKS)
def test_get_is_described_as_received(
    host: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                url(gateway, "/hello/there?x=1&y=%20z"), headers={"X-Demo-Test": "Abc Def"}
            )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        seen = response.json()
        assert seen["method"] == "GET"
        assert seen["target"] == "/hello/there?x=1&y=%20z"
        assert seen["http_version"] == "1.1"
        assert ["X-Demo-Test", "Abc Def"] in seen["headers"]  # name case kept
        assert ["Host", str(HostPort(host, gateway.port))] in seen["headers"]
        assert seen["body_length"] == 0
        assert seen["body_sha256"] == EMPTY_SHA256
        assert seen["peer"]["host"] == host
        assert seen["peer"]["family"] == ("ipv6" if ":" in host else "ipv4")

    run_with_gateway(host, body, loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_keep_alive_serves_requests_on_one_connection(host: str) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
            seen = [(await client.request(m, url(gateway, f"/{m}"))).json() for m in methods]
        assert [s["method"] for s in seen] == methods
        assert len({s["peer"]["port"] for s in seen}) == 1  # one connection for all

    run_with_gateway(host, body)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_request_body_length_and_hash(host: str) -> None:
    payload = os.urandom(1_000_003)

    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(gateway, "/upload"), content=payload)
        seen = response.json()
        assert seen["body_length"] == len(payload)
        assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()

    run_with_gateway(host, body)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("host", LOOPBACKS)
def test_chunked_upload_is_hashed_as_it_streams(
    host: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    pieces = [os.urandom(size) for size in (1, 100, 65536, 7, 300_000)]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)

    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.put(url(gateway, "/chunked"), content=chunks())
        seen = response.json()
        names = {name.lower(): value for name, value in seen["headers"]}
        assert names["transfer-encoding"] == "chunked"
        whole = b"".join(pieces)
        assert seen["body_length"] == len(whole)
        assert seen["body_sha256"] == hashlib.sha256(whole).hexdigest()

    run_with_gateway(host, body, loop_factory)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("length", [0, 1, 65536, 300_001])
def test_bytes_are_streamed_chunked(
    host: str, length: int, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(gateway, f"/bytes/{length}"))
            again = await client.get(url(gateway, "/after"))  # keep-alive survives
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == demo_bytes(length)
        assert again.json()["target"] == "/after"

    run_with_gateway(host, body, loop_factory)


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("status", [200, 204, 301, 304, 404, 418, 503])
def test_status_path(host: str, status: int) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(gateway, f"/status/{status}"))
        assert response.status_code == status
        if status in (204, 304):
            assert response.content == b""
            assert "content-length" not in response.headers
        else:
            assert response.text == f"status {status}\n"

    run_with_gateway(host, body)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_head_has_headers_and_no_body(host: str) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            head = await client.head(url(gateway, "/status/200"))
            get = await client.get(url(gateway, "/status/200"))
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]

    run_with_gateway(host, body)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_delay_answers_after_the_delay(host: str) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            response = await client.get(url(gateway, "/delay/0.3"))
            elapsed = time.monotonic() - started
        assert response.json()["target"] == "/delay/0.3"
        assert elapsed >= 0.3

    run_with_gateway(host, body)


@pytest.mark.parametrize(
    "path",
    ["/status/abc", "/status/100", "/status/600", "/bytes/x", "/bytes/-1", "/delay/soon"],
)
def test_malformed_special_paths_are_400(path: str) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(gateway, path))
        assert response.status_code == 400

    run_with_gateway("127.0.0.1", body)


def test_ws_path_without_upgrade_is_426() -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(gateway, "/ws"))
        assert response.status_code == 426
        assert response.headers["upgrade"] == "websocket"

    run_with_gateway("127.0.0.1", body)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("host", LOOPBACKS)
def test_pipelined_requests_are_answered_in_order(
    host: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    # The first answer takes a while (/delay): the second request, already in the
    # buffer, must wait for it rather than overtake it.
    requests = (
        b"GET /delay/0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    async def body(gateway: DemoGateway) -> None:
        answer = await raw_exchange(gateway, requests)
        assert answer.count(b"HTTP/1.1 200 ") == 4
        first = answer.index(b'"target": "/delay/0.2"')
        second = answer.index(b'"target": "/second"')
        third = answer.index(demo_bytes(10))
        last = answer.index(b'"target": "/last"')
        assert first < second < third < last
        assert b'"body_length": 3' in answer

    run_with_gateway(host, body, loop_factory)


def test_http_1_0_request_is_answered_and_closed() -> None:
    async def body(gateway: DemoGateway) -> None:
        answer = await raw_exchange(gateway, b"GET /bytes/5 HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"\r\n\r\n" + demo_bytes(5))  # close-delimited body

    run_with_gateway("127.0.0.1", body)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
def test_malformed_request_gets_400_and_close(garbage: bytes) -> None:
    async def body(gateway: DemoGateway) -> None:
        answer = await raw_exchange(gateway, garbage)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in answer.lower()

    run_with_gateway("127.0.0.1", body)


def test_expect_100_continue() -> None:
    async def body(gateway: DemoGateway) -> None:
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        try:
            writer.write(
                b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\nConnection: close\r\n\r\n"
            )
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 ")
            writer.write(b"hello")
            final = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        assert final.startswith(b"HTTP/1.1 200 ")
        assert hashlib.sha256(b"hello").hexdigest().encode() in final

    run_with_gateway("127.0.0.1", body)


# -- WebSocket ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("path", ["/ws", "/any/other/path?q=1"])
def test_websocket_echo_ping_and_close(
    host: str, path: str, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def body(gateway: DemoGateway) -> None:
        async with connect(ws_url(gateway, path)) as ws:
            await ws.send("hello, dual stack")
            assert await ws.recv() == "hello, dual stack"
            await ws.send("é" * 100_000)  # multi-byte text, several frames' worth
            assert await ws.recv() == "é" * 100_000
            blob = os.urandom(200_000)
            await ws.send(blob)
            assert await ws.recv() == blob
            await ws.send(["frag", "mented"])  # one message in two frames
            assert await ws.recv() == "fragmented"
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 2)
        assert ws.close_code == 1000  # the server answered the close handshake

    run_with_gateway(host, body, loop_factory)


def test_websocket_frame_in_the_same_packet_as_the_handshake() -> None:
    # A client may send its first frame right behind the upgrade request; those bytes
    # reach h11's buffer and must be handed to wsproto, not lost.
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    mask = b"\x01\x02\x03\x04"
    payload = b"early"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + masked  # FIN, text, masked

    async def body(gateway: DemoGateway) -> None:
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        try:
            writer.write(handshake + frame)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455 §1.3 example key
            echo = await reader.readexactly(2 + len(payload))
            assert echo == bytes([0x81, len(payload)]) + payload  # unmasked from server
        finally:
            writer.close()
            await writer.wait_closed()

    run_with_gateway("127.0.0.1", body)


def test_bad_websocket_handshake_is_400_and_connection_stays_http() -> None:
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    async def body(gateway: DemoGateway) -> None:
        answer = await raw_exchange(gateway, request)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b'"target": "/next"' in answer

    run_with_gateway("127.0.0.1", body)


def test_close_ends_open_connections() -> None:
    async def main() -> None:
        gateway = await start_demo_gateway()
        async with connect(ws_url(gateway, "/ws")) as ws:
            reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
            writer.write(b"GET /delay/30 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            await asyncio.wait_for(gateway.close(), 2)
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            await writer.wait_closed()
            with pytest.raises(Exception, match="no close frame"):
                await asyncio.wait_for(ws.recv(), 2)

    asyncio.run(main())


def test_gateway_on_a_dual_stack_socket_takes_both_families() -> None:
    if not ipv6_available():
        pytest.skip("no IPv6 loopback")

    async def main() -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        gateway = await start_demo_gateway(sock=sock)
        try:
            assert gateway.host == "::"
            async with httpx.AsyncClient() as client:
                v4 = (await client.get(f"http://127.0.0.1:{gateway.port}/")).json()
                v6 = (await client.get(f"http://[::1]:{gateway.port}/")).json()
            assert v4["peer"]["host"] == "::ffff:127.0.0.1"  # as the socket saw it
            assert v4["peer"]["family"] == "ipv4"
            assert v6["peer"]["family"] == "ipv6"
        finally:
            await gateway.close()

    asyncio.run(main())


# -- dsproxy demo -------------------------------------------------------------------------------


def test_demo_config_points_the_proxy_at_the_gateway() -> None:
    config = demo_config(HostPort("::", 16980), 40000)
    assert config.server.listen == (HostPort("::", 16980),)
    assert not config.server.ipv6only
    assert [server.url for server in config.upstream.servers] == ["http://127.0.0.1:40000"]
    assert config.admin.listen is None


def test_demo_instructions_for_a_dual_stack_listener() -> None:
    text = demo_instructions([HostPort("::", 16980)], 40000)
    assert "curl -4 http://127.0.0.1:16980/hello" in text
    assert "curl -6 'http://[::1]:16980/hello'" in text
    assert "dsproxy probe http://localhost:16980 --ws /ws" in text
    assert "Ctrl-C" in text


@pytest.mark.parametrize(
    "bound",
    [[HostPort("::", 16980)], [HostPort("127.0.0.1", 8080)], [HostPort("::1", 8080)]],
    ids=["dual-stack", "ipv4", "ipv6"],
)
def test_demo_instructions_run_with_what_the_demo_installs(bound: list[HostPort]) -> None:
    # `pip install '.[speedups]'` gives dsproxy and its dependencies, no websockets CLI
    # (the old `python -m websockets` line failed): only curl and dsproxy commands, and
    # every dsproxy command parses.
    commands = [
        shlex.split(line)
        for line in demo_instructions(bound, 40000).splitlines()
        if line.startswith("  ")
    ]
    assert commands
    for argv in commands:
        assert argv[0] in ("curl", "dsproxy"), argv
        if argv[0] == "dsproxy":
            args = build_parser().parse_args(argv[1:])
            assert args.command == "probe"
            assert args.ws == "/ws"


def test_demo_instructions_for_single_family_listeners() -> None:
    v4 = demo_instructions([HostPort("127.0.0.1", 8080)], 40000)
    assert "curl -4 http://127.0.0.1:8080/hello" in v4
    assert "curl -6" not in v4
    v6 = demo_instructions([HostPort("::1", 8080)], 40000)
    assert "curl -6 'http://[::1]:8080/hello'" in v6
    assert "curl -4" not in v6
    assert "dsproxy probe 'http://[::1]:8080' --ws /ws" in v6


def test_dsproxy_demo_end_to_end() -> None:
    """``demo.main`` in a subprocess: the printed commands work; Ctrl-C (SIGINT) stops it."""
    listen = "HostPort('::', 0)" if ipv6_available() else "HostPort('0.0.0.0', 0)"
    code = (
        "from dsproxy.net.addr import HostPort; from dsproxy.tools.demo import main;"
        f" main({listen})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        deadline = time.monotonic() + TEST_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            printed.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(printed)
        match = re.search(r"curl -4 http://127\.0\.0\.1:(\d+)/hello", text)
        assert match, text
        port = int(match.group(1))

        async def check() -> None:
            async with httpx.AsyncClient() as client:
                seen: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/hello")).json()
                assert seen["target"] == "/hello"
                if "curl -6" in text:
                    v6 = await client.get(f"http://[::1]:{port}/hello")
                    assert v6.status_code == 200
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send("through the proxy")
                assert await ws.recv() == "through the proxy"

        asyncio.run(asyncio.wait_for(check(), TEST_TIMEOUT_SECONDS))
        process.send_signal(signal.SIGINT)
        assert process.wait(TEST_TIMEOUT_SECONDS) in (0, 130)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_description_is_json_with_stable_keys() -> None:
    async def body(gateway: DemoGateway) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(gateway, "/"))
        assert set(json.loads(response.content)) == {
            "method",
            "target",
            "http_version",
            "headers",
            "body_length",
            "body_sha256",
            "peer",
        }

    run_with_gateway("127.0.0.1", body)
