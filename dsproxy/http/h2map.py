"""HTTP/2 <-> HTTP/1.1 header mapping (RFC 9113 §8, RFC 8441): pure functions, no I/O.

Requests (RFC 9113 §8.3):

* Pseudo-header fields come first, once each: ``:method``, ``:scheme`` and
  ``:path`` (``:authority`` optional) for an ordinary request; only
  ``:method`` and ``:authority`` for CONNECT; ``:protocol`` only on an
  extended CONNECT (RFC 8441 §4), and only when the connection advertised
  SETTINGS_ENABLE_CONNECT_PROTOCOL.
* Field names are lower case tokens; values hold no NUL, CR or LF and no
  leading or trailing whitespace (§8.2.1). These checks matter twice here:
  the fields are written verbatim into an HTTP/1.1 head upstream, so a CR LF
  let through would split it (request smuggling).
* Connection-specific fields (Connection, Keep-Alive, Proxy-Connection,
  Transfer-Encoding, Upgrade) make a request malformed (§8.2.2); TE may only
  say ``trailers``.
* ``:authority`` becomes Host (§8.3.1; a Host that disagrees is malformed);
  cookie crumbs are joined with "; " (§8.2.3).

A malformed request is a stream error of type PROTOCOL_ERROR (§8.1.1):
``map_request`` raises ``StreamProtocolError`` and the connection resets the
stream. The size of the decoded header list (§6.5.2: name + value + 32 per
field) is returned so the caller can answer 431 beyond its limit.

A request body is framed upstream by its Content-Length when it has one and
by chunked coding otherwise; a request that ended with its HEADERS frame has
no body.

An extended CONNECT for ``websocket`` becomes the HTTP/1.1 Upgrade request
of RFC 6455 (a GET with a fresh Sec-WebSocket-Key); the upstream's 101 is
answered on the stream with a 200 (RFC 8441 §5).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.framing import tokens
from dsproxy.http.rules import HOP_BY_HOP

HTTP2_VERSION = b"2.0"  # RequestHead.version of a request that came over HTTP/2

# RFC 7541 §4.1 / RFC 9113 §6.5.2: the size of a field in a header list.
FIELD_OVERHEAD_BYTES = 32
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_PSEUDO_REQUEST = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
# Lower-case tchars only (RFC 9110 §5.6.2; RFC 9113 §8.2.1 forbids upper case).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
# Values: no NUL/CR/LF anywhere, no whitespace at either end (RFC 9113 §8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
# An origin-form target: no whitespace or control bytes (it goes on a request line).
_PATH = re.compile(rb"/[\x21-\x7e\x80-\xff]*").fullmatch
# RFC 3986 host[:port], no userinfo (RFC 9113 §8.3.1).
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]+").fullmatch
# Methods that usually carry a body: without one they get Content-Length: 0 upstream,
# as an HTTP/1.1 client would send (some servers answer 411 otherwise).
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class StreamProtocolError(Exception):
    """A malformed request (RFC 9113 §8.1.1): reset the stream with PROTOCOL_ERROR."""


@dataclass(slots=True)
class H2Request:
    head: RequestHead
    size: int  # decoded header list size (RFC 9113 §6.5.2)
    websocket_key: bytes  # b"" unless an extended CONNECT for websocket


def _check_field(name: bytes, value: bytes) -> None:
    if _NAME(name) is None:
        raise StreamProtocolError(f"invalid field name {name[:40]!r}")
    if value and _BAD_VALUE(value) is not None:
        raise StreamProtocolError(f"invalid value of {name.decode('latin-1')}")


def map_request(
    fields: list[tuple[bytes, bytes]],
    end_stream: bool,
    *,
    websocket: bool,
    random: Callable[[int], bytes] = os.urandom,
) -> H2Request:
    """Map a request's HTTP/2 header list to the head the exchange forwards.

    ``websocket``: extended CONNECT is enabled on this connection; ``random``
    draws the 16 bytes of a Sec-WebSocket-Key. Raises StreamProtocolError for
    a malformed request.
    """
    method = scheme = path = authority = protocol = None
    size = 0
    out: Headers = []
    cookies: list[bytes] = []
    host: bytes | None = None
    content_length: int | None = None
    expect_continue = False
    regular = False
    for name, value in fields:
        size += len(name) + len(value) + FIELD_OVERHEAD_BYTES
        if name[:1] == b":":
            if regular:
                raise StreamProtocolError("pseudo-header field after a regular field")
            if name == b":method":
                if method is not None:
                    raise StreamProtocolError("duplicate :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise StreamProtocolError("duplicate :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise StreamProtocolError("duplicate :scheme")
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    raise StreamProtocolError("duplicate :authority")
                authority = value
            elif name == b":protocol":
                if protocol is not None:
                    raise StreamProtocolError("duplicate :protocol")
                protocol = value
            else:
                raise StreamProtocolError(f"unknown pseudo-header field {name[:40]!r}")
            continue
        regular = True
        _check_field(name, value)
        n = len(name)
        if n == 6 and name == b"cookie":
            cookies.append(value)
            continue
        if n == 4 and name == b"host":
            if host is not None:
                raise StreamProtocolError("more than one Host field")
            host = value
            continue
        if name in _CONNECTION_SPECIFIC:
            raise StreamProtocolError(f"connection-specific field {name.decode()}")
        if n == 2 and name == b"te":
            if value.lower() != b"trailers":
                raise StreamProtocolError("TE other than trailers")
        elif n == 14 and name == b"content-length":
            if not value.isdigit():
                raise StreamProtocolError("invalid content-length")
            length = int(value)
            if content_length is not None and length != content_length:
                raise StreamProtocolError("conflicting content-length fields")
            content_length = length
            continue  # one Content-Length is added below
        elif n == 6 and name == b"expect":
            expect_continue = value.lower() == b"100-continue"
        out.append((name, value))
    if method is None or _METHOD(method) is None:
        raise StreamProtocolError("missing or invalid :method")
    if authority is not None:
        if _AUTHORITY(authority) is None:
            raise StreamProtocolError("invalid :authority")
        if host is not None and host != authority:
            raise StreamProtocolError("Host differs from :authority")
        host = authority
    elif host is not None and _AUTHORITY(host) is None:
        raise StreamProtocolError("invalid Host")
    upgrade: bytes | None = None
    ws_key = b""
    if method == b"CONNECT" and protocol is None:
        # RFC 9113 §8.5: only :method and :authority. The exchange refuses it (405).
        if scheme is not None or path is not None or authority is None:
            raise StreamProtocolError("CONNECT needs :authority and no :scheme or :path")
        target = authority
    else:
        if protocol is not None:
            if method != b"CONNECT" or not websocket:
                raise StreamProtocolError(":protocol without an enabled extended CONNECT")
            if authority is None:
                raise StreamProtocolError("extended CONNECT without :authority")
        if scheme is None or path is None:
            raise StreamProtocolError("missing :scheme or :path")
        if _PATH(path) is None and not (path == b"*" and method == b"OPTIONS"):
            raise StreamProtocolError("invalid :path")
        target = path
        # Any other :protocol stays a CONNECT, which the exchange refuses (405).
        if protocol is not None and protocol.lower() == b"websocket":
            method = b"GET"
            upgrade = b"websocket"
            ws_key = base64.b64encode(random(16))
            out.append((b"sec-websocket-key", ws_key))
            if not any(n == b"sec-websocket-version" for n, _ in out):
                out.append((b"sec-websocket-version", b"13"))
    if host is not None:
        out.insert(0, (b"host", host))
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    if content_length is not None:
        out.append((b"content-length", b"%d" % content_length))
    elif end_stream and method in _BODY_METHODS:
        content_length = 0
        out.append((b"content-length", b"0"))
    chunked = content_length is None and not end_stream and upgrade is None
    head = RequestHead(
        method, target, HTTP2_VERSION, out, True, content_length, chunked, upgrade,
        expect_continue,
    )  # fmt: skip
    return H2Request(head, size, ws_key)


def map_trailers(fields: list[tuple[bytes, bytes]]) -> tuple[Headers, int]:
    """A request's trailer section: checked like its fields (no pseudo-headers); with its size."""
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + FIELD_OVERHEAD_BYTES
        if name[:1] == b":":
            raise StreamProtocolError("pseudo-header field in trailers")
        _check_field(name, value)
        if name in _CONNECTION_SPECIFIC or name == b"te":
            raise StreamProtocolError(f"connection-specific field {name.decode()} in trailers")
    return fields, size


def _end_to_end(headers: Headers, out: Headers) -> Headers:
    """Append ``headers`` lower-cased, without hop-by-hop fields (RFC 9113 §8.2.2)."""
    listed: tuple[bytes, ...] = ()
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                listed += tokens(value)
            continue
        if lname[:1] == b":":
            continue  # not a token: never from an HTTP/1.1 parser, never passed on
        out.append((lname, value))
    if listed:
        drop = set(listed)
        out = [(n, v) for n, v in out if n not in drop or n[:1] == b":"]
    return out


_STATUS = {code: b"%d" % code for code in range(100, 600)}


def response_fields(head: ResponseHead) -> Headers:
    """An HTTP/1.1 response head as an HTTP/2 header list: ``:status``, then its fields."""
    status = _STATUS.get(head.status) or b"%d" % head.status
    return _end_to_end(head.headers, [(b":status", status)])


def informational_fields(status: int) -> Headers:
    return [(b":status", _STATUS.get(status) or b"%d" % status)]


def trailer_fields(trailers: Headers) -> Headers:
    """An upstream's trailer section for an HTTP/2 HEADERS frame."""
    return _end_to_end(trailers, [])


def error_fields(status: int, headers: Headers) -> Headers:
    """The fields of the proxy's own error response (``rules.error_response``)."""
    return _end_to_end(headers, [(b":status", _STATUS.get(status) or b"%d" % status)])


def websocket_accept(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def websocket_fields(head: ResponseHead, key: bytes) -> Headers | None:
    """The 200 answering an extended CONNECT, from the upstream's 101 (RFC 8441 §5).

    None when the 101 does not carry the Sec-WebSocket-Accept our key asks for.
    """
    accept = websocket_accept(key)
    fields: Headers = [(b":status", b"200")]
    ok = False
    for name, value in _end_to_end(head.headers, []):
        if name == b"sec-websocket-accept":
            ok = value.strip() == accept
        else:
            fields.append((name, value))
    return fields if ok else None
