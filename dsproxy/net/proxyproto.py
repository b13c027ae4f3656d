"""The PROXY protocol header (v1 text, v2 binary), parsed sans-IO.

A load balancer that speaks the PROXY protocol opens each connection with one
header carrying the client's address, then relays the client's bytes. The
format is haproxy's "The PROXY protocol, versions 1 & 2" (doc/proxy-protocol.txt);
docs/deploy.md says where it is used. ``ProxyHeaderParser`` takes the bytes
as they arrive and answers ``None`` (more bytes needed), a ``Parsed`` (the
header, and the bytes read behind it, which belong to the next protocol), or
raises a ``ProxyHeaderError`` naming what was wrong.

Rules (what the parser accepts, and the order it checks them in; every check
is decided by a prefix of the input, so how the bytes are cut never changes
the outcome):

* The first byte picks the version: ``P`` v1, CR v2, anything else is
  ``BadSignature`` (an HTTP request or a TLS hello is refused at once).
* v1: ``PROXY`` SP (``TCP4`` | ``TCP6``) SP src SP dst SP sport SP dport CRLF,
  at most 107 bytes with the CRLF. Fields separated by exactly one space;
  addresses in the family the line names (no scope ids); ports decimal
  0-65535 without leading zeros. ``PROXY UNKNOWN`` ends the line with CRLF or
  SP and anything up to the CRLF (ignored). The line ends at its first CR or
  LF, which must be a CR followed by LF.
* v2: the 12-byte signature; version 2 (else ``UnsupportedVersion``); command
  LOCAL or PROXY; a family/protocol byte the spec defines; a length that keeps
  the whole header within ``V2_MAX_BYTES``; an address block as long as the
  family needs. Then TLVs, each of which must fit, and a CRC32C TLV, when
  present, must match. TLVs are otherwise skipped.
* The client's address: v1 TCP4/TCP6 and v2 PROXY over TCP (IPv4/IPv6) give it;
  v1 UNKNOWN, v2 LOCAL and v2 families that are not TCP over IP (UDP, UNIX,
  UNSPEC) mean "use the socket's peer" (``ProxyHeader.source is None``), as
  the spec says a receiver falls back to the real connection's endpoints.
  IPv4-mapped IPv6 addresses are given as IPv4 (``normalise_ip``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

from dsproxy.net.addr import HostPort, normalise_ip

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107  # the longest valid line, CRLF included (the spec's worst case)
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES: Final = 16  # signature, version/command, family/protocol, length
# The whole v2 header, TLVs included: the spec puts no bound under 64 KiB; nginx reads
# headers of up to 4 KiB, enough for every TLV a load balancer sends in practice.
V2_MAX_BYTES: Final = 4096

V2_LOCAL: Final = 0x0
V2_PROXY: Final = 0x1
# Family/protocol bytes the spec defines, and the address block each needs.
V2_UNSPEC: Final = 0x00
V2_TCP4: Final = 0x11
V2_TCP6: Final = 0x21
_V2_ADDRESS_BYTES: Final = {
    V2_UNSPEC: 0,
    V2_TCP4: 12,
    0x12: 12,  # UDP over IPv4
    V2_TCP6: 36,
    0x22: 36,  # UDP over IPv6
    0x31: 216,  # UNIX stream
    0x32: 216,  # UNIX datagram
}
PP2_TYPE_CRC32C: Final = 0x03
_TLV_HEAD_BYTES: Final = 3  # type, 16-bit length


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; ``reason`` is a short label."""

    reason = "malformed"


class BadSignature(ProxyHeaderError):
    """The connection does not start with a PROXY v1 or v2 signature."""

    reason = "bad_signature"


class UnsupportedVersion(ProxyHeaderError):
    """A v2 signature with a version other than 2."""

    reason = "unsupported_version"


class MalformedHeader(ProxyHeaderError):
    """A header that breaks the format (fields, addresses, ports, lengths, TLVs)."""

    reason = "malformed"


class HeaderTooLong(ProxyHeaderError):
    """No CRLF within 107 bytes (v1), or a v2 length beyond ``V2_MAX_BYTES``."""

    reason = "too_long"


class TruncatedHeader(ProxyHeaderError):
    """The connection ended before the header did."""

    reason = "truncated"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header said. ``source`` None: use the socket's peer (UNKNOWN, LOCAL, ...)."""

    version: Literal[1, 2]
    source: HostPort | None
    destination: HostPort | None
    length: int  # bytes the header took on the wire


@dataclass(frozen=True, slots=True)
class Parsed:
    header: ProxyHeader
    rest: bytes  # the bytes read behind the header: the next protocol's


class ProxyHeaderParser:
    """Bytes in until one header is complete; see the module docstring for the rules."""

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = b""
        self._done = False

    @property
    def received(self) -> int:
        """Bytes held so far (0: the peer has sent nothing)."""
        return len(self._buf)

    def feed(self, data: bytes) -> Parsed | None:
        """The header and the bytes behind it, or None while more bytes are needed.

        Raises ``ProxyHeaderError``. After a header (or an error) nothing more may be fed.
        """
        if self._done:
            raise RuntimeError("the PROXY header parser is done")
        buf = self._buf + data if self._buf else bytes(data)
        try:
            result = parse_header(buf)
        except ProxyHeaderError:
            self._done = True
            raise
        if result is None:
            self._buf = buf
            return None
        self._done = True
        self._buf = b""
        return result

    def feed_eof(self) -> None:
        """The peer closed: unless a header was complete, raise ``TruncatedHeader``."""
        if not self._done:
            self._done = True
            raise TruncatedHeader(f"connection closed after {len(self._buf)} bytes of the header")


def parse_header(buf: bytes) -> Parsed | None:
    """Parse one header at the start of ``buf``; None while ``buf`` is a proper prefix of one."""
    if not buf:
        return None
    first = buf[0]
    if first == V1_PREFIX[0]:
        return _parse_v1(buf)
    if first == V2_SIGNATURE[0]:
        return _parse_v2(buf)
    raise BadSignature("not a PROXY protocol header")


# ---------------------------------------------------------------------------- v1
def _parse_v1(buf: bytes) -> Parsed | None:
    head = buf[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise BadSignature("not a PROXY protocol header")
    window = buf[:V1_MAX_BYTES]
    cr, lf = window.find(b"\r"), window.find(b"\n")
    if lf >= 0 and (cr < 0 or lf < cr):
        raise MalformedHeader("v1 line ends in LF without CR")
    if cr < 0:
        if len(buf) >= V1_MAX_BYTES:
            raise HeaderTooLong(f"v1 line has no CRLF within {V1_MAX_BYTES} bytes")
        return None
    if cr + 2 > V1_MAX_BYTES:
        raise HeaderTooLong(f"v1 line has no CRLF within {V1_MAX_BYTES} bytes")
    if cr + 1 == len(buf):
        return None  # the LF is still to come
    if buf[cr + 1] != 0x0A:
        raise MalformedHeader("v1 line has a CR without LF")
    length = cr + 2
    header = _v1_line(buf[len(V1_PREFIX) : cr], length)
    return Parsed(header, buf[length:])


def _v1_line(line: bytes, length: int) -> ProxyHeader:
    """The part of a v1 line after ``PROXY `` and before the CRLF."""
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, None, None, length)  # the rest of the line is ignored
    fields = line.split(b" ")
    if len(fields) != 5:
        raise MalformedHeader("v1 line needs: protocol, two addresses, two ports, one space apart")
    proto, src, dst, sport, dport = fields
    if proto == b"TCP4":
        version = 4
    elif proto == b"TCP6":
        version = 6
    else:
        raise MalformedHeader("v1 protocol must be TCP4, TCP6 or UNKNOWN")
    source = HostPort(_v1_address(src, version), _v1_port(sport))
    destination = HostPort(_v1_address(dst, version), _v1_port(dport))
    return ProxyHeader(1, source, destination, length)


_V4_CHARS: Final = frozenset(b"0123456789.")
_V6_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:.")


def _v1_address(text: bytes, version: int) -> str:
    allowed = _V4_CHARS if version == 4 else _V6_CHARS
    if not text or not allowed.issuperset(text):
        raise MalformedHeader(f"v1 address is not an IPv{version} address")
    try:
        if version == 4:
            return str(ipaddress.IPv4Address(text.decode("ascii")))
        return normalise_ip(str(ipaddress.IPv6Address(text.decode("ascii"))))
    except ValueError:
        raise MalformedHeader(f"v1 address is not an IPv{version} address") from None


def _v1_port(text: bytes) -> int:
    # bytes.isdigit is ASCII-only; int() alone would take "+1", " 1" and "1_0".
    if not text.isdigit() or len(text) > 5 or (text[0] == 0x30 and len(text) > 1):
        raise MalformedHeader("v1 port must be a decimal number without leading zeros")
    port = int(text)
    if port > 65535:
        raise MalformedHeader("v1 port must be at most 65535")
    return port


# ---------------------------------------------------------------------------- v2
def _parse_v2(buf: bytes) -> Parsed | None:
    n = len(buf)
    if buf[:12] != V2_SIGNATURE[:n]:
        raise BadSignature("not a PROXY protocol header")
    if n < 13:
        return None
    version, command = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        raise UnsupportedVersion(f"PROXY protocol version {version} (only 1 and 2 exist)")
    if command not in (V2_LOCAL, V2_PROXY):
        raise MalformedHeader(f"v2 command {command:#x} is neither LOCAL nor PROXY")
    if n < 14:
        return None
    family = buf[13]
    needed = _V2_ADDRESS_BYTES.get(family)
    if needed is None:
        raise MalformedHeader(f"v2 family/protocol {family:#04x} is not defined")
    if n < V2_FIXED_BYTES:
        return None
    size = int.from_bytes(buf[14:16], "big")
    length = V2_FIXED_BYTES + size
    if length > V2_MAX_BYTES:
        raise HeaderTooLong(f"v2 header of {length} bytes (at most {V2_MAX_BYTES})")
    if command == V2_PROXY and size < needed:
        raise MalformedHeader(f"v2 address block of {size} bytes, {needed} needed")
    if n < length:
        return None
    rest = buf[length:]
    if command == V2_LOCAL or family == V2_UNSPEC:
        # LOCAL: the balancer's own connection (a health check); UNSPEC: an unknown
        # protocol. Either way the block (addresses, TLVs) is to be ignored.
        return Parsed(ProxyHeader(2, None, None, length), rest)
    _check_tlvs(buf[:length], V2_FIXED_BYTES + needed)
    if family not in (V2_TCP4, V2_TCP6):
        # UDP or UNIX: not a connection we can stand for; use the socket's peer.
        return Parsed(ProxyHeader(2, None, None, length), rest)
    block = buf[V2_FIXED_BYTES : V2_FIXED_BYTES + needed]
    width = 4 if family == V2_TCP4 else 16
    src, dst = _v2_address(block[:width]), _v2_address(block[width : 2 * width])
    ports = block[2 * width :]
    source = HostPort(src, int.from_bytes(ports[:2], "big"))
    destination = HostPort(dst, int.from_bytes(ports[2:4], "big"))
    return Parsed(ProxyHeader(2, source, destination, length), rest)


def _v2_address(raw: bytes) -> str:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _check_tlvs(header: bytes, start: int) -> None:
    """Every TLV from ``start`` to the end must fit; a CRC32C one must match."""
    pos, end = start, len(header)
    checksum_at = -1
    while pos < end:
        if end - pos < _TLV_HEAD_BYTES:
            raise MalformedHeader("v2 TLV cut short by the header length")
        kind = header[pos]
        size = int.from_bytes(header[pos + 1 : pos + 3], "big")
        value_at = pos + _TLV_HEAD_BYTES
        if value_at + size > end:
            raise MalformedHeader("v2 TLV runs past the header length")
        if kind == PP2_TYPE_CRC32C:
            if size != 4 or checksum_at >= 0:
                raise MalformedHeader("v2 CRC32C TLV must be one 4-byte value")
            checksum_at = value_at
        pos = value_at + size
    if checksum_at >= 0:
        sent = header[checksum_at : checksum_at + 4]
        zeroed = header[:checksum_at] + b"\x00\x00\x00\x00" + header[checksum_at + 4 :]
        if crc32c(zeroed).to_bytes(4, "big") != sent:
            raise MalformedHeader("v2 CRC32C does not match the header")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as RFC 4960 appendix B; the v2 checksum TLV carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
