"""Request smuggling corpus: the proxy and a real upstream agree on every request boundary.

Each payload goes over one raw client connection through the running proxy (both
codecs, 127.0.0.1 and ::1) to an upstream that parses with h11 and records every
request it received whole (method, target, headers, body). The client reads every
response until the proxy closes. For each payload:

* the upstream's complete requests are exactly the requests the client got an
  answer for, in order, with the same bodies (every ``200`` echoes what the
  upstream received), and exactly the ones expected;
* a refused payload ends with its status (400, 501) and the connection closes;
* no request whose target contains ``smuggled`` ever reaches the upstream, whole
  or in part.

Families (PortSwigger's names): CL.TE, TE.CL, TE.TE obfuscations, CL.0, requests
pipelined after an error, chunk-size and chunk-extension tricks, LF-only chunk lines,
h2c upgrade attempts. Where the codecs deliberately differ (docs/reliability.md,
"Deliberate codec differences") the expectation is per codec; both are safe.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h11
import pytest

from dsproxy.http.h2codec import HTTP_1_1_REQUIRED
from tests.conftest import LoopThread, ProxyFactory, ResponseReader, RunningProxy, wait_for
from tests.h2client import H2Peer
from tests.upstream_server import Upstream

READ_TIMEOUT_SECONDS = 5.0
LAST = b"GET /echo?last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


# ----------------------------------------------------------------- the recording upstream
@dataclass
class Received:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class RecordingUpstream:
    """An h11 upstream that records each request it received whole and echoes it back."""

    heads: list[bytes] = field(default_factory=list)  # targets of every head seen
    complete: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await self._event(conn, reader)
                if not isinstance(req, h11.Request):
                    break
                self.heads.append(req.target)
                body = bytearray()
                while True:
                    event = await self._event(conn, reader)
                    if isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                got = Received(req.method, req.target, list(req.headers), bytes(body))
                self.complete.append(got)
                echo = json.dumps(
                    {
                        "method": got.method.decode("latin-1"),
                        "target": got.target.decode("latin-1"),
                        "body": got.body.decode("latin-1"),
                    }
                ).encode()
                headers = [("Content-Length", str(len(echo))), ("Content-Type", "text/json")]
                for data in (
                    conn.send(h11.Response(status_code=200, headers=headers)),
                    conn.send(h11.Data(data=echo)),
                    conn.send(h11.EndOfMessage()),
                ):
                    writer.write(data or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    @staticmethod
    async def _event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(65536))


@pytest.fixture
def recorder(loop_thread: LoopThread) -> Iterator[RecordingUpstream]:
    up = RecordingUpstream()
    loop_thread.call(up.start())
    yield up
    loop_thread.call(up.close())


@pytest.fixture
def desync_proxy(proxy_factory: ProxyFactory, recorder: RecordingUpstream) -> RunningProxy:
    return proxy_factory(upstream_port=recorder.port)


# ----------------------------------------------------------------- the corpus
Forwarded = tuple[tuple[bytes, bytes], ...]  # (target, body) the upstream must receive whole


@dataclass(frozen=True)
class Expect:
    forwarded: Forwarded
    status: int | None  # the refusal that ends the connection; None: all answered


@dataclass(frozen=True)
class Payload:
    data: bytes
    expect: Expect | dict[str, Expect]  # per codec where they deliberately differ
    half_close: bool = False  # send FIN after the payload (a body that never ends)

    def expected(self, parser: str) -> Expect:
        return self.expect[parser] if isinstance(self.expect, dict) else self.expect


def post(target: bytes, *fields: bytes) -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in fields)


REFUSED_400 = Expect((), 400)
REFUSED_501 = Expect((), 501)
LAST_OK: Forwarded = ((b"/echo?last", b""),)

PAYLOADS: dict[str, Payload] = {
    # CL.TE: the front end uses Content-Length, the back end chunked (or the reverse).
    "cl-te": Payload(
        post(b"/echo?a", b"Content-Length: 6", b"Transfer-Encoding: chunked")
        + b"\r\n0\r\n\r\nG"
        + SMUGGLED,
        REFUSED_400,
    ),
    "te-cl": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked", b"Content-Length: 3")
        + b"\r\n3c\r\n"
        + SMUGGLED
        + b"X: " * 7
        + b"\r\n0\r\n\r\n",
        REFUSED_400,
    ),
    "cl-te-cl-hidden-by-space": Payload(
        post(b"/echo?a", b"Content-Length : 4", b"Transfer-Encoding: chunked")
        + b"\r\n0\r\n\r\n"
        + SMUGGLED,
        REFUSED_400,
    ),
    # TE.TE: a Transfer-Encoding one side does not recognise.
    "te-space-before-colon": Payload(
        post(b"/echo?a", b"Transfer-Encoding : chunked") + b"\r\n0\r\n\r\n" + SMUGGLED,
        REFUSED_400,
    ),
    "te-xchunked": Payload(
        post(b"/echo?a", b"Transfer-Encoding: xchunked") + b"\r\n0\r\n\r\n" + SMUGGLED,
        REFUSED_501,
    ),
    "te-chunked-identity": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked, identity") + b"\r\n0\r\n\r\n" + SMUGGLED,
        REFUSED_501,
    ),
    "te-identity-chunked": Payload(
        post(b"/echo?a", b"Transfer-Encoding: identity, chunked") + b"\r\n0\r\n\r\n" + SMUGGLED,
        REFUSED_501,
    ),
    "te-twice": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: x")
        + b"\r\n0\r\n\r\n"
        + SMUGGLED,
        REFUSED_501,
    ),
    "te-leading-tab": Payload(  # OWS around the value is allowed: plain chunked
        post(b"/echo?a", b"Transfer-Encoding:\tchunked") + b"\r\n5\r\nhello\r\n0\r\n\r\n" + LAST,
        Expect(((b"/echo?a", b"hello"), *LAST_OK), None),
    ),
    "te-upper-case": Payload(
        post(b"/echo?a", b"Transfer-Encoding: CHUNKED") + b"\r\n5\r\nhello\r\n0\r\n\r\n" + LAST,
        Expect(((b"/echo?a", b"hello"), *LAST_OK), None),
    ),
    "te-trailing-tab": Payload(  # D11
        post(b"/echo?a", b"Transfer-Encoding: chunked\t") + b"\r\n5\r\nhello\r\n0\r\n\r\n" + LAST,
        {
            "h11": Expect(((b"/echo?a", b"hello"), *LAST_OK), None),
            "httptools": REFUSED_400,
        },
    ),
    "te-obs-fold": Payload(  # D3: h11 unfolds (no TE), so the "body" is a bad next request
        post(b"/echo?a", b"X: y", b" Transfer-Encoding: chunked")
        + b"\r\n5\r\nhello\r\n0\r\n\r\n"
        + SMUGGLED,
        {"h11": Expect(((b"/echo?a", b""),), 400), "httptools": REFUSED_400},
    ),
    "te-vertical-tab": Payload(
        post(b"/echo?a", b"Transfer-Encoding: \x0bchunked") + b"\r\n0\r\n\r\n" + SMUGGLED,
        REFUSED_400,  # a CTL in a field value (h11) or an unknown coding (llhttp)
    ),
    # Content-Length tricks.
    "cl-duplicate-same": Payload(  # D1
        post(b"/echo?a", b"Content-Length: 5", b"Content-Length: 5") + b"\r\nhello" + LAST,
        {"h11": Expect(((b"/echo?a", b"hello"), *LAST_OK), None), "httptools": REFUSED_400},
    ),
    "cl-duplicate-differ": Payload(
        post(b"/echo?a", b"Content-Length: 5", b"Content-Length: 35") + b"\r\nhello" + SMUGGLED,
        REFUSED_400,
    ),
    "cl-signed": Payload(
        post(b"/echo?a", b"Content-Length: +5") + b"\r\nhello" + SMUGGLED, REFUSED_400
    ),
    "cl-negative": Payload(
        post(b"/echo?a", b"Content-Length: -1") + b"\r\n" + SMUGGLED, REFUSED_400
    ),
    "cl-hex": Payload(
        post(b"/echo?a", b"Content-Length: 0x5") + b"\r\nhello" + SMUGGLED, REFUSED_400
    ),
    "cl-space-inside": Payload(
        post(b"/echo?a", b"Content-Length: 1 5") + b"\r\nhello" + SMUGGLED, REFUSED_400
    ),
    "cl-huge": Payload(
        post(b"/echo?a", b"Content-Length: 99999999999999999999999") + b"\r\n" + SMUGGLED,
        REFUSED_400,
    ),
    # CL.0: a body the back end might ignore; the proxy forwards it as the body.
    "cl-0-get-with-body": Payload(
        b"GET /echo?a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED
        + LAST,
        Expect(((b"/echo?a", SMUGGLED), *LAST_OK), None),
    ),
    # Pipelined requests after an error are never forwarded.
    "pipelined-after-error": Payload(
        b"GET /echo?first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo?bad HTTP/1.1\r\nHost : x\r\n\r\n" + SMUGGLED,
        Expect(((b"/echo?first", b""),), 400),
    ),
    "pipelined-after-bad-chunk": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked") + b"\r\n5\r\nhelloXX0\r\n\r\n" + SMUGGLED,
        REFUSED_400,
    ),
    "pipelined-legit": Payload(
        post(b"/echo?a", b"Content-Length: 3") + b"\r\nabc"
        b"GET /echo?b HTTP/1.1\r\nHost: x\r\n\r\n" + LAST,
        Expect(((b"/echo?a", b"abc"), (b"/echo?b", b""), *LAST_OK), None),
    ),
    # Chunk-size and chunk-extension tricks.
    "chunk-size-0x": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b"\r\n0x5\r\nhello\r\n0\r\n\r\n"
        + SMUGGLED,
        REFUSED_400,
    ),
    "chunk-size-negative": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b"\r\n-5\r\nhello\r\n0\r\n\r\n"
        + SMUGGLED,
        REFUSED_400,
    ),
    "chunk-size-overflow": Payload(  # D9: 2**80-1 is a huge chunk for h11, an error for llhttp
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b"\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
        + SMUGGLED,
        {"h11": Expect((), None), "httptools": REFUSED_400},
        half_close=True,
    ),
    "chunk-size-leading-zeros": Payload(  # D8
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b"\r\n"
        + b"0" * 30
        + b"5\r\nhello\r\n0\r\n\r\n"
        + LAST,
        {"h11": REFUSED_400, "httptools": Expect(((b"/echo?a", b"hello"), *LAST_OK), None)},
    ),
    "chunk-size-wraps-64-bits": Payload(  # 2**64 + 5: a parser keeping 64 bits reads 5
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b"\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"
        + SMUGGLED,
        {"h11": Expect((), None), "httptools": REFUSED_400},
        half_close=True,
    ),
    "chunk-data-overrun": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked") + b"\r\n3\r\nabc" + SMUGGLED,
        REFUSED_400,
    ),
    "chunk-extension": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b'\r\n5;a=b;q="x y"\r\nhello\r\n0;z\r\nX-T: 1\r\n\r\n'
        + LAST,
        Expect(((b"/echo?a", b"hello"), *LAST_OK), None),
    ),
    "chunk-extension-quoted-crlf": Payload(
        post(b"/echo?a", b"Transfer-Encoding: chunked")
        + b'\r\n5;a="\r\n0\r\n\r\n'
        + SMUGGLED
        + b'"\r\nhello\r\n0\r\n\r\n',
        REFUSED_400,
    ),
    "chunk-lf-only": Payload(  # h11 waits for a CRLF that never comes (400 at EOF); llhttp: 400
        post(b"/echo?a", b"Transfer-Encoding: chunked") + b"\r\n5\nhello\n0\n\n" + SMUGGLED,
        REFUSED_400,
        half_close=True,
    ),
    "chunk-lf-only-last": Payload(  # D2: a bare LF ending the trailer section
        post(b"/echo?a", b"Transfer-Encoding: chunked") + b"\r\n5\r\nhello\r\n0\r\n\n" + LAST,
        {"h11": Expect(((b"/echo?a", b"hello"), *LAST_OK), None), "httptools": REFUSED_400},
    ),
    # Upgrade: only WebSocket is honoured; an h2c upgrade is a plain request.
    "h2c-upgrade": Payload(
        b"GET /echo?h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Expect(((b"/echo?h2c", b""),), 400),
    ),
    "h2c-upgrade-smuggles-request": Payload(
        b"GET /echo?h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + LAST,
        Expect(((b"/echo?h2c", b""), *LAST_OK), None),
    ),
    "nul-in-header": Payload(b"GET /echo?a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", REFUSED_400),
    "bare-cr-in-header": Payload(
        b"GET /echo?a HTTP/1.1\r\nHost: x\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n", REFUSED_400
    ),
}


# ----------------------------------------------------------------- the check
def read_all(sock: socket.socket) -> tuple[list[tuple[int, dict[str, str] | None]], bool]:
    """Every response until the proxy closes: (status, the echo of a 200) and closed."""
    reader = ResponseReader(sock)
    out: list[tuple[int, dict[str, str] | None]] = []
    while True:
        try:
            resp = reader.read()
        except (ConnectionError, h11.RemoteProtocolError):  # closed: no (more) response
            return out, reader.closed and not reader.buf
        echo = json.loads(resp.body) if resp.status == 200 and resp.body[:1] == b"{" else None
        out.append((resp.status, echo))


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_desync_payload(
    desync_proxy: RunningProxy, recorder: RecordingUpstream, parser: str, case: str
) -> None:
    payload = PAYLOADS[case]
    expect = payload.expected(parser)
    with desync_proxy.connect(timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(payload.data)
        if payload.half_close:
            sock.shutdown(socket.SHUT_WR)
        responses, closed = read_all(sock)
    assert closed, "the proxy left the connection open"
    # Every answered request is one the upstream received whole, and nothing more:
    # same boundaries, same bodies, same order.
    answered = [
        (e["target"].encode("latin-1"), e["body"].encode("latin-1")) for s, e in responses if e
    ]
    wait_for(lambda: len(recorder.complete) >= len(answered), timeout=2)
    time.sleep(0.05)  # a request forwarded late (it must not be) would show up by now
    received = [(r.target, r.body) for r in recorder.complete]
    assert received == answered
    assert tuple(received) == expect.forwarded
    statuses = [s for s, _ in responses]
    if expect.status is None:
        assert statuses == [200] * len(expect.forwarded)
    else:
        assert statuses == [200] * len(expect.forwarded) + [expect.status]
    assert not any(b"smuggled" in target for target in recorder.heads)
    for request in recorder.complete:  # hop-by-hop, h2c and framing tricks end here
        names = {name for name, _ in request.headers}
        assert not names & {b"upgrade", b"http2-settings", b"te"}
        te = [v for n, v in request.headers if n == b"transfer-encoding"]
        assert te in ([], [b"chunked"])


def test_http2_preface_without_h2c_is_told_http_1_1_required(
    desync_proxy: RunningProxy, recorder: RecordingUpstream
) -> None:
    """Not an HTTP/1.1 400 a client would read as garbage: SETTINGS, then GOAWAY."""
    with desync_proxy.connect(timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED)
        answer = ResponseReader(sock).read_until_close()
    peer = H2Peer()
    peer.feed(answer)
    assert peer.goaway_codes() == [HTTP_1_1_REQUIRED]
    time.sleep(0.05)
    assert recorder.heads == []


# ----------------------------------------------------------------- bugs found here
def test_bytes_behind_a_close_request_in_a_later_segment(
    proxy: RunningProxy, upstream: Upstream, parser: str, request: pytest.FixtureRequest
) -> None:
    """A request that closes the connection, then more bytes while its response is due.

    The upstream received the request: the client must get its response, not a 400
    (the bytes behind are never served: the connection closes after the response).
    """
    with proxy.connect(timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"GET /slow?delay=0.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert wait_for(lambda: upstream.count("GET", "/slow") == 1)
        sock.sendall(b"GET /echo?behind HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, closed = read_all(sock)
    assert closed
    assert [status for status, _ in responses] == [200]
    assert upstream.count("GET", "/echo") == 0


@pytest.fixture
def raw_upstream(loop_thread: LoopThread) -> Iterator[RawUpstream]:
    up = RawUpstream()
    loop_thread.call(up.start())
    yield up
    loop_thread.call(up.close())


@dataclass
class RawUpstream:
    """Answers every request head with ``response``, byte for byte, then waits for EOF."""

    response: bytes = b""
    server: asyncio.Server | None = None
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.response)
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


def test_nul_in_the_upstream_reason_phrase_is_never_forwarded(
    proxy_factory: ProxyFactory,
    raw_upstream: RawUpstream,
    parser: str,
    request: pytest.FixtureRequest,
) -> None:
    """RFC 9112 §4: a reason phrase is HTAB / SP / VCHAR / obs-text; a NUL must not reach
    the client (h11 refuses the response: 502)."""
    raw_upstream.response = b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok"
    proxy = proxy_factory(upstream_port=raw_upstream.port)
    with proxy.connect(timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = ResponseReader(sock)
        data = reader.read_until_close()
    status_line = data.split(b"\r\n", 1)[0]
    assert b"\x00" not in status_line
    assert status_line.startswith(b"HTTP/1.1 502 ")
