"""The reference codec on h11 (python-hyper), pure Python.

h11 keeps both directions' state machines, so it also decides response
framing from the headers we hand it; we only add the checks a proxy needs on
top of h11 0.16: a message with both Content-Length and Transfer-Encoding is
refused (RFC 9112 §6.3: a proxy must not forward it; h11 lets TE win).
"""

from __future__ import annotations

import h11

from dsproxy.errors import ClientError, UpstreamError
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
from dsproxy.http.framing import request_head, response_head


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


class H11ServerCodec(ServerCodec):
    def __init__(self, handler: RequestHandler, *, max_header_bytes: int) -> None:
        self._handler = handler
        self._max_header_bytes = max_header_bytes
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._switched = False
        self._ended = False  # a request ended: nothing more is parsed until start_next_cycle

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)
        if not self._ended:
            self._pump()
        # else: a request ended and its response is due; h11 keeps the bytes (and would
        # refuse them outright behind a request that closes the connection).

    def _pump(self) -> None:
        conn = self._conn
        handler = self._handler
        try:
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    handler.on_request_body(_as_bytes(event.data))  # type: ignore[union-attr]
                elif kind is h11.Request:
                    handler.on_request_head(self._head(event))  # type: ignore[arg-type]
                elif kind is h11.EndOfMessage:
                    trailers = list(event.headers.raw_items())  # type: ignore[union-attr]
                    if trailers:
                        self._check_size(0, trailers, "request trailers too large")
                    self._ended = True
                    handler.on_request_end(trailers)
                    return
                else:  # NEED_DATA, PAUSED, ConnectionClosed
                    return
        except h11.RemoteProtocolError as exc:
            raise ClientError(str(exc), status=exc.error_status_hint) from None

    def _head(self, event: h11.Request) -> RequestHead:
        if event.http_version not in (b"1.1", b"1.0"):
            # h11 takes any 1.x or 2.0 version line, the HTTP/2 preface included.
            raise ClientError(f"unsupported HTTP version {event.http_version!r}", status=400)
        raw = list(event.headers.raw_items())
        self._check_size(len(event.method) + len(event.target) + 12, raw, "request head too large")
        return request_head(event.method, event.target, event.http_version, raw)

    def _check_size(self, size: int, fields: Headers, what: str) -> None:
        """h11 bounds only a head (or trailer section) that arrives in pieces; one that
        arrives whole must respect max_header_bytes too (line + fields, ": " and CRLFs)."""
        for name, value in fields:
            size += len(name) + len(value) + 4
        if size > self._max_header_bytes:
            raise ClientError(what, status=431, kind="header_too_large")

    def feed_eof(self) -> bool:
        conn = self._conn
        clean = conn.their_state is h11.IDLE and not conn.trailing_data[0]
        if not self._switched:
            conn.receive_data(b"")
        return clean

    @property
    def head_in_progress(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.IDLE and bool(conn.trailing_data[0])

    def start_next_cycle(self) -> None:
        self._ended = False
        self._conn.start_next_cycle()
        self._pump()

    def switch_protocols(self) -> bytes:
        self._switched = True
        return _as_bytes(self._conn.trailing_data[0])

    def encode_informational(self, status: int, reason: bytes, headers: Headers) -> bytes:
        data = self._conn.send(
            h11.InformationalResponse(status_code=status, headers=headers, reason=reason)
        )
        return data or b""

    def encode_response_head(
        self, status: int, reason: bytes, headers: Headers, *, chunked: bool
    ) -> bytes:
        data = self._conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        return data or b""

    def encode_body(self, data: bytes) -> Pieces:
        # The data itself is one of the pieces: chunk framing goes around it, no join copy.
        return tuple(self._conn.send_with_data_passthrough(h11.Data(data=data)) or ())

    def encode_end(self, trailers: Headers) -> bytes:
        return self._conn.send(h11.EndOfMessage(headers=trailers)) or b""


class H11ClientCodec(ClientCodec):
    def __init__(self, handler: ResponseHandler) -> None:
        self._handler = handler
        self._conn = h11.Connection(h11.CLIENT)
        self._switched = False
        self._method = b""
        self._upgrade = False

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
        self._upgrade = upgrade
        return self._conn.send(h11.Request(method=method, target=target, headers=headers)) or b""

    def encode_body(self, data: bytes) -> Pieces:
        # The data itself is one of the pieces: chunk framing goes around it, no join copy.
        return tuple(self._conn.send_with_data_passthrough(h11.Data(data=data)) or ())

    def encode_end(self, trailers: Headers) -> bytes:
        return self._conn.send(h11.EndOfMessage(headers=trailers)) or b""

    def feed(self, data: bytes) -> None:
        if self._switched:
            return
        self._conn.receive_data(data)
        try:
            self._pump()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"invalid response: {exc}", kind="protocol") from None

    def _pump(self) -> None:
        conn = self._conn
        handler = self._handler
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Data:
                handler.on_response_body(_as_bytes(event.data))  # type: ignore[union-attr]
            elif kind is h11.Response or kind is h11.InformationalResponse:
                head = self._head(event)  # type: ignore[arg-type]
                handler.on_response_head(head)
                if conn.their_state is h11.SWITCHED_PROTOCOL:
                    return
            elif kind is h11.EndOfMessage:
                handler.on_response_end(list(event.headers.raw_items()))  # type: ignore[union-attr]
                return
            else:
                return

    def _head(self, event: h11.Response | h11.InformationalResponse) -> ResponseHead:
        return response_head(
            event.status_code,
            _as_bytes(event.reason),
            event.http_version,
            list(event.headers.raw_items()),
            method=self._method,
            upgrade_requested=self._upgrade,
        )

    def feed_eof(self) -> None:
        if self._switched:
            return
        self._conn.receive_data(b"")
        try:
            self._pump()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"upstream closed mid-response: {exc}", kind="reset") from None

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()
        if self._conn.trailing_data[0]:
            raise UpstreamError("the upstream sent bytes behind the response", kind="protocol")

    def switch_protocols(self) -> bytes:
        self._switched = True
        return _as_bytes(self._conn.trailing_data[0])


class H11Codec:
    name = "h11"

    def server(self, handler: RequestHandler, *, max_header_bytes: int) -> ServerCodec:
        return H11ServerCodec(handler, max_header_bytes=max_header_bytes)

    def client(self, handler: ResponseHandler) -> ClientCodec:
        return H11ClientCodec(handler)
