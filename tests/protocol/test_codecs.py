"""Both codecs against the same expectations: parse, pipeline, upgrade, errors, encode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsproxy.errors import ClientError, UpstreamError
from dsproxy.http.codec import get_codec
from dsproxy.http.codec.base import (
    ClientCodec,
    CodecFactory,
    Headers,
    RequestHead,
    ResponseHead,
    ServerCodec,
)
from dsproxy.http.codec.httptools_codec import PASS_BODY_MIN_BYTES

CODECS = ["h11", "httptools"]
MAX_HEAD = 16384

Event = tuple[str, object]


class Recorder:
    """Records events from either side as comparable tuples."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.heads: list[RequestHead | ResponseHead] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.events.append(("head", head.target))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self, trailers: Headers) -> None:
        self.events.append(("end", trailers))

    def on_response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)
        self.events.append(("head", head.status))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self, trailers: Headers) -> None:
        self.events.append(("end", trailers))

    def body(self) -> bytes:
        return b"".join(d for k, d in self.events if k == "body")  # type: ignore[misc]

    def kinds(self) -> list[str]:
        """Event kinds with consecutive body pieces merged."""
        out: list[str] = []
        for kind, _ in self.events:
            if not (kind == "body" and out and out[-1] == "body"):
                out.append(kind)
        return out


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> CodecFactory:
    return get_codec(request.param)


def feed_server(codec: CodecFactory, data: bytes, *, bytewise: bool = False) -> Recorder:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    if bytewise:
        for i in range(len(data)):
            server.feed(data[i : i + 1])
    else:
        server.feed(data)
    return rec


def respond(server: ServerCodec, status: int = 200) -> bytes:
    """Finish the current response so the server codec may start the next cycle."""
    out = server.encode_response_head(status, b"", [(b"Content-Length", b"0")], chunked=False)
    return out + server.encode_end([])


def next_cycle(server: ServerCodec, status: int = 200) -> None:
    respond(server, status)
    server.start_next_cycle()


def client_for(
    codec: CodecFactory, method: bytes = b"GET", headers: Headers | None = None
) -> tuple[Recorder, ClientCodec]:
    rec = Recorder()
    client = codec.client(rec)
    headers = headers or [(b"Host", b"up")]
    upgrade = any(name.lower() == b"upgrade" for name, _ in headers)
    client.encode_request_head(method, b"/", headers, chunked=False, upgrade=upgrade)
    client.encode_end([])
    return rec, client


# -- server: parsing --------------------------------------------------------


def test_simple_get(codec: CodecFactory) -> None:
    rec = feed_server(codec, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rec.events == [("head", b"/a"), ("end", [])]
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.version, head.keep_alive) == (b"GET", b"1.1", True)
    assert (head.content_length, head.chunked, head.upgrade, head.expect_continue) == (
        None,
        False,
        None,
        False,
    )


def test_target_byte_exact_and_header_case_kept(codec: CodecFactory) -> None:
    target = b"/p/a%20b?x=1&y=%2F&z=a+b;c#f"[:-2]
    rec = feed_server(
        codec,
        b"GET " + target + b" HTTP/1.1\r\nhOsT: x\r\nX-MiXeD: Va Lue\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n",
    )
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert head.target == target
    assert head.headers == [
        (b"hOsT", b"x"),
        (b"X-MiXeD", b"Va Lue"),
        (b"Expect", b"100-continue"),
        (b"Connection", b"close"),
    ]
    assert head.expect_continue
    assert not head.keep_alive


def test_http10_is_not_kept_alive(codec: CodecFactory) -> None:
    rec = feed_server(codec, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert (head.version, head.keep_alive) == (b"1.0", False)


POST_CL = b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"


@pytest.mark.parametrize("bytewise", [False, True])
def test_content_length_body(codec: CodecFactory, bytewise: bool) -> None:
    rec = feed_server(codec, POST_CL, bytewise=bytewise)
    assert rec.kinds() == ["head", "body", "end"]
    assert rec.body() == b"hello world"
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert head.content_length == 11


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(POST_CL)), max_size=5))
def test_content_length_any_split(cuts: list[int]) -> None:
    for name in CODECS:
        codec = get_codec(name)
        rec = Recorder()
        server = codec.server(rec, max_header_bytes=MAX_HEAD)
        points = [0, *sorted(cuts), len(POST_CL)]
        for a, b in zip(points, points[1:], strict=False):
            if a != b:  # a transport never delivers b"" (h11 reads it as EOF)
                server.feed(POST_CL[a:b])
        assert rec.kinds() == ["head", "body", "end"], name
        assert rec.body() == b"hello world", name


BIG_BODY = bytes(range(256)) * 300 + b"end"  # over PASS_BODY_MIN_BYTES
POST_BIG = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BIG_BODY),
    BIG_BODY,
)
assert len(BIG_BODY) > PASS_BODY_MIN_BYTES


@pytest.mark.parametrize(
    "cuts", [[], [20], [60], [60, 61, 9000], [len(POST_BIG) - 1], [50_000, 70_000]]
)
def test_large_request_body_any_split(codec: CodecFactory, cuts: list[int]) -> None:
    """httptools hands most of a large body on unparsed; what the handler sees is the same."""
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    data = POST_BIG + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    points = [0, *cuts, len(data)]
    for a, b in zip(points, points[1:], strict=False):
        server.feed(data[a:b])
    assert rec.kinds() == ["head", "body", "end"]
    assert rec.body() == BIG_BODY
    next_cycle(server)  # the pipelined request behind the body parses afresh
    assert rec.events[-2:] == [("head", b"/next"), ("end", [])]


def test_httptools_hands_large_bodies_on_uncopied() -> None:
    """The point of the bypass: body bytes reach the handler as the very objects read."""
    codec = get_codec("httptools")
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    head_end = POST_BIG.index(b"\r\n\r\n") + 4
    server.feed(POST_BIG[: head_end + 10])
    piece = POST_BIG[head_end + 10 : head_end + 40_000]
    server.feed(piece)
    assert rec.events[-1][1] is piece
    resp_rec, client = client_for(codec)
    data, _ = large_response()
    client.feed(data[:100])
    piece = data[100:40_000]
    client.feed(piece)
    assert resp_rec.events[-1][1] is piece


def test_large_request_body_cut_is_not_clean(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(POST_BIG[:100])
    server.feed(POST_BIG[100:-10])
    assert rec.kinds() == ["head", "body"]
    assert server.feed_eof() is False


CHUNKED = (
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: 42\r\n\r\n"
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_chunked_with_extensions_and_trailers(codec: CodecFactory, bytewise: bool) -> None:
    rec = feed_server(codec, CHUNKED, bytewise=bytewise)
    assert rec.kinds() == ["head", "body", "end"]
    assert rec.body() == b"hello world"
    assert rec.events[-1] == ("end", [(b"X-Check", b"42")])
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert head.chunked


def test_pipelined_requests_one_at_a_time(codec: CodecFactory) -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(data)
    assert rec.events == [("head", b"/1"), ("end", [])]
    assert not server.head_in_progress
    next_cycle(server)
    assert rec.events[2:] == [("head", b"/2"), ("body", b"abc"), ("end", [])]
    next_cycle(server)
    assert rec.events[5:] == [("head", b"/3"), ("end", [])]
    next_cycle(server)
    assert len(rec.events) == 7
    assert server.feed_eof() is True


def test_pipelined_bytes_arriving_while_waiting(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HT")
    server.feed(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert rec.events == [("head", b"/1"), ("end", [])]
    next_cycle(server)
    assert rec.events[2:] == [("head", b"/2"), ("end", [])]


def test_head_in_progress_and_eof(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    assert not server.head_in_progress
    server.feed(b"GET / HTTP/1.1\r\nHo")
    assert server.head_in_progress
    server.feed(b"st: x\r\n\r\n")
    assert not server.head_in_progress
    next_cycle(server)
    assert server.feed_eof() is True


def test_eof_mid_body_is_not_clean(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(POST_CL[:-3])
    assert server.feed_eof() is False


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_then_switch_returns_trailing_bytes(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(UPGRADE + b"\x81\x05hel")
    server.feed(b"lo")
    assert rec.events == [("head", b"/ws"), ("end", [])]
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert head.upgrade == b"websocket"
    assert server.switch_protocols() == b"\x81\x05hello"


def test_upgrade_with_body_delivers_body_first(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    data = UPGRADE[:-2] + b"Content-Length: 3\r\n\r\nabcRAW"
    server.feed(data)
    assert rec.events == [("head", b"/ws"), ("body", b"abc"), ("end", [])]
    assert server.switch_protocols() == b"RAW"


def test_upgrade_with_chunked_body(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    data = UPGRADE[:-2] + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\nRAW"
    server.feed(data)
    assert rec.kinds() == ["head", "body", "end"]
    assert rec.body() == b"abc"
    assert rec.events[-1] == ("end", [(b"T", b"1")])
    assert server.switch_protocols() == b"RAW"


def test_upgrade_refused_then_next_request_parses(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(UPGRADE + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rec.events == [("head", b"/ws"), ("end", [])]
    next_cycle(server, 400)
    assert rec.events[2:] == [("head", b"/next"), ("end", [])]


# -- server: errors ----------------------------------------------------------

ERRORS = {
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "cl_and_te": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "cl_conflict": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "cl_not_number": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
    "te_gzip": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te_gzip_chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "te_chunked_gzip": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        501,
    ),
    "bad_chunk_size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
        400,
    ),
    "bad_chunk_end": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
        400,
    ),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    "bare_cr_in_value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    "space_before_colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "no_host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "http2_preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "http09": (b"GET /\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
@pytest.mark.parametrize("bytewise", [False, True])
def test_request_errors(codec: CodecFactory, case: str, bytewise: bool) -> None:
    data, status = ERRORS[case]
    with pytest.raises(ClientError) as info:
        feed_server(codec, data, bytewise=bytewise)
    assert info.value.status == status


def big_head(size: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_oversized_head_is_431(codec: CodecFactory, bytewise: bool) -> None:
    with pytest.raises(ClientError) as info:
        feed_server(codec, big_head(MAX_HEAD + 10), bytewise=bytewise)
    assert info.value.status == 431


def test_many_headers_is_431(codec: CodecFactory) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-H: 0123456789\r\n" * 2000 + b"\r\n"
    with pytest.raises(ClientError) as info:
        feed_server(codec, data)
    assert info.value.status == 431


def test_head_under_limit_passes(codec: CodecFactory) -> None:
    rec = feed_server(codec, big_head(MAX_HEAD - 200), bytewise=False)
    assert rec.kinds() == ["head", "end"]


def test_pipelined_error_waits_for_its_turn(codec: CodecFactory) -> None:
    rec = Recorder()
    server = codec.server(rec, max_header_bytes=MAX_HEAD)
    server.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert rec.events == [("head", b"/1"), ("end", [])]
    with pytest.raises(ClientError) as info:
        next_cycle(server)
    assert info.value.status == 400


# -- client: parsing ----------------------------------------------------------


def test_response_with_content_length(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Ca: Se\r\n\r\nok")
    assert rec.events == [("head", 200), ("body", b"ok"), ("end", [])]
    head = rec.heads[0]
    assert isinstance(head, ResponseHead)
    assert (head.reason, head.version, head.keep_alive) == (b"OK", b"1.1", True)
    assert head.headers == [(b"Content-Length", b"2"), (b"X-Ca", b"Se")]


def test_head_response_has_no_body_then_next_parses(codec: CodecFactory) -> None:
    rec, client = client_for(codec, b"HEAD")
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
    assert rec.events == [("head", 200), ("end", [])]
    client.start_next_cycle()
    client.encode_request_head(b"GET", b"/", [(b"Host", b"up")], chunked=False)
    client.encode_end([])
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert rec.events[2:] == [("head", 200), ("body", b"abc"), ("end", [])]


def test_informational_then_final(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    client.feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert rec.events == [("head", 100), ("head", 103), ("head", 200), ("body", b"x"), ("end", [])]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(codec: CodecFactory, status: int) -> None:
    rec, client = client_for(codec)
    extra = b"Content-Length: 7\r\n" if status == 304 else b""
    client.feed(b"HTTP/1.1 %d X\r\n%s\r\n" % (status, extra))
    assert rec.events == [("head", status), ("end", [])]
    head = rec.heads[0]
    assert isinstance(head, ResponseHead)
    assert head.keep_alive


def test_close_delimited_response(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    client.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    client.feed(b" data")
    assert rec.kinds() == ["head", "body"]
    head = rec.heads[0]
    assert isinstance(head, ResponseHead)
    assert not head.keep_alive
    client.feed_eof()
    assert rec.body() == b"some data"
    assert rec.events[-1] == ("end", [])


def test_chunked_response_with_trailers(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    client.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: v\r\n\r\n"
    )
    assert rec.body() == b"abcd"
    assert rec.events[-1] == ("end", [(b"T", b"v")])


def test_connection_close_response(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    client.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    head = rec.heads[0]
    assert isinstance(head, ResponseHead)
    assert not head.keep_alive


def test_101_switch_returns_bytes_behind(codec: CodecFactory) -> None:
    rec, client = client_for(
        codec, headers=[(b"Host", b"up"), (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
    )
    client.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW"
    )
    assert rec.events == [("head", 101)]
    assert client.switch_protocols() == b"RAW"


def test_101_without_upgrade_headers(codec: CodecFactory) -> None:
    rec, client = client_for(
        codec, headers=[(b"Host", b"up"), (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
    )
    client.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\nRAW")
    assert rec.events == [("head", 101)]
    assert client.switch_protocols() == b"RAW"


# -- client: large Content-Length bodies (httptools passes them by, unparsed) -----

LARGE = PASS_BODY_MIN_BYTES + 12345  # over the httptools codec's threshold


def large_response(size: int = LARGE, extra: bytes = b"") -> tuple[bytes, bytes]:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Big: 1\r\n\r\n" % size
    return head + body + extra, body


@pytest.mark.parametrize("cuts", [[], [10], [60], [60, 61, 5000], [LARGE], [LARGE + 50]])
def test_large_body_any_split(codec: CodecFactory, cuts: list[int]) -> None:
    """The body arrives whole and exact however the reads fall, then the next cycle parses."""
    handler = ReentrantHandler()
    client = codec.client(handler)
    handler.codec = client
    client.encode_request_head(b"GET", b"/big", [(b"Host", b"up")], chunked=False)
    client.encode_end([])
    data, body = large_response()
    start = 0
    for cut in [*cuts, len(data)]:
        client.feed(data[start:cut])
        start = cut
    assert handler.events[0] == ("head", 200)
    assert handler.events[-1] == "end"
    pieces = [e[1] for e in handler.events if isinstance(e, tuple) and e[0] == "body"]
    assert b"".join(pieces) == body
    client.encode_request_head(b"GET", b"/small", [(b"Host", b"up")], chunked=False)
    client.encode_end([])
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert handler.events[-3:] == [("head", 200), ("body", b"ok"), "end"]


@pytest.mark.parametrize("size", [3, LARGE])
def test_bytes_behind_a_response_refuse_the_next_cycle(codec: CodecFactory, size: int) -> None:
    """An upstream that answers more than it was asked: the connection is not reused."""
    rec, client = client_for(codec)
    data, body = large_response(size, extra=b"HTTP/1.1 204 No Content\r\n\r\n")

    def deliver() -> None:  # the error comes from feed or, at the latest, the next cycle
        client.feed(data)
        client.start_next_cycle()

    with pytest.raises(UpstreamError) as info:
        deliver()
    assert info.value.kind == "protocol"
    assert rec.kinds() == ["head", "body", "end"]  # the response itself was whole
    assert rec.body() == body


def test_large_body_after_informational(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    data, body = large_response()
    client.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + data[:100])
    client.feed(data[100:])
    assert rec.kinds() == ["head", "head", "body", "end"]
    assert [h.status for h in rec.heads] == [103, 200]  # type: ignore[union-attr]
    assert rec.body() == body


@pytest.mark.parametrize("status", [204, 304])
def test_large_content_length_without_body(codec: CodecFactory, status: int) -> None:
    """A 304 states the length it would have had: no body follows, the cycle ends."""
    rec, client = client_for(codec)
    client.feed(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, LARGE))
    assert rec.events == [("head", status), ("end", [])]


def test_large_body_cut_by_eof_is_reset(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    data, _ = large_response()
    client.feed(data[: len(data) // 2])
    assert rec.kinds() == ["head", "body"]
    with pytest.raises(UpstreamError) as info:
        client.feed_eof()
    assert info.value.kind == "reset"
    assert rec.kinds() == ["head", "body"]  # never ended: the proxy aborts the client


def test_endless_response_head_is_refused(codec: CodecFactory) -> None:
    """A head that never ends is not buffered without bound (16 KiB, h11's default)."""
    _, client = client_for(codec)
    client.feed(b"HTTP/1.1 200 OK\r\n")
    fed = 0

    def feed_fields() -> None:
        nonlocal fed
        for i in range(100):
            client.feed(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000))
            fed += 1

    with pytest.raises(UpstreamError) as info:
        feed_fields()
    assert info.value.kind == "protocol"
    assert fed < 20  # refused soon after 16 KiB, not after the 100 KB sent


def test_large_complete_response_head_passes(codec: CodecFactory) -> None:
    rec, client = client_for(codec)
    fields = b"".join(b"X-F-%d: %s\r\n" % (i, b"v" * 100) for i in range(100))  # ~10 KiB
    client.feed(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
    assert rec.kinds() == ["head", "body", "end"]


RESPONSE_ERRORS = {
    "garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "cl_conflict": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "bad_chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    "te_gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(RESPONSE_ERRORS))
def test_response_errors(codec: CodecFactory, case: str) -> None:
    _, client = client_for(codec)
    with pytest.raises(UpstreamError) as info:
        client.feed(RESPONSE_ERRORS[case])
    assert info.value.kind == "protocol"


@pytest.mark.parametrize(
    "data",
    [b"", b"HTTP/1.1 200 OK\r\nCont", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"],
)
def test_upstream_closed_mid_response_is_reset(codec: CodecFactory, data: bytes) -> None:
    _, client = client_for(codec)
    if data:
        client.feed(data)
    with pytest.raises(UpstreamError) as info:
        client.feed_eof()
    assert info.value.kind == "reset"


# -- encoding round trips (every encoder against every parser) ---------------

PAIRS = [(a, b) for a in CODECS for b in CODECS]


@pytest.mark.parametrize(("encoder", "parser"), PAIRS)
@pytest.mark.parametrize("chunked", [False, True])
def test_request_round_trip(encoder: str, parser: str, chunked: bool) -> None:
    sink = Recorder()
    client = get_codec(encoder).client(sink)
    framing = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"11")
    wire = client.encode_request_head(
        b"PUT", b"/r?q=%41", [(b"Host", b"up"), (b"X-Case", b"V"), framing], chunked=chunked
    )
    for piece in (b"hello", b"", b" world"):
        wire += b"".join(client.encode_body(piece))
    trailers = [(b"X-Sum", b"1")] if chunked else []
    wire += client.encode_end(trailers)
    rec = feed_server(get_codec(parser), wire)
    assert rec.kinds() == ["head", "body", "end"]
    assert rec.body() == b"hello world"
    assert rec.events[-1] == ("end", trailers)
    head = rec.heads[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.chunked) == (b"PUT", b"/r?q=%41", chunked)
    assert (b"X-Case", b"V") in head.headers


@pytest.mark.parametrize(("encoder", "parser"), PAIRS)
@pytest.mark.parametrize("chunked", [False, True])
def test_response_round_trip(encoder: str, parser: str, chunked: bool) -> None:
    server = get_codec(encoder).server(Recorder(), max_header_bytes=MAX_HEAD)
    server.feed(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
    framing = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"11")
    wire = server.encode_informational(100, b"", [])
    wire += server.encode_response_head(200, b"", [(b"X-Case", b"V"), framing], chunked=chunked)
    for piece in (b"hello", b"", b" world"):
        wire += b"".join(server.encode_body(piece))
    trailers = [(b"X-Sum", b"1")] if chunked else []
    wire += server.encode_end(trailers)
    rec, client = client_for(get_codec(parser))
    client.feed(wire)
    assert rec.kinds() == ["head", "head", "body", "end"]
    assert rec.body() == b"hello world"
    assert rec.events[-1] == ("end", trailers)
    final = rec.heads[1]
    assert isinstance(final, ResponseHead)
    assert (final.status, final.chunked) == (200, chunked)
    assert final.reason in (b"OK", b"")  # an empty reason is allowed (RFC 9112 §4)


def test_encoders_write_heads_verbatim() -> None:
    server = get_codec("httptools").server(Recorder(), max_header_bytes=MAX_HEAD)
    head = server.encode_response_head(404, b"Nope", [(b"Content-Length", b"0")], chunked=False)
    assert head == b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n"
    assert server.encode_body(b"x") == (b"x",)
    assert server.encode_end([]) == b""
    head = server.encode_response_head(200, b"", [], chunked=True)
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"
    assert server.encode_body(b"") == ()
    body = b"a" * 26
    pieces = server.encode_body(body)
    assert pieces == (b"1a\r\n", body, b"\r\n")
    assert pieces[1] is body  # framed around, not copied
    assert server.encode_end([(b"T", b"1")]) == b"0\r\nT: 1\r\n\r\n"


class ReentrantHandler:
    """Does what the proxy does: reuses the connection, or switches, from inside callbacks."""

    def __init__(self) -> None:
        self.codec: ClientCodec | None = None
        self.events: list[object] = []

    def on_response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status))
        if head.status == 101 and self.codec is not None:
            self.events.append(("tunnel", self.codec.switch_protocols()))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self, trailers: Headers) -> None:
        self.events.append("end")
        assert self.codec is not None
        self.codec.start_next_cycle()  # the pool takes the connection back right here


def test_next_cycle_started_from_inside_callbacks(codec: CodecFactory) -> None:
    handler = ReentrantHandler()
    client = codec.client(handler)
    handler.codec = client
    host = [(b"Host", b"x")]
    client.encode_request_head(b"HEAD", b"/", host, chunked=False)
    client.encode_end([])
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    client.encode_request_head(b"GET", b"/", host, chunked=False)
    client.encode_end([])
    client.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    upgrade = [*host, (b"Upgrade", b"websocket"), (b"Connection", b"upgrade")]
    client.encode_request_head(b"GET", b"/ws", upgrade, chunked=False, upgrade=True)
    client.encode_end([])
    client.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    assert handler.events == [
        ("head", 200),
        "end",
        ("head", 200),
        ("body", b"ok"),
        "end",
        ("head", 101),
        ("tunnel", b"\x81\x02hi"),
    ]
