"""The fast codec on httptools (llhttp, the Node.js parser).

llhttp is a callback parser: it parses every byte it is fed and has no pause
we can reach from Python, no end-of-input call, and no notion of the request
method behind a response. This adapter adds what the codec contract needs:

* Pipelining: once a request has ended, events llhttp parses from the same
  feed are queued (plain tuples) and later feeds are kept as raw bytes; both
  are replayed by ``start_next_cycle()``.
* Upgrade: httptools raises ``HttpParserUpgrade(offset)`` after the head and
  skips any body (its on_headers_complete returns "skip body" on upgrade), so
  a body announced by the head is cut from the bytes behind it here.
* Limits h11 has and llhttp lacks: head size (431), Transfer-Encoding other
  than exactly ``chunked`` (501, as h11), a missing Host on HTTP/1.1 (400,
  RFC 9112 §3.2), HTTP versions other than 1.0/1.1 (400).
* Client side: HEAD responses and a 101 without Upgrade headers stop the
  parser (a fresh one is made for the next cycle); a close-delimited body
  ends at ``feed_eof()``.
* Large Content-Length bodies (``PASS_BODY_MIN_BYTES`` and up) are counted
  off the received bytes and handed on as they are, with no copy by llhttp:
  a bulk transfer costs one copy less per read. A response stops the parser
  after its head; a request's body bypasses it after the read that completed
  the head, and a fresh parser takes the bytes behind the body.

Version and keep-alive follow h11: only HTTP/1.1 without ``Connection:
close`` is reused (h11 does not do HTTP/1.0 keep-alive).
"""

from __future__ import annotations

from collections import deque

import httptools

from dsproxy.errors import ClientError, UpstreamError
from dsproxy.http.codec import wire
from dsproxy.http.codec.base import (
    ClientCodec,
    Headers,
    Pieces,
    RequestHandler,
    RequestHead,
    ResponseHandler,
    ResponseHead,
    ServerCodec,
)

# Queued server events (parsed while the previous request awaits its response).
_BEGIN = 0
_HEAD = 1
_BODY = 2
_END = 3
_ERROR = 4

_HEADER_OVERHEAD = 4  # ": " and CRLF around each field line
_LINE_OVERHEAD = 14  # two spaces, "HTTP/1.1", CRLF, the blank line's CRLF
_HEAD_END = b"\r\n\r\n"
# Bodies of at least this Content-Length bypass llhttp (see the module docstring).
PASS_BODY_MIN_BYTES = 64 * 1024
# A response head still incomplete after this many bytes is refused (llhttp has no
# limit of its own; h11's default max_incomplete_event_size is the same).
RESPONSE_HEAD_MAX_BYTES = 16 * 1024


_NO_TOKENS: tuple[bytes, ...] = ()

# (content_length, chunked, connection tokens, upgrade tokens, expect 100-continue, has Host)
# where chunked is True, False, or the reason to refuse the Transfer-Encoding (h11: 501).
_Framing = tuple[int | None, "bool | str", tuple[bytes, ...], tuple[bytes, ...], bool, bool]


# Connection / Upgrade values seen on nearly every message, already split.
_COMMON_TOKENS: dict[bytes, tuple[bytes, ...]] = {
    v: (v.lower(),) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                              b"Upgrade", b"websocket", b"WebSocket")
}  # fmt: skip


def _tokens(value: bytes) -> tuple[bytes, ...]:
    common = _COMMON_TOKENS.get(value)
    if common is not None:
        return common
    return tuple(t.strip().lower() for t in value.split(b","))


def _framing(headers: Headers) -> _Framing:
    """What a head says about its body and the connection, in one scan of its fields."""
    content_length: int | None = None
    te: bytes | None = None
    te_count = 0
    connection = upgrade = _NO_TOKENS
    expect = host = False
    for name, value in headers:
        n = len(name)
        if n == 4:
            if name.lower() == b"host":
                host = True
        elif n == 14:
            if name.lower() == b"content-length":
                # llhttp already refused non-digits and duplicates.
                content_length = int(value)
        elif n == 17:
            if name.lower() == b"transfer-encoding":
                te = value
                te_count += 1
        elif n == 10:
            if name.lower() == b"connection":
                connection += _tokens(value)
        elif n == 7:
            if name.lower() == b"upgrade":
                upgrade += _tokens(value)
        elif n == 6 and name.lower() == b"expect":
            expect = b"100-continue" in value.lower()
    chunked: bool | str = False  # or why the Transfer-Encoding is refused (h11: 501)
    if te is not None:
        if te_count > 1:
            chunked = "multiple Transfer-Encoding headers"
        elif te.strip().lower() != b"chunked":
            chunked = "Only Transfer-Encoding: chunked is supported"
        else:
            chunked = True
    return content_length, chunked, connection, upgrade, expect, host


def _version(parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bytes:
    v = parser.get_http_version()
    if v == "1.1":
        return b"1.1"
    if v == "1.0":
        return b"1.0"
    return str(v).encode("ascii")


class _ChunkedUpgradeBody:
    """Parses the chunked body of an Upgrade request that llhttp skipped.

    Rare path (a WebSocket handshake has no body): a second parser is fed one
    byte at a time so the end of the body, and so the first tunnel byte, is exact.
    """

    __slots__ = ("parser", "pieces", "trailers", "in_trailers", "done")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.trailers: Headers = []
        self.in_trailers = False
        self.done = False
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")

    def on_headers_complete(self) -> None:
        self.in_trailers = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            self.trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """(body bytes parsed, bytes behind the body or None while unfinished)."""
        feed_data = self.parser.feed_data
        rest: bytes | None = None
        try:
            for i in range(len(data)):
                feed_data(data[i : i + 1])
                if self.done:
                    rest = data[i + 1 :]
                    break
        except httptools.HttpParserError as exc:
            raise ClientError(f"invalid chunked body: {exc}", status=400) from None
        body = b"".join(self.pieces)
        self.pieces.clear()
        return body, rest


class HttptoolsServerCodec(ServerCodec):
    def __init__(self, handler: RequestHandler, *, max_header_bytes: int) -> None:
        self._handler = handler
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        # Parse-side state of the message llhttp is on.
        self._url = b""
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._in_trailers = False
        self._head_size = 0  # head (then trailer) bytes seen through callbacks
        self._head_raw = 0  # bytes fed while this head stays incomplete
        self._parse_in_head = False
        self._ended_in_feed = False
        self._cur_content_length: int | None = None
        self._cur_chunked = False
        self._upgrade_left = 0  # Content-Length body of an Upgrade request still due
        self._body_seen = 0  # body bytes llhttp delivered for the message it is on
        self._pass_left = 0  # body bytes still due that bypass llhttp (see the docstring)
        self._upgrade_chunked: _ChunkedUpgradeBody | None = None
        self._stopped = False  # llhttp stopped after an Upgrade request
        self._tail = b""  # bytes behind that request
        self._error: Exception | None = None
        # Delivery-side state (what the handler has seen).
        self._blocked = False  # a request ended; waiting for start_next_cycle
        self._queue: deque[tuple[int, object]] = deque()
        self._backlog: list[bytes] = []
        self._in_head = False
        self._in_message = False
        self._switched = False
        self._chunked_out = False

    # -- llhttp callbacks (parse time) ------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body_seen = 0
        self._headers = []
        self._trailers = None
        self._in_trailers = False
        self._head_size = 0
        self._head_raw = 0
        self._parse_in_head = True
        if self._blocked:
            self._queue.append((_BEGIN, None))
        else:
            self._in_head = True
            self._in_message = True

    def on_url(self, piece: bytes) -> None:
        self._url += piece
        self._head_size += len(piece)
        if self._head_size > self._max_header_bytes:
            raise ClientError("request head too large", status=431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + _HEADER_OVERHEAD
        if self._head_size > self._max_header_bytes:
            raise ClientError(
                "request trailers too large" if self._in_trailers else "request head too large",
                status=431,
            )
        if self._in_trailers:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method: bytes = parser.get_method()
        self._head_size += len(method) + _LINE_OVERHEAD
        if self._head_size > self._max_header_bytes:
            raise ClientError("request head too large", status=431)
        version = _version(parser)
        if version != b"1.1" and version != b"1.0":
            raise ClientError(f"unsupported HTTP version {version!r}", status=400)
        headers = self._headers
        content_length, chunked, connection, upgrades, expect, host = _framing(headers)
        if chunked.__class__ is str:
            raise ClientError(str(chunked), status=501)
        if chunked and content_length is not None:
            # RFC 9112 §6.1: a proxy forwarding both invites request smuggling.
            raise ClientError("both Content-Length and Transfer-Encoding", status=400)
        if version == b"1.1" and not host:
            raise ClientError("Missing mandatory Host: header", status=400)  # RFC 9112 §3.2
        upgrade = None
        if upgrades and b"upgrade" in connection:
            upgrade = upgrades[0]
        self._cur_content_length = content_length
        self._cur_chunked = chunked is True
        self._parse_in_head = False
        self._in_trailers = True
        self._head_size = 0
        head = RequestHead(
            method,
            self._url,
            version,
            headers,
            version == b"1.1" and b"close" not in connection,  # keep_alive
            content_length,
            chunked is True,
            upgrade,
            expect,  # expect_continue
        )
        if self._blocked:
            self._queue.append((_HEAD, head))
        else:
            self._in_head = False
            self._handler.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        self._emit_body(body)

    def on_message_complete(self) -> None:
        self._ended_in_feed = True
        if self._parser.should_upgrade():
            return  # HttpParserUpgrade follows: _after_upgrade_head ends the message
        trailers = self._trailers
        self._emit_end(trailers if trailers is not None else [])

    # -- delivery ---------------------------------------------------------

    def _emit_body(self, body: bytes) -> None:
        if self._blocked:
            self._queue.append((_BODY, body))
        else:
            self._handler.on_request_body(body)

    def _emit_end(self, trailers: Headers) -> None:
        if self._blocked:
            self._queue.append((_END, trailers))
        else:
            self._in_message = False
            self._blocked = True
            self._handler.on_request_end(trailers)

    def _fail(self, error: Exception) -> None:
        self._error = error
        if self._blocked:
            self._queue.append((_ERROR, error))
        else:
            raise error

    def _replay(self) -> None:
        queue = self._queue
        handler = self._handler
        while queue and not self._blocked:
            kind, payload = queue.popleft()
            if kind == _BODY:
                handler.on_request_body(payload)  # type: ignore[arg-type]
            elif kind == _BEGIN:
                self._in_head = True
                self._in_message = True
            elif kind == _HEAD:
                self._in_head = False
                handler.on_request_head(payload)  # type: ignore[arg-type]
            elif kind == _END:
                self._in_message = False
                self._blocked = True
                handler.on_request_end(payload)  # type: ignore[arg-type]
            else:
                raise payload  # type: ignore[misc]

    # -- parsing ----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._pass_left:
            self._pass_body(data)
            return
        if self._blocked or self._switched:
            if data:
                self._backlog.append(data)
            return
        if self._error is not None:
            raise self._error
        if self._upgrade_left or self._upgrade_chunked is not None:
            self._feed_upgrade_body(data)
        elif self._stopped:
            self._tail += data
        else:
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._ended_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade_head(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                if isinstance(cause, ClientError):
                    self._fail(cause)
                    return
                raise cause from None  # the handler's own exception
            if "`Transfer-Encoding` header value" in str(exc):
                # llhttp refuses "chunked, gzip" and repeated TE fields itself; h11 says 501.
                self._fail(ClientError("Only Transfer-Encoding: chunked is supported", status=501))
            else:
                self._fail(ClientError(f"malformed request: {exc}", status=400))
            return
        if self._parse_in_head and not self._ended_in_feed:
            # llhttp holds a partial field line internally; bound it by what was fed.
            self._head_raw += len(data)
            if self._head_raw > self._max_header_bytes:
                self._fail(ClientError("request head too large", status=431))
        elif (
            self._in_message
            and not self._in_head
            and not self._blocked
            and self._cur_content_length is not None
            and self._cur_content_length - self._body_seen >= PASS_BODY_MIN_BYTES
        ):
            # The handler is in this request's body and much of it is still due.
            self._pass_left = self._cur_content_length - self._body_seen

    def _pass_body(self, data: bytes) -> None:
        """Hand on bytes of a large Content-Length request body without llhttp."""
        left = self._pass_left
        if len(data) < left:
            self._pass_left = left - len(data)
            self._emit_body(data)
            return
        self._pass_left = 0
        # llhttp still waits for the body it never saw: the next request gets a fresh parser.
        self._parser = httptools.HttpRequestParser(self)
        if len(data) > left:
            self._backlog.append(data[left:])  # pipelined: parsed by start_next_cycle
            data = data[:left]
        self._emit_body(data)
        self._emit_end([])

    def _after_upgrade_head(self, tail: bytes) -> None:
        # llhttp skipped the body of this Upgrade (or CONNECT) request.
        if self._cur_chunked:
            self._upgrade_chunked = _ChunkedUpgradeBody()
        elif self._cur_content_length:
            self._upgrade_left = self._cur_content_length
        self._feed_upgrade_body(tail)

    def _feed_upgrade_body(self, data: bytes) -> None:
        trailers: Headers = []
        sub = self._upgrade_chunked
        if sub is not None:
            try:
                body, rest = sub.feed(data)
            except ClientError as exc:
                self._fail(exc)
                return
            if body:
                self._emit_body(body)
            if rest is None:
                return
            self._upgrade_chunked = None
            trailers = sub.trailers
            data = rest
        elif self._upgrade_left:
            left = self._upgrade_left
            if len(data) < left:
                self._upgrade_left = left - len(data)
                if data:
                    self._emit_body(data)
                return
            self._upgrade_left = 0
            self._emit_body(data[:left])
            data = data[left:]
        # The request is over: stop HTTP parsing before telling anyone.
        self._stopped = True
        self._tail = data
        self._emit_end(trailers)

    def feed_eof(self) -> bool:
        return not self._blocked and not self._in_message

    @property
    def head_in_progress(self) -> bool:
        return self._in_head

    def start_next_cycle(self) -> None:
        self._blocked = False
        self._replay()
        if self._blocked:
            return
        backlog = self._backlog
        if self._stopped:
            # The upgrade was refused: the bytes behind the request are HTTP again.
            self._stopped = False
            self._parser = httptools.HttpRequestParser(self)
            if self._tail:
                backlog.insert(0, self._tail)
                self._tail = b""
        if backlog:
            data = backlog[0] if len(backlog) == 1 else b"".join(backlog)
            backlog.clear()
            self.feed(data)

    def switch_protocols(self) -> bytes:
        self._switched = True
        data = self._tail + b"".join(self._backlog)
        self._tail = b""
        self._backlog.clear()
        return data

    # -- encoding ---------------------------------------------------------

    def encode_informational(self, status: int, reason: bytes, headers: Headers) -> bytes:
        return wire.status_head(status, reason, headers)

    def encode_response_head(
        self, status: int, reason: bytes, headers: Headers, *, chunked: bool
    ) -> bytes:
        self._chunked_out = chunked
        return wire.status_head(status, reason, headers)

    def encode_body(self, data: bytes) -> Pieces:
        return wire.chunk(data) if self._chunked_out else (data,)

    def encode_end(self, trailers: Headers) -> bytes:
        if self._chunked_out:
            self._chunked_out = False
            return wire.last_chunk(trailers)
        return b""


class _Halt(Exception):
    """Raised from a response callback to stop llhttp after a head it cannot frame."""


class HttptoolsClientCodec(ClientCodec):
    def __init__(self, handler: ResponseHandler) -> None:
        self._handler = handler
        self._parser = httptools.HttpResponseParser(self)
        self._method = b""
        self._upgrade_requested = False
        self._chunked_out = False
        # Per cycle.
        self._awaiting = False  # a request was sent and its final response has not ended
        self._record: list[bytes] | None = None  # bytes of this cycle, to find a head's end
        self._recorded = 0  # their length
        self._heads = 0  # complete heads in this cycle
        self._halted = False  # llhttp stopped after a head: new parser next cycle
        self._switched = False  # a 101 was received
        self._tail = b""
        self._deferred: ResponseHead | None = None  # head delivered after llhttp stops
        self._body_left = 0  # bytes of a passed-through Content-Length body still due
        self._ended_in_feed = False  # a final response ended during the current feed
        # Per message.
        self._status = 0
        self._reason = b""
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._in_trailers = False
        self._in_message = False
        self._eof_body = False

    # -- encoding ---------------------------------------------------------

    def encode_request_head(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        chunked: bool,
        upgrade: bool = False,
    ) -> bytes:
        self._method = method
        self._chunked_out = chunked
        self._awaiting = True
        self._upgrade_requested = upgrade
        self._record = []  # until the final head: where it ends, should llhttp stop
        self._recorded = 0
        return wire.request_head(method, target, headers)

    def encode_body(self, data: bytes) -> Pieces:
        return wire.chunk(data) if self._chunked_out else (data,)

    def encode_end(self, trailers: Headers) -> bytes:
        if self._chunked_out:
            self._chunked_out = False
            return wire.last_chunk(trailers)
        return b""

    # -- llhttp callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ended_in_feed:
            # More bytes behind a complete response: never parse them as the
            # answer to a request sent meanwhile on this connection.
            raise UpstreamError("the upstream sent bytes behind the response", kind="protocol")
        self._reason = b""
        self._headers = []
        self._trailers = None
        self._in_trailers = False
        self._in_message = True
        self._eof_body = False

    def on_status(self, piece: bytes) -> None:
        self._reason += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        self._status = status
        self._in_trailers = True
        self._heads += 1
        version = _version(parser)
        content_length, chunked, connection, _, _, _ = _framing(self._headers)
        if chunked.__class__ is str:
            raise UpstreamError(f"invalid response: {chunked}", kind="protocol")
        if chunked and content_length is not None:
            raise UpstreamError(
                "response has both Content-Length and Transfer-Encoding", kind="protocol"
            )
        head_request = self._method == b"HEAD"
        keep_alive = version == b"1.1" and b"close" not in connection
        if (
            content_length is None
            and not chunked
            and status >= 200
            and status != 204
            and status != 304
            and not head_request
        ):
            self._eof_body = True
            keep_alive = False  # no framing: the body runs to EOF (RFC 9112 §6.3 rule 8)
        if status == 101 and not self._upgrade_requested:
            raise UpstreamError("101 Switching Protocols without an Upgrade request")
        head = ResponseHead(
            status,
            self._reason,
            version,
            self._headers,
            keep_alive,
            content_length,
            chunked is True,
        )
        if status == 101 or (head_request and status >= 200):
            # llhttp cannot frame what follows (tunnel bytes; a bodiless HEAD
            # answer): stop it, and deliver the head once ``feed`` knows the
            # bytes behind it, so a handler that switches protocols or reuses
            # the connection from inside the callback sees a settled codec.
            self._deferred = head
            raise _Halt
        if status >= 200:
            if (
                content_length is not None
                and content_length >= PASS_BODY_MIN_BYTES
                and status != 204
                and status != 304
            ):
                # A large body: count it off the raw bytes instead (no llhttp copy).
                self._body_left = content_length
                self._deferred = head
                raise _Halt
            self._record = None  # the final head is parsed: nothing more to look back on
        self._handler.on_response_head(head)

    def on_body(self, body: bytes) -> None:
        self._handler.on_response_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._status < 200:
            return  # 1xx: the final head follows (or a 101 ends HTTP)
        self._awaiting = False
        self._ended_in_feed = True
        trailers = self._trailers
        self._handler.on_response_end(trailers if trailers is not None else [])

    # -- parsing ----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._body_left:
            self._pass_body(data)
            return
        if self._switched or self._halted:
            self._tail += data
            return
        record = self._record
        if record is not None:
            record.append(data)
            self._recorded += len(data)
        self._ended_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._tail = data[exc.args[0] :]
            self._halted = True
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Halt):
                self._halted = True
                self._tail = self._after_heads()
                self._deliver_deferred()
                return
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                raise cause from None
            raise UpstreamError(f"invalid response: {exc}", kind="protocol") from None
        if self._record is not None and self._recorded > RESPONSE_HEAD_MAX_BYTES:
            # Still no final head (it is set to None once one is parsed).
            raise UpstreamError("response head too large", kind="protocol")

    def _deliver_deferred(self) -> None:
        head, self._deferred = self._deferred, None
        if head is None:
            return
        if head.status == 101:
            self._switched = True
            self._handler.on_response_head(head)
            return
        if self._body_left:
            tail, self._tail = self._tail, b""
            self._handler.on_response_head(head)
            if tail:
                self._pass_body(tail)
            return
        # RFC 9110 §9.3.2: a response to HEAD has no body, whatever its framing says.
        self._in_message = False
        self._awaiting = False
        self._handler.on_response_head(head)
        self._handler.on_response_end([])

    def _pass_body(self, data: bytes) -> None:
        """Hand on bytes of a passed-through body; end the response at its length."""
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            self._handler.on_response_body(data)
            return
        self._body_left = 0
        if len(data) > left:
            # Bytes behind the response: parsed (and refused) by the next cycle's parser.
            self._tail = data[left:]
            data = data[:left]
        self._in_message = False
        self._awaiting = False
        self._handler.on_response_body(data)
        self._handler.on_response_end([])

    def _after_heads(self) -> bytes:
        """The bytes behind the last complete head of this cycle."""
        data = b"".join(self._record or ())
        pos = 0
        for _ in range(self._heads):
            pos = data.index(_HEAD_END, pos) + len(_HEAD_END)
        return data[pos:]

    def feed_eof(self) -> None:
        if self._body_left:
            self._body_left = 0
            self._in_message = self._awaiting = False
            raise UpstreamError("upstream closed mid-response", kind="reset")
        if self._switched or self._halted:
            return
        if self._eof_body and self._in_message:
            self._in_message = False
            self._eof_body = False
            self._awaiting = False
            self._handler.on_response_end([])
            return
        if self._in_message or self._awaiting:
            self._awaiting = False
            raise UpstreamError("upstream closed mid-response", kind="reset")

    def start_next_cycle(self) -> None:
        self._record = None
        self._heads = 0
        if self._halted:
            # llhttp was stopped after a head: a fresh parser for the next response.
            self._halted = False
            self._parser = httptools.HttpResponseParser(self)
            leftover, self._tail = self._tail, b""
            if leftover:
                raise UpstreamError("the upstream sent bytes behind the response", kind="protocol")

    def switch_protocols(self) -> bytes:
        self._switched = True
        data, self._tail = self._tail, b""
        return data


class HttptoolsCodec:
    name = "httptools"

    def server(self, handler: RequestHandler, *, max_header_bytes: int) -> ServerCodec:
        return HttptoolsServerCodec(handler, max_header_bytes=max_header_bytes)

    def client(self, handler: ResponseHandler) -> ClientCodec:
        return HttptoolsClientCodec(handler)
