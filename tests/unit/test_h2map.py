"""Pure tests of the HTTP/2 <-> HTTP/1.1 mapping (dsproxy.http.h2map) and the hand-made frames."""

from __future__ import annotations

import base64

import pytest
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

from dsproxy.http.codec.base import Headers, ResponseHead
from dsproxy.http.h2codec import HTTP_1_1_REQUIRED, goaway_frame, refusal_frames
from dsproxy.http.h2map import (
    HTTP2_VERSION,
    StreamProtocolError,
    map_request,
    map_trailers,
    response_fields,
    trailer_fields,
    websocket_accept,
    websocket_fields,
)
from dsproxy.http.rules import ClientContext, UpstreamTarget, build_upstream_request

BASE: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"api.example:8443"),
    (b":path", b"/a/b?c=%2F"),
]


def fields(*extra: tuple[bytes, bytes], base: Headers = BASE) -> Headers:
    return list(base) + list(extra)


def response(headers: Headers, status: int = 200) -> ResponseHead:
    return ResponseHead(status, b"OK", b"1.1", headers, True, None, False)


def test_pseudo_headers_become_the_request_line_and_host() -> None:
    req = map_request(fields((b"accept", b"*/*")), True, websocket=False)
    head = req.head
    assert (head.method, head.target, head.version) == (b"GET", b"/a/b?c=%2F", HTTP2_VERSION)
    assert head.headers[0] == (b"host", b"api.example:8443")
    assert (b"accept", b"*/*") in head.headers
    assert not any(n.startswith(b":") for n, _ in head.headers)
    assert head.content_length is None
    assert not head.chunked
    assert head.upgrade is None
    # RFC 9113 §6.5.2: name + value + 32 per field, pseudo-headers included.
    assert req.size == sum(len(n) + len(v) + 32 for n, v in fields((b"accept", b"*/*")))


def test_host_alone_is_used_and_a_disagreeing_host_is_malformed() -> None:
    no_authority = [f for f in BASE if f[0] != b":authority"]
    head = map_request(no_authority + [(b"host", b"h.example")], True, websocket=False).head
    assert head.headers[0] == (b"host", b"h.example")
    same = map_request(fields((b"host", b"api.example:8443")), True, websocket=False).head
    assert [v for n, v in same.headers if n == b"host"] == [b"api.example:8443"]
    with pytest.raises(StreamProtocolError, match="Host differs"):
        map_request(fields((b"host", b"other.example")), True, websocket=False)


def test_cookie_crumbs_are_joined() -> None:
    head = map_request(
        fields((b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")), True, websocket=False
    ).head
    assert [v for n, v in head.headers if n == b"cookie"] == [b"a=1; b=2"]


@pytest.mark.parametrize(
    "extra",
    [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"close"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
    ],
)
def test_connection_specific_fields_are_malformed(extra: tuple[bytes, bytes]) -> None:
    with pytest.raises(StreamProtocolError):
        map_request(fields(extra), True, websocket=False)


def test_te_trailers_is_allowed_and_forwarded() -> None:
    head = map_request(fields((b"te", b"trailers")), True, websocket=False).head
    up = build_upstream_request(
        head, ClientContext("192.0.2.1", b"443", False), UpstreamTarget(b"gw:80", True)
    )
    assert (b"TE", b"trailers") in up.headers


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (fields((b"X-Upper", b"v")), "invalid field name"),
        (fields((b"x-bad", b"a\r\nInjected: yes")), "invalid value"),
        (fields((b"x-bad", b"a\nb")), "invalid value"),
        (fields((b"x-bad", b"a\x00b")), "invalid value"),
        (fields((b"x-bad", b" leading")), "invalid value"),
        (fields((b"x-bad", b"trailing\t")), "invalid value"),
        (fields((b"bad name", b"v")), "invalid field name"),
        (fields((b"x:colon", b"v")), "invalid field name"),
        (fields((b"", b"v")), "invalid field name"),
        (fields((b":unknown", b"v")), "unknown pseudo-header"),
        (fields((b"accept", b"*/*"), (b":method", b"GET")), "after a regular field"),
        (fields((b":path", b"/again")), "duplicate :path"),
        ([f for f in BASE if f[0] != b":path"], "missing :scheme or :path"),
        ([f for f in BASE if f[0] != b":method"], ":method"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a b")], "invalid :path"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"a")], "invalid :path"),
        ([(b":method", b"G T"), (b":scheme", b"http"), (b":path", b"/")], ":method"),
        (
            fields(
                base=[
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/"),
                    (b":authority", b"user@host"),
                ]
            ),
            "invalid :authority",
        ),  # fmt: skip
        (fields((b"content-length", b"12a")), "invalid content-length"),
        (fields((b"content-length", b"1"), (b"content-length", b"2")), "conflicting"),
    ],
)
def test_malformed_requests_are_stream_errors(bad: Headers, why: str) -> None:
    # Every one of these would be copied into an HTTP/1.1 head upstream as it is.
    with pytest.raises(StreamProtocolError, match=why):
        map_request(bad, True, websocket=False)


def test_body_framing() -> None:
    post = fields(base=[(b":method", b"POST"), *BASE[1:]])
    with_length = map_request(post + [(b"content-length", b"42")], False, websocket=False).head
    assert (with_length.content_length, with_length.chunked) == (42, False)
    streaming = map_request(post, False, websocket=False).head
    assert (streaming.content_length, streaming.chunked) == (None, True)
    empty = map_request(post, True, websocket=False).head
    assert (empty.content_length, empty.chunked) == (0, False)
    assert (b"content-length", b"0") in empty.headers
    get = map_request(fields(), True, websocket=False).head
    assert (get.content_length, get.chunked) == (None, False)
    assert not any(n == b"content-length" for n, _ in get.headers)


def test_expect_continue() -> None:
    head = map_request(fields((b"expect", b"100-Continue")), False, websocket=False).head
    assert head.expect_continue


def test_plain_connect_maps_to_connect_which_the_rules_refuse() -> None:
    connect = [(b":method", b"CONNECT"), (b":authority", b"db.internal:5432")]
    head = map_request(connect, False, websocket=False).head
    assert (head.method, head.target) == (b"CONNECT", b"db.internal:5432")
    with pytest.raises(StreamProtocolError):
        map_request(connect + [(b":path", b"/")], False, websocket=False)


def _extended_connect(protocol: bytes = b"websocket") -> Headers:
    return [
        (b":method", b"CONNECT"),
        (b":protocol", protocol),
        (b":scheme", b"https"),
        (b":authority", b"chat.example"),
        (b":path", b"/ws?room=1"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat"),
    ]


def test_extended_connect_becomes_a_websocket_upgrade() -> None:
    req = map_request(_extended_connect(), False, websocket=True, random=lambda n: b"k" * n)
    head = req.head
    assert (head.method, head.target, head.upgrade) == (b"GET", b"/ws?room=1", b"websocket")
    assert req.websocket_key == base64.b64encode(b"k" * 16)
    assert (b"sec-websocket-key", req.websocket_key) in head.headers
    assert (b"sec-websocket-protocol", b"chat") in head.headers
    assert not head.chunked
    assert head.content_length is None
    up = build_upstream_request(
        head, ClientContext("192.0.2.1", b"443", False), UpstreamTarget(b"gw:80", True)
    )
    assert up.websocket
    assert (b"Upgrade", b"websocket") in up.headers


def test_extended_connect_needs_the_setting_and_a_known_protocol() -> None:
    with pytest.raises(StreamProtocolError, match=":protocol"):
        map_request(_extended_connect(), False, websocket=False)
    other = map_request(_extended_connect(b"connect-udp"), False, websocket=True).head
    assert other.method == b"CONNECT"
    assert other.upgrade is None
    with pytest.raises(StreamProtocolError, match=":protocol"):
        map_request(fields((b":protocol", b"websocket"), base=BASE[:1]), False, websocket=True)


def test_version_added_when_the_client_left_it_out() -> None:
    no_version = [f for f in _extended_connect() if f[0] != b"sec-websocket-version"]
    head = map_request(no_version, False, websocket=True).head
    assert (b"sec-websocket-version", b"13") in head.headers


def test_trailers() -> None:
    assert map_trailers([(b"grpc-status", b"0")]) == ([(b"grpc-status", b"0")], 11 + 1 + 32)
    for bad in ([(b":status", b"200")], [(b"Upper", b"x")], [(b"connection", b"x")]):
        with pytest.raises(StreamProtocolError):
            map_trailers(bad)
    assert trailer_fields([(b"Grpc-Status", b"0"), (b"Connection", b"x")]) == [
        (b"grpc-status", b"0")
    ]


def test_response_fields_are_lower_cased_without_hop_by_hop() -> None:
    out = response_fields(
        response(
            [
                (b"Content-Type", b"text/plain"),
                (b"Connection", b"keep-alive, X-Private"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-Private", b"secret"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
            ],
            status=201,
        )
    )
    assert out == [
        (b":status", b"201"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


def test_websocket_answer_checks_the_accept_key() -> None:
    key = base64.b64encode(b"0123456789abcdef")
    good = response(
        [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", websocket_accept(key)),
            (b"Sec-WebSocket-Protocol", b"chat"),
        ],
        status=101,
    )
    assert websocket_fields(good, key) == [
        (b":status", b"200"),
        (b"sec-websocket-protocol", b"chat"),
    ]
    assert websocket_fields(good, base64.b64encode(b"another key ....")) is None
    assert websocket_fields(response([], status=101), key) is None
    # RFC 6455 §1.3's example.
    assert websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _parse(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_hand_made_frames() -> None:
    settings, goaway = _parse(refusal_frames())
    assert isinstance(settings, SettingsFrame)
    assert not settings.settings
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.last_stream_id, goaway.error_code) == (0, HTTP_1_1_REQUIRED)
    (first,) = _parse(goaway_frame(2**31 - 1))
    assert isinstance(first, GoAwayFrame)
    assert (first.last_stream_id, first.error_code) == (2**31 - 1, 0)
