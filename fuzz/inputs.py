"""The byte layout of a fuzz input, shared by the targets and their seeds.

``[k][cut 1: 2 bytes]...[cut k: 2 bytes][the message bytes]``, k = first byte % 5:
the message bytes are fed whole and, separately, cut at those offsets.
A client-side input starts with one more byte choosing the request method.
"""

from __future__ import annotations

METHODS = (b"GET", b"HEAD", b"POST")
MAX_CUTS = 4


def decode(data: bytes) -> tuple[list[int], bytes]:
    if not data:
        return [], b""
    k = data[0] % (MAX_CUTS + 1)
    head = 1 + 2 * k
    cuts = [int.from_bytes(data[1 + 2 * i : 3 + 2 * i], "big") for i in range(k)]
    return cuts, data[head:]


def encode(raw: bytes, cuts: list[int] = []) -> bytes:  # noqa: B006 (never mutated)
    return bytes([len(cuts)]) + b"".join(c.to_bytes(2, "big") for c in cuts) + raw


SERVER_SEEDS = [
    encode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    encode(
        b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", [20]
    ),
    encode(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        [40, 60],
    ),
    encode(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    ),
    encode(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    encode(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
]
CLIENT_SEEDS = [
    b"\x00" + encode(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    b"\x02" + encode(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    b"\x00"
    + encode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: v\r\n\r\n"),
    b"\x01" + encode(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
    b"\x00" + encode(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nRAW", [30]),
    b"\x00" + encode(b"HTTP/1.0 200 OK\r\n\r\nuntil eof"),
]
_V2 = b"\r\n\r\n\x00\r\nQUIT\n"  # the v2 signature
_DB8_7 = b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x07"  # 2001:db8::7
_DB8_1 = b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"  # 2001:db8::1
_TLVS = b"\x05\x00\x04id-1\x03\x00\x04\x41\x18\x86\x97"  # a unique id, then CRC32C
PROXY_SEEDS = [
    encode(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n\r\n", [6, 30]),
    encode(b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 51000 443\r\n\x16\x03\x01", [47]),
    encode(b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\nrest"),
    encode(b"PROXY UNKNOWN\r\n"),
    # v2 PROXY TCP over IPv4 (203.0.113.7:51000 -> 10.0.0.1:443), then a request byte
    encode(_V2 + b"\x21\x11\x00\x0c\xcb\x00\x71\x07\x0a\x00\x00\x01\xc7\x38\x01\xbbG", [12, 16]),
    # v2 PROXY TCP over IPv6 with a unique-id TLV and a CRC32C TLV
    encode(_V2 + b"\x21\x21\x00\x32" + _DB8_7 + _DB8_1 + b"\xc7\x38\x01\xbb" + _TLVS, [20]),
    encode(_V2 + b"\x20\x00\x00\x00"),  # LOCAL
    encode(_V2 + b"\x21\x12\x00\x0c" + b"\x7f\x00\x00\x01" * 2 + b"\x00\x35\x00\x35"),  # UDP
]
