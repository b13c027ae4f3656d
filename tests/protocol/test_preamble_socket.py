"""Protocol tier: ``SocketPreamble`` (proxy/preamble.py), the PROXY header read off a socket.

The stage a TLS listener runs before its handshake. A ``socket.socketpair`` stands in
for the accepted connection (no network): the test writes to one end, the preamble
reads the other on a real event loop, and the test checks what it consumed (exactly
the header: every byte behind it must still be in the socket for the handshake),
what it handed on, and what was counted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from dsproxy.net.addr import HostPort
from dsproxy.proxy.preamble import ClientAddress, SocketPreamble
from fuzz.proxyproto_harness import tlv, v1, v1_unknown, v2
from tests.protocol.test_preamble_fake import CLIENT4, CLIENT6, DEST, DEST6, LB, Rig

# What follows the header on a TLS listener: the start of a ClientHello record.
HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))


class Stage:
    """One accepted connection (a socketpair) and its preamble, on the running loop."""

    def __init__(self, rig: Rig, peer: tuple[Any, ...] = LB) -> None:
        self.rig = rig
        self.client, self.server = socket.socketpair()
        self.server.setblocking(False)
        self.handed: list[tuple[socket.socket, ClientAddress | None]] = []
        self.preamble = SocketPreamble(rig.shared, self.server, peer, self._then)
        self.preamble.start()

    def _then(self, sock: socket.socket, client: ClientAddress | None) -> None:
        self.handed.append((sock, client))

    async def send(self, data: bytes, *, one_by_one: bool = False) -> None:
        pieces = [data[i : i + 1] for i in range(len(data))] if one_by_one else [data]
        for piece in pieces:
            self.client.sendall(piece)
            await asyncio.sleep(0.001)  # the loop runs the reader for each piece
        await asyncio.sleep(0.01)

    def closed(self) -> bool:
        """True when the preamble closed its end (the client reads EOF)."""
        return self.server.fileno() == -1

    def left_in_socket(self) -> bytes:
        self.server.setblocking(True)
        self.server.settimeout(1)
        self.client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := self.server.recv(4096):
            data += chunk
        return data

    def close(self) -> None:
        self.client.close()
        self.server.close()


Runner = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a scenario on asyncio's loop, or on uvloop's (which the proxy runs on)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def runner(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(scenario())

    return runner


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (v1(CLIENT4, DEST), ("203.0.113.7", 51000)),
        (v1(CLIENT6, DEST6), ("2001:db8::7", 51000)),
        (v2(CLIENT4, DEST), ("203.0.113.7", 51000)),
        (v2(CLIENT6, DEST6, tlvs=tlv(0x04, b"x" * 100), checksum=True), ("2001:db8::7", 51000)),
        (v1_unknown(b"whatever follows"), None),  # the socket's peer
        (v2(command=0), None),  # LOCAL
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v2-tcp6-tlvs", "v1-unknown", "v2-local"],
)
@pytest.mark.parametrize("one_by_one", [False, True], ids=["one-write", "byte-by-byte"])
def test_exactly_the_header_is_consumed(
    run: Runner, header: bytes, client: ClientAddress | None, one_by_one: bool
) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig)
        assert rig.shared.connections == {stage.preamble}
        await stage.send(header + HELLO, one_by_one=one_by_one)
        ((sock, address),) = stage.handed
        assert sock is stage.server
        assert sock.fileno() != -1
        assert address == client
        assert stage.left_in_socket() == HELLO  # not one byte of the hello was read
        assert rig.shared.connections == set()  # the next owner counts itself
        assert rig.observer.client_errors == []
        stage.close()

    run(scenario)


def test_a_header_alone_waits_for_nothing_more(run: Runner) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig)
        await stage.send(v2(CLIENT4, DEST))  # the hello is not there yet
        assert [client for _, client in stage.handed] == [("203.0.113.7", 51000)]
        stage.close()

    run(scenario)


def test_peer_outside_the_allowed_networks_is_closed_at_once(run: Runner) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig, ("192.0.2.1", 40000))
        assert stage.closed()
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()
        assert stage.client.recv(10) == b""
        stage.close()

    run(scenario)


@pytest.mark.parametrize(
    "data",
    [
        HELLO,
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n" + HELLO,
        v2(CLIENT4, DEST, version=1) + HELLO,
    ],
    ids=["tls-hello", "http", "v1-mixed-families", "v2-version-1"],
)
def test_a_bad_header_is_refused_as_soon_as_it_shows(run: Runner, data: bytes) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig)
        await stage.send(data[:1] if data[0] == 0x16 else data)  # a hello: its first byte
        assert stage.closed()
        assert stage.handed == []
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()
        stage.close()

    run(scenario)


@pytest.mark.parametrize(
    ("sent", "counted"),
    [(b"", []), (b"\r\n\r\n\x00\r", ["proxy_protocol"])],
    ids=["health-check", "inside-the-header"],
)
def test_the_peer_closing(run: Runner, sent: bytes, counted: list[str]) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig)
        await stage.send(sent)
        stage.client.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.02)
        assert stage.closed()
        assert rig.observer.client_errors == counted
        assert rig.shared.connections == set()
        stage.close()

    run(scenario)


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP6 2001:db8::7 "], ids=["missing", "truncated"])
def test_no_complete_header_within_header_timeout(run: Runner, sent: bytes) -> None:
    async def scenario() -> None:
        rig = Rig(header_timeout=0.05)
        stage = Stage(rig)
        await stage.send(sent)
        assert not stage.closed()
        await asyncio.sleep(0.1)
        assert stage.closed()
        assert rig.observer.client_errors == ["proxy_protocol"]
        assert rig.shared.connections == set()
        stage.close()

    run(scenario)


def test_the_deadline_ends_with_the_header(run: Runner) -> None:
    async def scenario() -> None:
        rig = Rig(header_timeout=0.05)
        stage = Stage(rig)
        await stage.send(v1(CLIENT4, DEST))
        await asyncio.sleep(0.1)
        assert len(stage.handed) == 1
        assert stage.server.fileno() != -1  # the handshake's socket now, left alone
        assert rig.observer.client_errors == []
        stage.close()

    run(scenario)


def test_waiting_stages_count_towards_max_connections_and_a_shutdown_aborts_them(
    run: Runner,
) -> None:
    async def scenario() -> None:
        rig = Rig(max_connections=1, header_timeout=0.05)
        first = Stage(rig)
        assert not first.preamble.close_if_idle()  # a reload lets it finish its header
        second = Stage(rig)
        assert second.closed()
        assert rig.observer.client_errors == ["over_capacity"]
        first.preamble.abort()  # a shutdown's grace ran out: closed, not counted
        assert first.closed()
        assert rig.shared.connections == set()
        assert first.client.recv(10) == b""
        await asyncio.sleep(0.1)  # its deadline was cancelled: nothing more is counted
        assert first.handed == []
        assert rig.observer.client_errors == ["over_capacity"]
        for stage in (first, second):
            stage.close()

    run(scenario)


def test_a_shutdown_waiting_for_the_stage_hears_of_its_hand_over(run: Runner) -> None:
    async def scenario() -> None:
        rig = Rig()
        stage = Stage(rig)
        rig.shared.all_closed = asyncio.Event()  # a shutdown waits for the connections
        await stage.send(v2(HostPort("198.51.100.1", 1), DEST))
        assert rig.shared.all_closed.is_set()  # nobody took its place in this test
        stage.close()

    run(scenario)
