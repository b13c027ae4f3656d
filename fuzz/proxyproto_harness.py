"""Drive the PROXY protocol header parser over bytes, and build headers to feed it.

Shared by the unit tests (tests/unit/test_proxyproto.py), the integration tests
(which send the built headers over real sockets) and the fuzz target
(fuzz/fuzz_proxyproto.py). No I/O.

An outcome is what the preamble stage would act on:

* ``("parsed", header, rest)``: the header, and every byte behind it (what the
  parser handed back plus what was not fed yet), which the HTTP codec gets next;
* ``("error", name)``: the ``ProxyHeaderError`` subclass raised (the connection
  is closed), ``TruncatedHeader`` when the input ended inside a header.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from dsproxy.net.addr import HostPort
from dsproxy.net.proxyproto import (
    PP2_TYPE_CRC32C,
    V2_PROXY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    crc32c,
)
from fuzz.harness import pieces

Outcome = tuple[object, ...]


def run(data: bytes, cuts: Iterable[int] = ()) -> Outcome:
    """Feed ``data`` in pieces cut at ``cuts``, then the end of input."""
    parser = ProxyHeaderParser()
    parts = pieces(data, cuts)
    try:
        for i, piece in enumerate(parts):
            parsed = parser.feed(piece)
            if parsed is not None:
                return ("parsed", parsed.header, parsed.rest + b"".join(parts[i + 1 :]))
        parser.feed_eof()
    except ProxyHeaderError as exc:
        return ("error", type(exc).__name__)
    raise AssertionError("feed_eof returned without a header")


# -- building headers (what a load balancer sends) --------------------------------
def v1(source: HostPort, destination: HostPort) -> bytes:
    """A v1 line for TCP over the family of ``source`` (both addresses must share it)."""
    proto = "TCP6" if ":" in source.host else "TCP4"
    line = f"PROXY {proto} {source.host} {destination.host} {source.port} {destination.port}\r\n"
    return line.encode("ascii")


def v1_unknown(rest_of_line: bytes = b"") -> bytes:
    return b"PROXY UNKNOWN" + (b" " + rest_of_line if rest_of_line else b"") + b"\r\n"


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(
    source: HostPort | None = None,
    destination: HostPort | None = None,
    *,
    command: int = V2_PROXY,
    family: int | None = None,
    block: bytes | None = None,
    tlvs: bytes = b"",
    checksum: bool = False,
    version: int = 2,
) -> bytes:
    """A v2 header: TCP over the family of ``source`` unless ``family``/``block`` are given.

    ``checksum`` appends a CRC32C TLV with the right value (after ``tlvs``).
    """
    if block is None:
        block = b""
        if source is not None and destination is not None:
            src = ipaddress.ip_address(source.host)
            dst = ipaddress.ip_address(destination.host)
            block = src.packed + dst.packed + struct.pack("!HH", source.port, destination.port)
            if family is None:
                family = 0x11 if src.version == 4 else 0x21
    if family is None:
        family = 0x00
    body = block + tlvs
    if checksum:
        body += tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    head = V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", len(body))
    header = head + body
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


# -- the invariants (shared by the property tests and the fuzz target) --------------
def split_invariance_error(whole: Outcome, split: Outcome) -> str | None:
    """Why the same bytes cut otherwise gave another outcome, or None."""
    if whole == split:
        return None
    return f"the outcome depends on how the bytes were cut:\n  {whole}\n  {split}"


def consistency_error(data: bytes, outcome: Outcome) -> str | None:
    """A parsed header that does not describe ``data``, or does not round-trip, or None."""
    if outcome[0] != "parsed":
        return None
    header, rest = outcome[1], outcome[2]
    assert isinstance(header, ProxyHeader)
    if data[header.length :] != rest:
        return f"bytes behind the header lost or changed: {rest!r} vs {data[header.length :]!r}"
    source, destination = header.source, header.destination
    if source is None or destination is None:
        return None
    for address in (source.host, destination.host):
        if ":" in address and ipaddress.IPv6Address(address).ipv4_mapped is not None:
            return f"IPv4-mapped address not normalised: {address}"
    if (":" in source.host) != (":" in destination.host):
        return None  # TCP6 with one IPv4-mapped address: no same-family form to re-send
    # The addresses it gave, sent again in the canonical form, read back the same.
    again = v1(source, destination) if header.version == 1 else v2(source, destination)
    reparsed = run(again + b"x")
    if reparsed[0] != "parsed" or reparsed[2] != b"x":
        return f"{header} does not round-trip: {reparsed}"
    back = reparsed[1]
    assert isinstance(back, ProxyHeader)
    if (back.source, back.destination) != (source, destination):
        return f"{header} does not round-trip: {back}"
    return None
