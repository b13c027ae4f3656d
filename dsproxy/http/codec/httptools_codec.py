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

from dsproxy.http.codec.base import ClientCodec, RequestHandler, ResponseHandler, ServerCodec
from dsproxy.http.codec.httptools_client import HttptoolsClientCodec
from dsproxy.http.codec.httptools_common import PASS_BODY_MIN_BYTES
from dsproxy.http.codec.httptools_server import HttptoolsServerCodec

__all__ = ["PASS_BODY_MIN_BYTES", "HttptoolsCodec"]


class HttptoolsCodec:
    name = "httptools"

    def server(self, handler: RequestHandler, *, max_header_bytes: int) -> ServerCodec:
        return HttptoolsServerCodec(handler, max_header_bytes=max_header_bytes)

    def client(self, handler: ResponseHandler) -> ClientCodec:
        return HttptoolsClientCodec(handler)
