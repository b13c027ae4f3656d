"""Pure tests of dsproxy.http.framing: the RFC 9112 rules both codecs and the rules share."""

from __future__ import annotations

import pytest

from dsproxy.errors import ClientError, UpstreamError
from dsproxy.http.codec.base import Headers
from dsproxy.http.framing import request_head, response_has_body, response_head, tokens


@pytest.mark.parametrize(
    ("method", "status", "has_body"),
    [
        (b"GET", 200, True),
        (b"HEAD", 200, False),
        (b"GET", 204, False),
        (b"GET", 304, False),
        (b"GET", 103, False),
        (b"GET", 101, False),
        (b"POST", 404, True),
    ],
)
def test_response_has_body(method: bytes, status: int, has_body: bool) -> None:
    assert response_has_body(method, status) is has_body


def test_request_head_reads_every_framing_field_in_any_case() -> None:
    headers: Headers = [
        (b"HOST", b"h"),
        (b"content-LENGTH", b"12"),
        (b"Connection", b"Upgrade, Keep-Alive"),
        (b"upgrade", b"WebSocket"),
        (b"EXPECT", b"100-Continue"),
        (b"X-Other", b"1"),
    ]
    head = request_head(b"POST", b"/x?y", b"1.1", headers)
    assert (head.method, head.target, head.version) == (b"POST", b"/x?y", b"1.1")
    assert head.headers is headers
    assert head.content_length == 12
    assert not head.chunked
    assert head.keep_alive
    assert head.upgrade == b"websocket"
    assert head.expect_continue


@pytest.mark.parametrize(
    ("version", "headers", "keep_alive"),
    [
        (b"1.1", [(b"Host", b"h")], True),
        (b"1.1", [(b"Host", b"h"), (b"Connection", b"x, Close")], False),
        (b"1.0", [], False),  # no HTTP/1.0 keep-alive (h11's rule)
        (b"1.0", [(b"Connection", b"keep-alive")], False),
    ],
)
def test_request_keep_alive(version: bytes, headers: Headers, keep_alive: bool) -> None:
    assert request_head(b"GET", b"/", version, headers).keep_alive is keep_alive


def test_upgrade_needs_connection_upgrade() -> None:
    head = request_head(b"GET", b"/", b"1.1", [(b"Host", b"h"), (b"Upgrade", b"websocket")])
    assert head.upgrade is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip")], 501),
        ([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked, gzip")], 501),
        ([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")] * 2, 501),
        ([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], 400),
        ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip"), (b"Content-Length", b"3")], 501),
        ([(b"Content-Length", b"3")], 400),
    ],
)
def test_request_head_refuses(headers: Headers, status: int) -> None:
    with pytest.raises(ClientError) as info:
        request_head(b"POST", b"/", b"1.1", headers)
    assert info.value.status == status


def test_request_head_accepts() -> None:
    head = request_head(
        b"POST", b"/", b"1.1", [(b"Host", b"h"), (b"Transfer-Encoding", b" Chunked ")]
    )
    assert head.chunked
    assert head.content_length is None
    request_head(b"GET", b"/", b"1.0", [])  # HTTP/1.0 needs no Host


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
        [(b"Transfer-Encoding", b"identity")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
    ],
)
def test_response_head_refuses(headers: Headers) -> None:
    with pytest.raises(UpstreamError) as info:
        response_head(200, b"OK", b"1.1", headers, method=b"GET", upgrade_requested=False)
    assert info.value.kind == "protocol"


@pytest.mark.parametrize(
    ("headers", "version", "method", "status", "keep_alive", "to_eof"),
    [
        ([(b"Content-Length", b"0")], b"1.1", b"GET", 200, True, False),
        ([(b"Transfer-Encoding", b"chunked")], b"1.1", b"GET", 200, True, False),
        ([], b"1.1", b"GET", 200, False, True),  # no framing: the body runs to EOF
        ([], b"1.1", b"HEAD", 200, True, False),
        ([], b"1.1", b"GET", 204, True, False),
        ([], b"1.1", b"GET", 304, True, False),
        ([], b"1.1", b"GET", 103, True, False),
        ([(b"Content-Length", b"0"), (b"Connection", b"close")], b"1.1", b"GET", 200, False, False),
        ([(b"Content-Length", b"0")], b"1.0", b"GET", 200, False, False),
    ],
)
def test_response_framing(
    headers: Headers, version: bytes, method: bytes, status: int, keep_alive: bool, to_eof: bool
) -> None:
    head = response_head(status, b"", version, headers, method=method, upgrade_requested=False)
    assert head.keep_alive is keep_alive
    assert head.to_eof is to_eof


def test_unrequested_101_is_refused() -> None:
    switch: Headers = [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")]
    head = response_head(101, b"", b"1.1", switch, method=b"GET", upgrade_requested=True)
    assert head.status == 101
    with pytest.raises(UpstreamError, match="did not ask for"):
        response_head(101, b"", b"1.1", switch, method=b"GET", upgrade_requested=False)


def test_tokens() -> None:
    assert tokens(b"keep-alive") == (b"keep-alive",)
    assert tokens(b" Close ,, X-Foo") == (b"close", b"x-foo")


@pytest.mark.parametrize("reason", [b"O\x00K", b"OK\r", b"A\nB", b"\x7f", b"\x1b[31mred"])
def test_control_bytes_in_the_reason_phrase_are_refused(reason: bytes) -> None:
    with pytest.raises(UpstreamError, match="reason phrase"):
        response_head(200, reason, b"1.1", [], method=b"GET", upgrade_requested=False)


@pytest.mark.parametrize("reason", [b"OK", b"", b"Fine\tthanks", b"Tr\xe8s bien", b"Custom!"])
def test_reason_phrases_within_the_grammar_pass(reason: bytes) -> None:
    head = response_head(200, reason, b"1.1", [], method=b"GET", upgrade_requested=False)
    assert head.reason == reason
