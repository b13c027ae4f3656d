"""Differential fuzzing of the codec seam: h11 and httptools frame the same bytes alike.

Hypothesis builds request and response streams, valid and broken (obfuscated
Transfer-Encoding, duplicate and signed Content-Length, bare LF, obs-fold, NUL
and control bytes, oversized fields, chunk-size and chunk-extension tricks,
pipelining, upgrades), cuts them at random points and feeds them to both codecs
(fuzz/harness.py). The properties:

1. Each codec frames the bytes the same however they are cut (split invariance).
2. Every message both codecs complete is the same message: the same head fields,
   the same body bytes, the same trailers, in the same order.
3. Beyond that, both accept the same streams with the same ending, or both
   refuse them with the same status; or the input carries one of the tricks below,
   on which the codecs deliberately differ. An undocumented difference fails.

Deliberate differences (also in docs/reliability.md, "Deliberate codec differences").
None changes where a message both codecs accept ends: bodies are re-framed by the
proxy, and heads are re-serialised field by field.

D1   identical duplicate Content-Length (two fields, or ``5, 5``): h11 merges them
     (RFC 9110 §8.6); llhttp refuses (400; a response: 502).
D2   bare LF ending a line of a head, a trailer section or a chunk-size line: h11
     accepts it (RFC 9112 §2.2; on a chunk-size line it waits for a CRLF); llhttp refuses.
D3   obs-fold (a field line starting with SP/HTAB): h11 unfolds it to SP (RFC 9112 §5.2);
     llhttp refuses.
D4   a CTL other than HTAB, or DEL, in a field value: h11 accepts; llhttp refuses.
D5   a method outside llhttp's table, or in lower case: h11 accepts any token; llhttp
     refuses.
D6   an empty line before a request line (or behind a response), two SP after the
     method: h11 refuses; llhttp skips it (RFC 9112 §2.2).
D7   a chunk-size line with BWS before its CRLF, or an empty extension (``5;``): h11
     accepts; llhttp refuses.
D8   a chunk size of more than 20 hex digits: h11 refuses; llhttp accepts it when the
     value fits 64 bits.
D9   a chunk size over 64 bits in 20 digits or fewer: h11 reads a huge chunk; llhttp
     refuses.
D10  SP/HTAB around a field value, the case of the Transfer-Encoding value: h11 strips
     and lower-cases; llhttp keeps the bytes (compared normalised here).
D11  ``Transfer-Encoding: chunked`` with a trailing HTAB: h11 reads chunked; llhttp
     refuses (400).
D12  an empty Transfer-Encoding value: h11 501, llhttp 400.
D13  a response whose malformed chunked body is cut by EOF: h11 ``reset``, llhttp
     ``protocol`` (both 502).
D14  Content-Length with a Transfer-Encoding other than ``chunked``: h11 501 (the coding
     is checked first), llhttp 400 (both fields given).
D15  a head with several faults (oversized and malformed, HTTP/1.2 and two TE fields):
     400, 431 or 501, the status of the fault each codec checks first; so also for
     one codec when the bytes come in other reads.
D16  a message that is already invalid but has not ended: llhttp refuses it at the first
     bad byte (400), h11 when it is complete (or the header/body timeout fires first).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.harness import (
    CODECS,
    MAX_HEAD_BYTES,
    Outcome,
    common_messages_error,
    empty_line_behind_a_response,
    refused_for_another_fault,
    run_client,
    run_server,
    split_invariance_error,
)

EXAMPLES = int(os.environ.get("DSPROXY_DIFF_EXAMPLES", "250"))
DIFFERENTIAL = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Tagged = tuple[bytes, frozenset[str]]


# -- what each tag allows ----------------------------------------------------
# A tag marks a trick in the input; it allows the codecs to differ in whether they
# accept the stream (and with which status), never in a message both complete.
DELIBERATE = frozenset({f"D{i}" for i in range(1, 15)})


def check_agreement(a: Outcome, b: Outcome, tags: frozenset[str], raw: bytes = b"") -> None:
    error = common_messages_error(a, b)
    assert error is None, error
    if a == b or refused_for_another_fault(a, b) or refused_before_the_end(a, b):
        return
    if empty_line_behind_a_response("both", a, b, raw):  # D6
        return
    explained = tags & DELIBERATE
    assert explained, f"undocumented difference:\n  h11:       {a}\n  httptools: {b}"


def refused_before_the_end(a: Outcome, b: Outcome) -> bool:
    """D16: h11 waits for the rest of a message llhttp has already refused."""
    return a.messages == b.messages and a.end == ("incomplete",) and b.end == ("error", 400)


def check_split_invariance(codec: str, whole: Outcome, split: Outcome, raw: bytes = b"") -> None:
    error = split_invariance_error(codec, whole, split, raw)
    assert error is None, error


# -- request streams -----------------------------------------------------------
TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                min_size=1, max_size=12).map(str.encode)  # fmt: skip
VALUE_CHARS = st.sampled_from(
    [b"a", b"Z", b"0", b" ", b"\t", b"/", b",", b";", b"=", b"\x80", b"\xff"]
)
CTL = st.sampled_from([b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1f", b"\x7f"])


@st.composite
def field_value(draw: st.DrawFn, tags: set[str]) -> bytes:
    value = b"".join(draw(st.lists(VALUE_CHARS, max_size=12)))
    kind = draw(st.integers(0, 19))
    if kind == 0:
        value += draw(CTL) + b"x"
        tags.add("D4")
    elif kind == 1:
        value += b"\x00"  # NUL: both refuse (RFC 9110 §5.5)
    elif kind == 2:
        value += b"\rx"  # bare CR: both refuse
    elif kind == 3:
        value = b"v" * draw(st.sampled_from([300, 2 * MAX_HEAD_BYTES]))  # 431 past the limit
    return value


TE_VALUES: list[tuple[bytes, str | None]] = [
    (b"chunked", None),
    (b"Chunked", None),
    (b"CHUNKED", None),
    (b"chunked ", None),
    (b" chunked", None),
    (b"\tchunked", None),
    (b"chunked\t", "D11"),
    (b"xchunked", None),
    (b"chunked, identity", None),
    (b"identity, chunked", None),
    (b"chunked,chunked", None),
    (b"gzip, chunked", None),
    (b"chunked;q=1", None),
    (b"chunk", None),
    (b"", "D12"),
]


def content_length_values(n: int) -> list[tuple[list[bytes], str | None]]:
    d = b"%d" % n
    return [
        ([d], None),
        ([b" " + d], None),
        ([b"0" + d], None),
        ([d + b"\t"], None),
        ([b"+" + d], None),
        ([b"-" + d], None),
        ([b"0x%x" % n], None),
        ([d + b"," + d], "D1"),
        ([d + b", " + d], "D1"),
        ([d, d], "D1"),
        ([d, b"%d" % (n + 1)], None),
        ([d + b" " + d], None),
        ([b""], None),
        ([b"1" + b"0" * 25], None),
    ]


@st.composite
def chunked_body(draw: st.DrawFn, tags: set[str], eol: bytes) -> bytes:
    out = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=3)):
        size = b"%x" % len(data)
        trick = draw(st.integers(0, 29))
        if trick == 0:
            size = size.upper()
        elif trick == 1:
            size = b"0" * draw(st.integers(1, 24)) + size
            if len(size) > 20:
                tags.add("D8")
        elif trick == 2:
            size = b"0x" + size  # both refuse
        elif trick == 3:
            size = b"-" + size  # both refuse
        elif trick == 4:
            size += b" "
            tags.add("D7")
        elif trick == 5:
            size += b";"
            tags.add("D7")
        elif trick == 6:
            size += b";name=value;flag"
        elif trick == 7:
            size += b';q="a b"'
        elif trick == 8:
            size = b"f" * draw(st.integers(17, 20))  # over 64 bits
            tags.add("D9")
        line_end = eol
        if draw(st.integers(0, 19)) == 0:
            line_end = b"\n"
            tags.add("D2")
        data_end = eol if draw(st.integers(0, 19)) else draw(st.sampled_from([b"X\r\n", b""]))
        out += size + line_end + data + data_end
    out += b"0" + eol
    for name in draw(st.lists(st.sampled_from([b"X-Sum", b"Expires", b"X-T"]), max_size=2)):
        value = draw(field_value(tags))
        out += name + b": " + value + eol
    return out + eol


@st.composite
def request(draw: st.DrawFn, tags: set[str]) -> bytes:
    eol = b"\r\n"
    if draw(st.integers(0, 14)) == 0:
        eol = b"\n"
        tags.add("D2")
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS",
                                   b"PATCH", b"CONNECT", b"get", b"FOO", b"G(T"]))  # fmt: skip
    if method in (b"get", b"FOO"):
        tags.add("D5")
    target = draw(st.sampled_from([b"/", b"/a?b=c&d=%2F", b"*", b"http://h/p", b"/x%00y",
                                   b"/a b", b"/\x7f", b"/\x00", b""]))  # fmt: skip
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0",
                                                        b"http/1.1", b"HTTP/1.1 "]))  # fmt: skip
    sep = b" "
    if draw(st.integers(0, 29)) == 0:
        sep = b"  "
        tags.add("D6")
    line = method + sep + target + b" " + version
    if draw(st.integers(0, 29)) == 0:
        line = eol + line
        tags.add("D6")
    fields: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 14)):
        fields.append((b"Host", b"x"))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"X-A", b"Content-Type", b"Accept", b"Connection",
                                     b"Upgrade", b"Expect", b"TE"]) | TOKEN)  # fmt: skip
        if name == b"Connection":
            value = draw(st.sampled_from([b"keep-alive", b"close", b"upgrade", b"Upgrade, x"]))
        elif name == b"Upgrade":
            value = draw(st.sampled_from([b"websocket", b"h2c"]))
        elif name == b"Expect":
            value = b"100-continue"
        else:
            value = draw(field_value(tags))
        fields.append((name, value))
    body = b""
    framing = draw(st.sampled_from(["none", "cl", "te", "both"]))
    payload = draw(st.binary(max_size=50))
    if framing in ("cl", "both"):
        values, tag = draw(st.sampled_from(content_length_values(len(payload))))
        if tag:
            tags.add(tag)
        fields += [(b"Content-Length", v) for v in values]
        body = payload
        if draw(st.integers(0, 9)) == 0:
            body = payload[: len(payload) // 2]  # shorter than announced
    if framing == "both":
        tags.add("D14")
    if framing in ("te", "both"):
        te, tag = draw(st.sampled_from(TE_VALUES))
        if tag:
            tags.add(tag)
        fields.append((b"Transfer-Encoding", te))
        if draw(st.integers(0, 14)) == 0:
            fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked_body(tags, eol))
    fields = draw(st.permutations(fields))
    head = line + eol
    for name, value in fields:
        sep_colon = b": "
        trick = draw(st.integers(0, 39))
        if trick == 0:
            sep_colon = b" : "  # both refuse (RFC 9112 §5.1)
        elif trick == 1:
            sep_colon = b":"
        elif trick == 2:
            sep_colon = b":\t"
        head += name + sep_colon + value + eol
        if draw(st.integers(0, 39)) == 0:
            head += draw(st.sampled_from([b" ", b"\t"])) + b"folded" + eol
            tags.add("D3")
    return head + eol + body


@st.composite
def request_stream(draw: st.DrawFn) -> Tagged:
    tags: set[str] = set()
    data = b"".join(draw(request(tags)) for _ in range(draw(st.integers(1, 3))))
    junk = draw(st.sampled_from([b"", b"", b"GET / HTTP/1.1\r\nHo", b"\x16\x03\x01", b"\r\n"]))
    data += junk
    if data.startswith((b"\r\n", b"\n")) or junk == b"\r\n":
        tags.add("D6")
    return data, frozenset(tags)


# -- response streams ----------------------------------------------------------
@st.composite
def response_stream(draw: st.DrawFn) -> tuple[bytes, bytes, frozenset[str]]:
    tags: set[str] = set()
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    eol = b"\r\n"
    if draw(st.integers(0, 14)) == 0:
        eol = b"\n"
        tags.add("D2")
    data = b""
    for _ in range(draw(st.integers(0, 2))):
        data += b"HTTP/1.1 " + draw(st.sampled_from([b"100 Continue", b"103 Early Hints"])) + eol
        data += eol
    status = draw(st.sampled_from([b"200 OK", b"200", b"204 No Content", b"304 Not Modified",
                                   b"404 Not Found", b"999 X", b"20 X",
                                   b"101 Switching"]))  # fmt: skip
    version = draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 "]))
    head = version + b" " + status + eol
    payload = draw(st.binary(max_size=50))
    framing = draw(st.sampled_from(["none", "cl", "te", "both"]))
    body = payload
    fields: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 2))):
        fields.append((draw(TOKEN), draw(field_value(tags))))
    if draw(st.integers(0, 5)) == 0:
        fields.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    if framing in ("cl", "both"):
        values, tag = draw(st.sampled_from(content_length_values(len(payload))))
        if tag:
            tags.add(tag)
        fields += [(b"Content-Length", v) for v in values]
    if framing in ("te", "both"):
        te, tag = draw(st.sampled_from(TE_VALUES))
        if tag:
            tags.add(tag)
        fields.append((b"Transfer-Encoding", te))
        body = draw(chunked_body(tags, eol))
        tags.add("D13")  # a broken chunked body cut by EOF: reset vs protocol
    for name, value in draw(st.permutations(fields)):
        head += name + b": " + value + eol
        if draw(st.integers(0, 39)) == 0:
            head += b" folded" + eol
            tags.add("D3")
    data += head + eol + body
    junk = draw(st.sampled_from([b"", b"", b"", b"HTTP/1.1 200 OK\r\n\r\n", b"\r\n"]))
    if junk == b"\r\n":
        tags.add("D6")
    data += junk
    return method, data, frozenset(tags)


def cut_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=6)


# -- the properties -------------------------------------------------------------
@DIFFERENTIAL
@given(stream=request_stream(), data=st.data())
def test_request_streams_framed_alike(stream: Tagged, data: st.DataObject) -> None:
    raw, tags = stream
    cuts = data.draw(cut_points(raw))
    outcomes = []
    for codec in CODECS:
        whole = run_server(codec, raw)
        check_split_invariance(codec, whole, run_server(codec, raw, cuts))
        outcomes.append(whole)
    check_agreement(outcomes[0], outcomes[1], tags)


@DIFFERENTIAL
@given(stream=response_stream(), data=st.data())
def test_response_streams_framed_alike(
    stream: tuple[bytes, bytes, frozenset[str]], data: st.DataObject
) -> None:
    method, raw, tags = stream
    cuts = data.draw(cut_points(raw))
    outcomes = []
    for codec in CODECS:
        whole = run_client(codec, method, raw)
        check_split_invariance(codec, whole, run_client(codec, method, raw, cuts), raw)
        outcomes.append(whole)
    check_agreement(outcomes[0], outcomes[1], tags, raw)


# -- every byte boundary, on a corpus of known tricks ----------------------------
SMUGGLING_REQUESTS = {
    "cl_te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\nG",
    "te_cl": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"
    b"\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "te_space_colon": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_xchunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_list": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    b"0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: x\r\n\r\n0\r\n\r\n",
    "cl_signed": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    "cl_conflict": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
    b"abcd",
    "chunk_0x": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n"
    b"0\r\n\r\n",
    "chunk_negative": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc"
    b"\r\n0\r\n\r\n",
    "chunk_data_overrun": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    "chunk_ext": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;a=b;c\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "pipelined_after_error": b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost : x\r\n\r\n"
    b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2c_upgrade": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "large_cl_body_then_request": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
    + b"b" * 70000
    + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING_REQUESTS))
def test_known_tricks_framed_alike_at_every_byte_boundary(case: str) -> None:
    raw = SMUGGLING_REQUESTS[case]
    whole = {codec: run_server(codec, raw) for codec in CODECS}
    assert whole["h11"] == whole["httptools"]
    step = 1 if len(raw) < 1000 else 997  # the 70 kB case: every 997th byte
    for cut in range(1, len(raw), step):
        for codec in CODECS:
            check_split_invariance(codec, whole[codec], run_server(codec, raw, [cut]))
    for codec in CODECS:  # and fed one byte at a time
        if len(raw) < 1000:
            check_split_invariance(codec, whole[codec], run_server(codec, raw, range(len(raw))))


def test_known_tricks_outcomes() -> None:
    """What the corpus above must produce (so agreement is not agreement on nonsense)."""
    refused = {case: run_server("h11", raw).end for case, raw in SMUGGLING_REQUESTS.items()}
    for case in ("cl_te", "te_cl", "te_space_colon", "cl_signed", "cl_conflict", "chunk_0x",
                 "chunk_negative", "chunk_data_overrun", "nul_in_value"):  # fmt: skip
        assert refused[case] == ("error", 400), case
    for case in ("te_xchunked", "te_list", "te_twice"):
        assert refused[case] == ("error", 501), case
    pipelined = run_server("httptools", SMUGGLING_REQUESTS["pipelined_after_error"])
    assert [m.head[1] for m in pipelined.messages] == [b"/"]
    assert pipelined.end == ("error", 400)  # /third is never delivered
    ext = run_server("httptools", SMUGGLING_REQUESTS["chunk_ext"])
    assert [(m.head[1], m.body, m.trailers) for m in ext.messages] == [
        (b"/", b"abc", ((b"X-T", b"1"),)),
        (b"/next", b"", ()),
    ]
    h2c = run_server("httptools", SMUGGLING_REQUESTS["h2c_upgrade"])
    assert h2c.end == ("switched", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # upgrade is decided later
    big = run_server("h11", SMUGGLING_REQUESTS["large_cl_body_then_request"])
    assert [len(m.body) for m in big.messages] == [70000, 0]


# -- the documented differences, pinned --------------------------------------------
@pytest.mark.parametrize(
    ("raw", "h11_end", "httptools_end"),
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            ("clean",),
            ("error", 400),
            id="D1-duplicate-identical-cl",
        ),
        pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", ("clean",), ("error", 400), id="D2-bare-lf"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            ("clean",),
            ("error", 400),
            id="D3-obs-fold",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", ("clean",), ("error", 400), id="D4"
        ),
        pytest.param(b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", ("clean",), ("error", 400), id="D5"),
        pytest.param(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", ("error", 400), ("clean",), id="D6"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\na\r\n0\r\n\r\n",
            ("clean",),
            ("error", 400),
            id="D7-chunk-bws",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"0" * 20
            + b"1\r\na\r\n0\r\n\r\n",
            ("error", 400),
            ("clean",),
            id="D8-long-chunk-size",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"f" * 20
            + b"\r\na\r\n",
            ("incomplete",),
            ("error", 400),
            id="D9-chunk-size-over-64-bits",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
            ("clean",),
            ("error", 400),
            id="D11-te-trailing-htab",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
            ("error", 501),
            ("error", 400),
            id="D12-te-empty",
        ),
    ],
)
def test_deliberate_differences(
    raw: bytes, h11_end: tuple[object, ...], httptools_end: tuple[object, ...]
) -> None:
    """The table at the top, as observed: if a codec changes, the table must change too."""
    assert run_server("h11", raw).end == h11_end
    assert run_server("httptools", raw).end == httptools_end


def test_deliberate_difference_d13_response_cut_in_broken_chunk() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"
    assert run_client("h11", b"GET", raw).end == ("error", "reset")
    assert run_client("httptools", b"GET", raw).end == ("error", "protocol")


# -- codec bugs this fuzzing found (B1-B3, docs/reliability.md), fixed: their regression tests --
def test_b1_bytes_behind_a_close_request_in_a_later_read() -> None:
    """The codec contract (dsproxy/http/codec/base.py): after on_request_end the codec
    keeps pipelined bytes until start_next_cycle(); httptools does, h11 refuses them when
    they come in a later read than the request (one read: kept), so the proxy drops the
    response to a request the upstream already received and answers 400 instead."""
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n"
    cut = raw.index(b"GET /2")
    for codec in CODECS:
        assert run_server(codec, raw, [cut]) == run_server(codec, raw), codec


def test_b2_nul_in_the_reason_phrase() -> None:
    """RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ). llhttp takes a NUL
    there, and the proxy writes the reason into the client's status line verbatim."""
    raw = b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n"
    assert run_client("h11", b"GET", raw).end == ("error", "protocol")
    assert run_client("httptools", b"GET", raw).end == ("error", "protocol")


def test_b3_oversized_trailers_in_one_read() -> None:
    """server.max_header_bytes bounds a trailer section too (as httptools does)."""
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nX-Big: " + b"v" * (4 * MAX_HEAD_BYTES) + b"\r\n\r\n"
    )
    assert run_server("httptools", raw).end == ("error", 431)
    assert run_server("h11", raw, [len(raw) - 100]).end == ("error", 431)
    assert run_server("h11", raw).end == ("error", 431)
