"""The client side of the httptools codec: upstream bytes -> response events.

See ``httptools_codec`` for what this adapter adds to llhttp.
"""

from __future__ import annotations

import httptools

import dsproxy.http.codec.wire as wire
from dsproxy.errors import UpstreamError
from dsproxy.http.codec.base import ClientCodec, Headers, Pieces, ResponseHandler, ResponseHead
from dsproxy.http.codec.httptools_common import PASS_BODY_MIN_BYTES, parser_version
from dsproxy.http.framing import response_has_body, response_head

_HEAD_END = b"\r\n\r\n"
# A response head still incomplete after this many bytes is refused (llhttp has no
# limit of its own; h11's default max_incomplete_event_size is the same).
RESPONSE_HEAD_MAX_BYTES = 16 * 1024


class _Halt(Exception):
    """Raised from a response callback to stop llhttp after a head it cannot frame."""


class HttptoolsClientCodec(ClientCodec):
    def __init__(self, handler: ResponseHandler) -> None:
        self._handler = handler
        self._parser = httptools.HttpResponseParser(self)
        self._method = b""
        self._upgrade_requested = False
        self._framer = wire.BodyFramer()
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
        self._trailers: Headers = []
        self._fields = self._headers  # where on_header puts a field: the head, then trailers
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
        self._framer.chunked = chunked
        self._awaiting = True
        self._upgrade_requested = upgrade
        self._record = []  # until the final head: where it ends, should llhttp stop
        self._recorded = 0
        return wire.request_head(method, target, headers)

    def encode_body(self, data: bytes) -> Pieces:
        return self._framer.body(data)

    def encode_end(self, trailers: Headers) -> bytes:
        return self._framer.end(trailers)

    # -- llhttp callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ended_in_feed:
            # More bytes behind a complete response: never parse them as the
            # answer to a request sent meanwhile on this connection.
            raise UpstreamError("the upstream sent bytes behind the response", kind="protocol")
        self._reason = b""
        self._headers = self._fields = []
        self._in_message = True
        self._eof_body = False

    def on_status(self, piece: bytes) -> None:
        self._reason += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        self._status = status
        self._trailers = self._fields = []
        self._heads += 1
        head = response_head(
            status,
            self._reason,
            parser_version(parser),
            self._headers,
            method=self._method,
            upgrade_requested=self._upgrade_requested,
        )
        self._eof_body = head.to_eof
        head_request = self._method == b"HEAD"
        content_length = head.content_length
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
                and response_has_body(self._method, status)
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
        self._handler.on_response_end(self._trailers)

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
