"""RFC 9112 message framing, written once for both codecs and the header rules.

Rules (RFC 9112 §6, RFC 9110 §6.4.1, §15.2):

* A response to HEAD, a 1xx, a 204 and a 304 never has a body, whatever its
  framing fields say.
* A message with both Content-Length and Transfer-Encoding is refused: a
  proxy that forwards it invites request smuggling (§6.1, §6.3).
* Only ``Transfer-Encoding: chunked``, exactly and once, is accepted (h11
  answers 501 to anything else, and so do we with either codec).
* A response with a body but neither Content-Length nor chunked coding runs
  to EOF (§6.3 rule 8), so its connection cannot be reused.
* A connection is reused only after an HTTP/1.1 message without
  ``Connection: close`` (h11's rule: no HTTP/1.0 keep-alive).
* A 101 is valid only as the answer to a request that asked to upgrade.

Both codecs hand a parsed head's line and fields to ``request_head`` or
``response_head``, which read the framing fields in one pass, apply the rules
above and return the head the proxy works with (or raise the error to answer).
"""

from __future__ import annotations

import re
from http import HTTPStatus

from dsproxy.errors import ClientError, UpstreamError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead

_NO_TOKENS: tuple[bytes, ...] = ()
# Connection / Upgrade values seen on nearly every message, already split.
_COMMON_TOKENS: dict[bytes, tuple[bytes, ...]] = {
    v: (v.lower(),) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                              b"Upgrade", b"websocket", b"WebSocket")
}  # fmt: skip

CHUNKED_ONLY = "Only Transfer-Encoding: chunked is supported"
# RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ). A control byte in it
# (llhttp lets NUL through; h11 refuses it) must never reach the client's status line.
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_COMMON_REASONS = frozenset(s.phrase.encode("ascii") for s in HTTPStatus) | {b""}


def tokens(value: bytes) -> tuple[bytes, ...]:
    """The comma-separated, lower-cased tokens of a list-valued field."""
    common = _COMMON_TOKENS.get(value)
    if common is not None:
        return common
    return tuple(t for t in (t.strip().lower() for t in value.split(b",")) if t)


# What one pass over a head's fields finds: (content_length or None, chunked,
# why a Transfer-Encoding is refused or None, Connection lists "close",
# the first Upgrade token when Connection lists "upgrade", Expect: 100-continue, has Host).
_Scan = tuple[int | None, bool, str | None, bool, bytes | None, bool, bool]


def _scan(headers: Headers) -> _Scan:
    """One pass over a head's fields (names in any case; values raw).

    Only names of a framing field's length are lower-cased, which is most of
    the work saved on a typical head.
    """
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
                # Both parsers already refused non-digits and conflicting duplicates.
                content_length = int(value)
        elif n == 17:
            if name.lower() == b"transfer-encoding":
                te = value
                te_count += 1
        elif n == 10:
            if name.lower() == b"connection":
                connection += tokens(value)
        elif n == 7:
            if name.lower() == b"upgrade":
                upgrade += tokens(value)
        elif n == 6 and name.lower() == b"expect":
            expect = b"100-continue" in value.lower()
    chunked = False
    te_error: str | None = None
    if te is not None:
        if te_count > 1:
            te_error = "multiple Transfer-Encoding headers"
        elif te.strip().lower() != b"chunked":
            te_error = CHUNKED_ONLY
        else:
            chunked = True
    close = False
    wanted: bytes | None = None
    if connection:
        close = b"close" in connection
        if upgrade and b"upgrade" in connection:
            wanted = upgrade[0]
    return content_length, chunked, te_error, close, wanted, expect, host


def request_head(method: bytes, target: bytes, version: bytes, headers: Headers) -> RequestHead:
    """The framed request head, or ClientError for one a proxy must not forward."""
    content_length, chunked, te_error, close, upgrade, expect, host = _scan(headers)
    if te_error is not None:
        raise ClientError(te_error, status=501)
    if chunked and content_length is not None:
        raise ClientError("both Content-Length and Transfer-Encoding", status=400)
    if version == b"1.1" and not host:
        raise ClientError("Missing mandatory Host: header", status=400)  # RFC 9112 §3.2
    return RequestHead(
        method,
        target,
        version,
        headers,
        version == b"1.1" and not close,  # keep_alive
        content_length,
        chunked,
        upgrade,
        expect,  # expect_continue
    )


def response_head(
    status: int,
    reason: bytes,
    version: bytes,
    headers: Headers,
    *,
    method: bytes,
    upgrade_requested: bool,
) -> ResponseHead:
    """The framed response head to a ``method`` request, or UpstreamError."""
    content_length, chunked, te_error, close, _, _, _ = _scan(headers)
    if te_error is not None:
        raise UpstreamError(f"invalid response: {te_error}", kind="protocol")
    if chunked and content_length is not None:
        raise UpstreamError(
            "response has both Content-Length and Transfer-Encoding", kind="protocol"
        )
    if reason not in _COMMON_REASONS and _BAD_REASON(reason) is not None:
        raise UpstreamError("invalid response: a control byte in the reason phrase")
    if status == 101 and not upgrade_requested:
        raise UpstreamError("101 Switching Protocols the client did not ask for", kind="protocol")
    # No framing: the body runs to EOF (rule 8) and the connection cannot be reused.
    to_eof = content_length is None and not chunked and response_has_body(method, status)
    return ResponseHead(
        status,
        reason,
        version,
        headers,
        version == b"1.1" and not close and not to_eof,  # keep_alive
        content_length,
        chunked,
        to_eof,
    )


def response_has_body(method: bytes, status: int) -> bool:
    """RFC 9112 §6.3: HEAD responses, 1xx, 204 and 304 never carry a body."""
    return not (method == b"HEAD" or status < 200 or status == 204 or status == 304)
