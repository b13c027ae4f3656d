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
