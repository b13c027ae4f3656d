"""``dsproxy probe``'s pure parts: URL parsing, the table, the verdict. No sockets."""

from __future__ import annotations

import asyncio

import pytest

from dsproxy.tools.probe import (
    NOT_TRIED,
    ProbeResult,
    ProbeTarget,
    check_ws_path,
    parse_probe_url,
    render_table,
    resolve,
    summary,
    verdict,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:8080", ProbeTarget("localhost", 8080, "/", "localhost:8080")),
        ("http://127.0.0.1", ProbeTarget("127.0.0.1", 80, "/", "127.0.0.1")),
        ("http://[::1]:16980/ws?x=1", ProbeTarget("::1", 16980, "/ws?x=1", "[::1]:16980")),
        (" http://gw.example:81/a/b#frag ", ProbeTarget("gw.example", 81, "/a/b", "gw.example:81")),
        ("HTTP://Gw.Example.COM/", ProbeTarget("gw.example.com", 80, "/", "Gw.Example.COM")),
        (
            "http://[fe80::1%25eth0]:80/",
            ProbeTarget("fe80::1%eth0", 80, "/", "[fe80::1%25eth0]:80"),
        ),
        (
            "http://[::ffff:10.0.0.1]:1/",
            ProbeTarget("::ffff:10.0.0.1", 1, "/", "[::ffff:10.0.0.1]:1"),
        ),
        ("https://gw.example", ProbeTarget("gw.example", 443, "/", "gw.example", tls=True)),
        ("HTTPS://[::1]:16443/x", ProbeTarget("::1", 16443, "/x", "[::1]:16443", tls=True)),
    ],
)
def test_parse_probe_url(url: str, expected: ProbeTarget) -> None:
    assert parse_probe_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://gw.example", "scheme 'ftp'; probe takes http\\[s\\]://"),
        ("wss://gw.example", "scheme 'wss'"),
        ("//gw.example:80", "no scheme"),
        ("localhost:8080", "scheme 'localhost'"),
        ("http://", "no host"),
        ("http://:80/", "no host"),
        ("http://[::]:16980", "unspecified address"),
        ("http://0.0.0.0:16980", "unspecified address"),
        ("http://gw.example:99999", "not a valid URL"),
        ("http://gw.example:port", "not a valid URL"),
        ("http://gw.example:0", "port 0"),
        ("http://[not-v6]:80", "not a valid URL|not an IPv6 address"),
        ("http://[::1:80", "not a valid URL"),
        ("http://user:secret@gw.example", "credentials"),
    ],
)
def test_parse_probe_url_refuses(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_probe_url(url)


@pytest.mark.parametrize(
    ("host", "family"),
    [("127.0.0.1", "ipv4"), ("::1", "ipv6"), ("fe80::1%eth0", "ipv6"), ("localhost", None)],
)
def test_literal_family(host: str, family: str | None) -> None:
    assert ProbeTarget(host, 80, "/", host).literal_family == family


def test_resolve_without_dns() -> None:
    # Literals and localhost never reach getaddrinfo.
    localhost = asyncio.run(resolve(parse_probe_url("http://localhost:1")))
    assert localhost == [("ipv4", "127.0.0.1"), ("ipv6", "::1")]
    assert asyncio.run(resolve(parse_probe_url("http://10.1.2.3:1"))) == [("ipv4", "10.1.2.3")]
    assert asyncio.run(resolve(parse_probe_url("http://[2001:db8::1]:1"))) == [
        ("ipv6", "2001:db8::1")
    ]


def test_check_ws_path() -> None:
    assert check_ws_path("/ws") == "/ws"
    with pytest.raises(ValueError, match="must start with '/'"):
        check_ws_path("ws")


def _result(http: int | str, websocket: str = NOT_TRIED, family: str = "ipv4") -> ProbeResult:
    address = "127.0.0.1" if family == "ipv4" else "::1"
    return ProbeResult("ipv4" if family == "ipv4" else "ipv6", address, http, websocket, 1.25)


@pytest.mark.parametrize(
    ("results", "code"),
    [
        ([_result(200)], 0),
        ([_result(200, "ok"), _result(200, "ok", "ipv6")], 0),
        ([_result(301), _result(404, family="ipv6")], 0),  # reached: the server answered
        ([_result(200), _result(502, family="ipv6")], 1),
        ([_result(200), _result("connection refused", family="ipv6")], 1),
        ([_result(200, "handshake refused: HTTP 404")], 1),
        ([_result(200, "ok"), _result(200, "timeout after 5s", "ipv6")], 1),
        ([], 1),
    ],
)
def test_verdict(results: list[ProbeResult], code: int) -> None:
    assert verdict(results) == code


def test_render_table_aligns_columns() -> None:
    results = [
        ProbeResult("ipv4", "127.0.0.1", 200, "ok", 0.84),
        ProbeResult("ipv6", "::1", "connection refused", "not tried (HTTP failed)", None),
    ]
    assert render_table(results).splitlines() == [
        "FAMILY  ADDRESS    HTTP                WEBSOCKET                LATENCY",
        "ipv4    127.0.0.1  200                 ok                       0.8 ms",
        "ipv6    ::1        connection refused  not tried (HTTP failed)  -",
    ]


def test_render_table_has_a_tls_column_for_https() -> None:
    results = [
        ProbeResult("ipv4", "127.0.0.1", 200, "ok", 0.84, "TLSv1.3 h2"),
        ProbeResult("ipv6", "::1", "TLS: certificate verify failed", "-", None),
    ]
    assert render_table(results).splitlines() == [
        "FAMILY  ADDRESS    HTTP                            TLS         WEBSOCKET  LATENCY",
        "ipv4    127.0.0.1  200                             TLSv1.3 h2  ok         0.8 ms",
        "ipv6    ::1        TLS: certificate verify failed  -           -          -",
    ]


def test_summary() -> None:
    both = [_result(200, "ok"), _result(200, "ok", "ipv6")]
    assert summary(both) == "ok: reached over ipv4 and ipv6"
    assert summary([_result(200), _result(503, family="ipv6")]) == "FAIL: ipv6"
    assert summary([]) == "FAIL: nothing tested"
