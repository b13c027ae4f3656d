"""The codec interface: HTTP/1.1 framing behind one small seam.

A codec is sans-IO. The server codec turns client bytes into request events
and encodes responses; the client codec encodes requests and turns upstream
bytes into response events. Events are delivered by calling a handler, so a
callback parser (llhttp) costs no intermediate objects.

State rules shared by every implementation:

* After a request's ``on_request_end`` the server codec delivers nothing more
  (pipelined bytes are kept) until ``start_next_cycle()``; so at most one
  request is in flight per client connection and responses stay in order.
* A request that asks for ``Upgrade`` stops HTTP parsing after its head and
  body: bytes behind it may already be WebSocket frames. ``start_next_cycle()``
  (the upgrade was refused) parses them as HTTP again; ``switch_protocols()``
  (a 101 was sent) hands them over as raw tunnel bytes.
* The client codec mirrors this for responses; a ``1xx`` head is delivered by
  ``on_response_head`` and is followed by the final head.
* Errors are raised from ``feed``: ``ClientError`` (server codec, with the
  status to answer: 400, 431) or ``UpstreamError`` (client codec, kind
  ``protocol``; ``reset`` when the upstream closed mid-message).
* Header names are delivered as received (case kept); values are raw bytes.
  Encoders write the header list they are given verbatim: the forwarding
  layer decides framing headers (Content-Length / Transfer-Encoding) and
  passes ``chunked`` to say how body pieces must be encoded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[bytes, bytes]]
# Encoded body bytes as pieces to write in order (``transport.writelines``): the
# body data itself is one piece, so framing it (chunked coding) copies nothing.
Pieces = tuple[bytes, ...]


@dataclass(slots=True)
class RequestHead:
    method: bytes  # b"GET"
    target: bytes  # request-target exactly as received (query byte-exact)
    version: bytes  # b"1.1" / b"1.0"
    headers: Headers
    keep_alive: bool  # the client allows reuse (version and Connection)
    content_length: int | None  # None: not given
    chunked: bool  # Transfer-Encoding: chunked
    upgrade: bytes | None  # lower-cased Upgrade value when Connection lists "upgrade"
    expect_continue: bool  # Expect: 100-continue


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool  # the upstream allows reuse after this response
    content_length: int | None
    chunked: bool
    to_eof: bool = False  # no framing: the body ends when the upstream closes


class RequestHandler(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self, trailers: Headers) -> None: ...


class ResponseHandler(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, trailers: Headers) -> None: ...


class ServerCodec(ABC):
    """Parses requests from one client connection and encodes the responses."""

    @abstractmethod
    def feed(self, data: bytes) -> None:
        """Parse ``data``; deliver events to the handler (raises ClientError)."""

    @abstractmethod
    def feed_eof(self) -> bool:
        """The client closed its side. True when that ends a message cleanly
        (between requests), False when a request was cut short."""

    @property
    @abstractmethod
    def head_in_progress(self) -> bool:
        """Bytes of a request head were received but the head is not complete."""

    @abstractmethod
    def start_next_cycle(self) -> None:
        """The response is complete: deliver the next pipelined request, if any."""

    @abstractmethod
    def switch_protocols(self) -> bytes:
        """A 101 was sent: stop parsing and return the bytes behind the request."""

    @abstractmethod
    def encode_informational(self, status: int, reason: bytes, headers: Headers) -> bytes:
        """A 1xx interim response (100 Continue, 103, the 101 of an upgrade)."""

    @abstractmethod
    def encode_response_head(
        self, status: int, reason: bytes, headers: Headers, *, chunked: bool
    ) -> bytes: ...

    @abstractmethod
    def encode_body(self, data: bytes) -> Pieces: ...

    @abstractmethod
    def encode_end(self, trailers: Headers) -> bytes: ...


class ClientCodec(ABC):
    """Encodes requests to one upstream connection and parses the responses."""

    @abstractmethod
    def encode_request_head(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        chunked: bool,
        upgrade: bool = False,
    ) -> bytes:
        """Encode a request head; the codec remembers the method (HEAD responses
        have no body) and ``upgrade``: the headers ask for a protocol switch, so
        a 101 may answer."""

    @abstractmethod
    def encode_body(self, data: bytes) -> Pieces: ...

    @abstractmethod
    def encode_end(self, trailers: Headers) -> bytes: ...

    @abstractmethod
    def feed(self, data: bytes) -> None:
        """Parse ``data``; deliver events to the handler (raises UpstreamError)."""

    @abstractmethod
    def feed_eof(self) -> None:
        """The upstream closed: ends a close-delimited body, else raises UpstreamError."""

    @abstractmethod
    def start_next_cycle(self) -> None:
        """Both messages are complete: ready for the next request.

        Raises UpstreamError (kind ``protocol``) when the upstream sent bytes
        behind the response: the connection must not be reused.
        """

    @abstractmethod
    def switch_protocols(self) -> bytes:
        """A 101 was received: stop parsing and return the bytes behind its head."""


class CodecFactory(Protocol):
    name: str

    def server(self, handler: RequestHandler, *, max_header_bytes: int) -> ServerCodec: ...
    def client(self, handler: ResponseHandler) -> ClientCodec: ...
