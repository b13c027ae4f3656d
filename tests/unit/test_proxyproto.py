"""The PROXY protocol header parser (dsproxy/net/proxyproto.py), without sockets.

Every valid header is fed whole, byte by byte and cut at every point, with bytes
behind it that must come out unchanged; every error class is raised for what the
spec (haproxy's doc/proxy-protocol.txt) rules out, however the bytes are cut;
hypothesis builds v1 and v2 headers from random addresses and reads them back.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsproxy.net.addr import HostPort
from dsproxy.net.proxyproto import (
    PP2_TYPE_CRC32C,
    V1_MAX_BYTES,
    V2_LOCAL,
    V2_MAX_BYTES,
    V2_SIGNATURE,
    BadSignature,
    HeaderTooLong,
    MalformedHeader,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    TruncatedHeader,
    UnsupportedVersion,
    crc32c,
)
from fuzz.proxyproto_harness import (
    consistency_error,
    run,
    split_invariance_error,
    tlv,
    v1,
    v1_unknown,
    v2,
)

SRC4, DST4 = HostPort("203.0.113.7", 51000), HostPort("10.0.0.1", 443)
SRC6, DST6 = HostPort("2001:db8::7", 51000), HostPort("2001:db8::1", 443)
TAIL = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"  # what follows the header on the wire
MAX6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
NOOP = 0x04
UNIQUE_ID = 0x05


def _mapped_v2() -> bytes:
    block = (
        ipaddress.IPv6Address("::ffff:198.51.100.9").packed
        + ipaddress.IPv6Address("::ffff:10.0.0.1").packed
        + struct.pack("!HH", 40000, 80)
    )
    return v2(family=0x21, block=block)


def _padded_to_max() -> bytes:
    """A v2 header of exactly V2_MAX_BYTES, padded with a NOOP TLV."""
    fill = V2_MAX_BYTES - len(v2(SRC4, DST4)) - 3
    return v2(SRC4, DST4, tlvs=tlv(NOOP, b"\x00" * fill))


# (header bytes, the source it gives or None for "use the socket's peer", version)
VALID = {
    "v1-tcp4": (v1(SRC4, DST4), SRC4, 1),
    "v1-tcp6": (v1(SRC6, DST6), SRC6, 1),
    "v1-tcp6-mapped": (
        b"PROXY TCP6 ::ffff:198.51.100.9 ::ffff:10.0.0.1 40000 80\r\n",
        HostPort("198.51.100.9", 40000),
        1,
    ),
    "v1-tcp6-uppercase": (b"PROXY TCP6 2001:DB8::7 ::1 1 0\r\n", HostPort("2001:db8::7", 1), 1),
    "v1-ports-0-and-65535": (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        HostPort("0.0.0.0", 0),
        1,
    ),
    "v1-tcp6-longest": (
        f"PROXY TCP6 {MAX6} {MAX6} 65535 65535\r\n".encode(),
        HostPort(MAX6, 65535),
        1,
    ),
    "v1-unknown": (v1_unknown(), None, 1),
    "v1-unknown-longest": (
        v1_unknown(f"{MAX6} {MAX6} 65535 65535".encode()),
        None,
        1,
    ),
    "v2-tcp4": (v2(SRC4, DST4), SRC4, 2),
    "v2-tcp6": (v2(SRC6, DST6), SRC6, 2),
    "v2-tcp6-mapped": (_mapped_v2(), HostPort("198.51.100.9", 40000), 2),
    "v2-tlvs-and-crc32c": (
        v2(SRC6, DST6, tlvs=tlv(UNIQUE_ID, b"conn-1") + tlv(0xEA, b"vpce-0abc"), checksum=True),
        SRC6,
        2,
    ),
    "v2-empty-tlv": (v2(SRC4, DST4, tlvs=tlv(NOOP, b"")), SRC4, 2),
    "v2-longest": (_padded_to_max(), SRC4, 2),
    "v2-local": (v2(command=V2_LOCAL), None, 2),
    "v2-local-with-block": (v2(SRC4, DST4, command=V2_LOCAL, tlvs=b"\xff"), None, 2),
    "v2-unspec": (v2(family=0x00, block=b"ignored"), None, 2),
    "v2-udp4": (v2(SRC4, DST4, family=0x12), None, 2),
    "v2-udp6": (v2(SRC6, DST6, family=0x22), None, 2),
    "v2-unix-stream": (v2(family=0x31, block=b"/a".ljust(108, b"\0") * 2), None, 2),
    "v2-unix-dgram": (v2(family=0x32, block=b"\0" * 216), None, 2),
}


def _expect_parsed(
    outcome: tuple[object, ...], header: bytes, source: object, version: int
) -> None:
    assert outcome[0] == "parsed", outcome
    parsed = outcome[1]
    assert isinstance(parsed, ProxyHeader)
    assert parsed.version == version
    assert parsed.length == len(header)
    assert parsed.source == source
    assert (parsed.destination is None) == (source is None)
    assert outcome[2] == TAIL


@pytest.mark.parametrize(("header", "source", "version"), VALID.values(), ids=VALID.keys())
def test_valid_header_at_every_split_point(header: bytes, source: object, version: int) -> None:
    data = header + TAIL
    _expect_parsed(run(data), header, source, version)
    _expect_parsed(run(data, range(len(data))), header, source, version)  # byte by byte
    for cut in range(1, len(data)):
        _expect_parsed(run(data, [cut]), header, source, version)


@pytest.mark.parametrize(("header", "source", "version"), VALID.values(), ids=VALID.keys())
def test_valid_header_cut_short_is_truncated(header: bytes, source: object, version: int) -> None:
    for end in range(len(header)):
        assert run(header[:end]) == ("error", "TruncatedHeader"), end


def test_header_alone_leaves_nothing_behind() -> None:
    parser = ProxyHeaderParser()
    parsed = parser.feed(v1(SRC4, DST4))
    assert parsed is not None
    assert parsed.rest == b""
    parser.feed_eof()  # a complete header: the end of input is not an error


def test_parser_state() -> None:
    parser = ProxyHeaderParser()
    assert parser.received == 0
    assert parser.feed(b"PROXY TCP4 ") is None
    assert parser.received == 11
    with pytest.raises(TruncatedHeader, match="after 11 bytes"):
        parser.feed_eof()
    done = ProxyHeaderParser()
    assert done.feed(v1_unknown()) is not None
    with pytest.raises(RuntimeError):
        done.feed(b"x")
    failed = ProxyHeaderParser()
    with pytest.raises(BadSignature):
        failed.feed(b"GET")
    with pytest.raises(RuntimeError):
        failed.feed(b" / HTTP/1.1")


def _v2_raw(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", size) + body


def _bad_crc() -> bytes:
    good = v2(SRC4, DST4, checksum=True)
    return good[:-1] + bytes([good[-1] ^ 1])


BLOCK4 = v2(SRC4, DST4)[16:]
ERRORS: dict[str, tuple[bytes, type[ProxyHeaderError]]] = {
    # not a PROXY header at all
    "http-request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", BadSignature),
    "tls-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", BadSignature),
    "lower-case-proxy": (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", BadSignature),
    "proxy-without-space": (b"PROXY\r\n", BadSignature),
    "proxyx": (b"PROXYX TCP4\r\n", BadSignature),
    "v2-signature-off-by-one-byte": (V2_SIGNATURE[:11] + b"\x0b\x21\x11\x00\x00", BadSignature),
    "v2-crlf-only": (b"\r\n\r\nGET", BadSignature),
    # v2 versions other than 2
    "v2-version-1": (_v2_raw(0x11, 0x11, BLOCK4), UnsupportedVersion),
    "v2-version-3": (_v2_raw(0x31, 0x11, BLOCK4), UnsupportedVersion),
    "v2-version-0": (_v2_raw(0x01, 0x11, BLOCK4), UnsupportedVersion),
    # v1 syntax
    "v1-two-spaces": (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-tab": (b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-trailing-space": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", MalformedHeader),
    "v1-too-few-fields": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", MalformedHeader),
    "v1-too-many-fields": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", MalformedHeader),
    "v1-tcp5": (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-udp4": (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-empty": (b"PROXY \r\n", MalformedHeader),
    "v1-unknownx": (b"PROXY UNKNOWNX\r\n", MalformedHeader),
    "v1-lf-only": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", MalformedHeader),
    "v1-lf-before-crlf": (b"PROXY UNKNOWN a\nb\r\n", MalformedHeader),
    "v1-cr-without-lf": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET", MalformedHeader),
    "v1-ipv6-in-tcp4": (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-ipv4-in-tcp6": (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-ipv4-src-in-tcp6": (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", MalformedHeader),
    "v1-ipv4-leading-zero": (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-ipv4-octet-256": (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-ipv4-three-octets": (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-ipv6-scope-id": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", MalformedHeader),
    "v1-ipv6-bracketed": (b"PROXY TCP6 [::1] ::1 1 2\r\n", MalformedHeader),
    "v1-ipv6-two-double-colons": (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", MalformedHeader),
    "v1-hostname": (b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", MalformedHeader),
    "v1-port-65536": (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", MalformedHeader),
    "v1-port-leading-zero": (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", MalformedHeader),
    "v1-port-plus": (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", MalformedHeader),
    "v1-port-underscore": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", MalformedHeader),
    "v1-port-negative": (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", MalformedHeader),
    "v1-port-six-digits": (b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n", MalformedHeader),
    "v1-port-unicode-digit": ("PROXY TCP4 1.2.3.4 5.6.7.8 ١ 2\r\n".encode(), MalformedHeader),
    "v1-port-empty": (b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n", MalformedHeader),
    # v2 structure
    "v2-command-2": (_v2_raw(0x22, 0x11, BLOCK4), MalformedHeader),
    "v2-command-f": (_v2_raw(0x2F, 0x11, BLOCK4), MalformedHeader),
    "v2-family-4": (_v2_raw(0x21, 0x41, BLOCK4), MalformedHeader),
    "v2-protocol-3": (_v2_raw(0x21, 0x13, BLOCK4), MalformedHeader),
    "v2-unspec-stream": (_v2_raw(0x21, 0x01, BLOCK4), MalformedHeader),
    "v2-local-undefined-family": (_v2_raw(0x20, 0x44, b""), MalformedHeader),
    "v2-tcp4-short-block": (_v2_raw(0x21, 0x11, BLOCK4[:11]), MalformedHeader),
    "v2-tcp6-short-block": (_v2_raw(0x21, 0x21, b"\0" * 35), MalformedHeader),
    "v2-unix-short-block": (_v2_raw(0x21, 0x31, b"\0" * 215), MalformedHeader),
    "v2-tlv-head-cut": (v2(SRC4, DST4, tlvs=b"\x05\x00"), MalformedHeader),
    "v2-tlv-value-overruns": (v2(SRC4, DST4, tlvs=b"\x05\x00\x09abc"), MalformedHeader),
    "v2-crc32c-mismatch": (_bad_crc(), MalformedHeader),
    "v2-crc32c-wrong-size": (v2(SRC4, DST4, tlvs=tlv(PP2_TYPE_CRC32C, b"\0" * 3)), MalformedHeader),
    "v2-crc32c-twice": (
        v2(SRC4, DST4, tlvs=tlv(PP2_TYPE_CRC32C, b"\0" * 4), checksum=True),
        MalformedHeader,
    ),
    # length limits
    "v1-no-crlf-in-107-bytes": (b"PROXY UNKNOWN " + b"a" * 93, HeaderTooLong),
    "v1-crlf-ends-at-byte-108": (b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n", HeaderTooLong),
    "v1-tcp6-longer-than-107": (
        f"PROXY TCP6 {MAX6} {MAX6} 65535 0000065535\r\n".encode(),
        HeaderTooLong,
    ),
    "v2-length-over-the-limit": (
        _v2_raw(0x21, 0x11, b"", length=V2_MAX_BYTES - 16 + 1),
        HeaderTooLong,
    ),
    "v2-length-65535": (_v2_raw(0x21, 0x11, b"", length=65535), HeaderTooLong),
}


@pytest.mark.parametrize(("data", "error"), ERRORS.values(), ids=ERRORS.keys())
def test_error_at_every_split_point(data: bytes, error: type[ProxyHeaderError]) -> None:
    expected = ("error", error.__name__)
    assert run(data) == expected
    assert run(data + TAIL) == expected  # bytes behind a bad header change nothing
    assert run(data, range(len(data))) == expected
    for cut in range(1, len(data)):
        assert run(data, [cut]) == expected


def test_errors_are_found_as_early_as_the_bytes_allow() -> None:
    """A connection that is not PROXY is refused on its first byte, not at the deadline."""
    with pytest.raises(BadSignature):
        ProxyHeaderParser().feed(b"G")
    with pytest.raises(UnsupportedVersion):
        ProxyHeaderParser().feed(V2_SIGNATURE + b"\x11")
    with pytest.raises(HeaderTooLong):  # the length field alone says so
        ProxyHeaderParser().feed(V2_SIGNATURE + b"\x21\x11\xff\xff")
    with pytest.raises(MalformedHeader):
        ProxyHeaderParser().feed(V2_SIGNATURE + b"\x21\x11\x00\x0b")


def test_v1_line_length_limit_is_107_bytes_with_the_crlf() -> None:
    longest = v1_unknown(b"a" * (V1_MAX_BYTES - len(v1_unknown()) - 1))
    assert len(longest) == V1_MAX_BYTES
    assert run(longest)[0] == "parsed"
    assert run(v1_unknown(b"a" * (V1_MAX_BYTES - len(v1_unknown())))) == (
        "error",
        "HeaderTooLong",
    )


def test_errors_carry_a_reason_label() -> None:
    reasons = {
        cls.reason
        for cls in (BadSignature, UnsupportedVersion, MalformedHeader, HeaderTooLong)
        + (TruncatedHeader,)
    }
    assert reasons == {"bad_signature", "unsupported_version", "malformed", "too_long", "truncated"}


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / the Castagnoli check value


# -- hypothesis: random addresses and ports, sent and read back ----------------------
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
tails = st.binary(max_size=64)


def _expected(host: str) -> str:
    mapped = ipaddress.ip_address(host)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        return str(mapped.ipv4_mapped)
    return host


@given(
    family=st.sampled_from([ipv4s, ipv6s]).flatmap(lambda s: st.tuples(s, s)),
    sport=ports,
    dport=ports,
    version=st.sampled_from([1, 2]),
    tail=tails,
    cuts=st.lists(st.integers(0, 200), max_size=6),
    tlvs=st.lists(st.tuples(st.integers(0, 255).filter(lambda k: k != 3), st.binary(max_size=40))),
    checksum=st.booleans(),
)
def test_round_trip(
    family: tuple[str, str],
    sport: int,
    dport: int,
    version: int,
    tail: bytes,
    cuts: list[int],
    tlvs: list[tuple[int, bytes]],
    checksum: bool,
) -> None:
    src, dst = HostPort(family[0], sport), HostPort(family[1], dport)
    if version == 1:
        header = v1(src, dst)
    else:
        header = v2(src, dst, tlvs=b"".join(tlv(k, v) for k, v in tlvs), checksum=checksum)
    data = header + tail
    whole = run(data)
    assert whole[0] == "parsed"
    parsed = whole[1]
    assert isinstance(parsed, ProxyHeader)
    assert parsed.source == HostPort(_expected(src.host), sport)
    assert parsed.destination == HostPort(_expected(dst.host), dport)
    assert parsed.length == len(header)
    assert whole[2] == tail
    assert run(data, cuts) == whole
    assert consistency_error(data, whole) is None


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_any_bytes_give_a_header_or_a_header_error(data: bytes, cuts: list[int]) -> None:
    whole = run(data)  # raises nothing but ProxyHeaderError (run catches only those)
    assert split_invariance_error(whole, run(data, cuts)) is None
    assert consistency_error(data, whole) is None


@given(
    prefix=st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE + b"\x21"]),
    data=st.binary(max_size=120),
    cuts=st.lists(st.integers(0, 140), max_size=5),
)
def test_bytes_behind_a_signature(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    whole = run(prefix + data)
    assert split_invariance_error(whole, run(prefix + data, cuts)) is None
    assert consistency_error(prefix + data, whole) is None
