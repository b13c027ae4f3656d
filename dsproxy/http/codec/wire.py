"""Hand-written HTTP/1.1 serialisation shared by the fast codecs.

One bytes object per head: the status or request line, the header list
verbatim (the forwarding layer already decided the framing headers), and the
blank line. Body framing is RFC 9112 §7.1 chunked coding when asked for.
"""

from __future__ import annotations

from http import HTTPStatus

from dsproxy.http.codec.base import Headers, Pieces

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}

LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"


def reason_for(status: int, reason: bytes) -> bytes:
    """``reason`` or, when empty, the standard phrase (RFC 9112 §4 allows none)."""
    return reason or _REASONS.get(status, b"")


def _header_block(headers: Headers) -> bytes:
    if not headers:
        return b"\r\n"
    return b"\r\n".join(map(b": ".join, headers)) + b"\r\n\r\n"


def status_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """``HTTP/1.1 <status> <reason>`` + headers + blank line."""
    return b"HTTP/1.1 %d %s\r\n%s" % (status, reason_for(status, reason), _header_block(headers))


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """``<method> <target> HTTP/1.1`` + headers + blank line."""
    return b"%s %s HTTP/1.1\r\n%s" % (method, target, _header_block(headers))


def chunk(data: bytes) -> Pieces:
    """One chunk (RFC 9112 §7.1) as pieces around ``data`` (not copied); none for no data,
    since a 0-size chunk ends the body."""
    if not data:
        return ()
    return (b"%x\r\n" % len(data), data, CRLF)


def last_chunk(trailers: Headers) -> bytes:
    """The last chunk and the trailer section (RFC 9112 §7.1.2)."""
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + _header_block(trailers)


class BodyFramer:
    """Frames one direction's bodies: chunked coding, or the data as it is.

    ``chunked`` is set when a head whose body is chunked is encoded; ``end``
    resets it. Held by the httptools codecs (both sides) rather than inherited,
    since a codec class already has its one base, the codec interface.
    """

    __slots__ = ("chunked",)

    def __init__(self) -> None:
        self.chunked = False

    def body(self, data: bytes) -> Pieces:
        return chunk(data) if self.chunked else (data,)

    def end(self, trailers: Headers) -> bytes:
        if self.chunked:
            self.chunked = False
            return last_chunk(trailers)
        return b""
