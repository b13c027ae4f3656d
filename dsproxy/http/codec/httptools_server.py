"""The server side of the httptools codec: client bytes -> request events.

See ``httptools_codec`` for what this adapter adds to llhttp.
"""

from __future__ import annotations

from collections import deque

import httptools

import dsproxy.http.codec.wire as wire
from dsproxy.errors import ClientError
from dsproxy.http.codec.base import Headers, Pieces, RequestHandler, ServerCodec
from dsproxy.http.codec.httptools_common import PASS_BODY_MIN_BYTES, parser_version
from dsproxy.http.framing import request_head

# Queued server events (parsed while the previous request awaits its response).
_BEGIN = 0
_HEAD = 1
_BODY = 2
_END = 3
_ERROR = 4

_HEADER_OVERHEAD = 4  # ": " and CRLF around each field line
_LINE_OVERHEAD = 14  # two spaces, "HTTP/1.1", CRLF, the blank line's CRLF


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
        self._trailers: Headers = []
        self._fields = self._headers  # where on_header puts a field: the head, then trailers
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
        self._framer = wire.BodyFramer()

    # -- llhttp callbacks (parse time) ------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body_seen = 0
        self._headers = self._fields = []
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
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method: bytes = parser.get_method()
        self._head_size += len(method) + _LINE_OVERHEAD
        if self._head_size > self._max_header_bytes:
            raise ClientError("request head too large", status=431)
        version = parser_version(parser)
        if version != b"1.1" and version != b"1.0":
            raise ClientError(f"unsupported HTTP version {version!r}", status=400)
        head = request_head(method, self._url, version, self._headers)
        self._cur_content_length = head.content_length
        self._cur_chunked = head.chunked
        self._parse_in_head = False
        self._in_trailers = True
        self._trailers = self._fields = []
        self._head_size = 0
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
        self._emit_end(self._trailers)

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
        self._framer.chunked = chunked
        return wire.status_head(status, reason, headers)

    def encode_body(self, data: bytes) -> Pieces:
        return self._framer.body(data)

    def encode_end(self, trailers: Headers) -> bytes:
        return self._framer.end(trailers)
