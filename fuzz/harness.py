"""Drive both HTTP/1.1 codecs over the same bytes and compare what they framed.

Shared by the differential property tests (tests/protocol/test_codec_differential.py)
and the coverage-guided fuzz targets (fuzz/fuzz_codec_*.py). No I/O: bytes in,
an ``Outcome`` out.

An outcome is what the proxy would act on: every message the codec completed
(its head fields, its whole body, its trailers) and how the input ended:

* ``("error", status)`` for the server codec (ClientError), ``("error", kind)``
  for the client codec (UpstreamError);
* ``("clean",)``: the input ended between requests;
* ``("reused",)`` / ``("discarded",)`` / ``("close",)``: what the pool does with the
  upstream connection after a response (see ``run_client``);
* ``("incomplete",)``: the input ended inside a message (more bytes awaited);
* ``("close",)``: a message that does not keep the connection alive ended;
* ``("switched", tail)``: an Upgrade request ended; ``tail`` are the bytes behind it;
* ``("connect",)``: a CONNECT request ended (the proxy answers 405 and closes).

Header values are compared without surrounding SP/HTAB and with the
Transfer-Encoding value lower-cased: h11 normalises both, llhttp hands on
bytes as received, and neither changes where a message ends (docs/reliability.md,
"Deliberate codec differences", D10).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dsproxy.errors import ClientError, UpstreamError
from dsproxy.http.codec import get_codec
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead

CODECS = ("h11", "httptools")
MAX_HEAD_BYTES = 1024  # small, so oversized heads are cheap to generate
MAX_CYCLES = 8  # pipelined requests served per input
_OWS = b" \t"

Head = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Message:
    head: Head
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    messages: tuple[Message, ...]
    end: tuple[object, ...]

    @property
    def refused(self) -> bool:
        return self.end[0] == "error"


def _fields(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for name, value in headers:
        value = bytes(value).strip(_OWS)
        if name.lower() == b"transfer-encoding":
            value = value.lower()
        out.append((bytes(name), value))
    return tuple(out)


@dataclass
class _Recorder:
    """Collects codec events into messages (the handler of either side)."""

    messages: list[Message] = field(default_factory=list)
    head: Head | None = None
    heads: list[RequestHead | ResponseHead] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ends: int = 0

    def _start(self, head: Head) -> None:
        if self.head is not None:  # a 1xx response: a message without body or end
            self.messages.append(Message(self.head, b"", ()))
        self.head = head
        self.body = bytearray()

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self._start(
            (
                head.method,
                head.target,
                head.version,
                _fields(head.headers),
                head.keep_alive,
                head.content_length,
                head.chunked,
                head.upgrade,
                head.expect_continue,
            )
        )

    def on_response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)
        self._start(
            (
                head.status,
                head.reason,
                head.version,
                _fields(head.headers),
                head.keep_alive,
                head.content_length,
                head.chunked,
            )
        )

    def heads_key(self) -> Head:
        """The head of the message in progress (a 101 has no end event)."""
        assert self.head is not None
        return self.head

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    on_response_body = on_request_body

    def on_request_end(self, trailers: Headers) -> None:
        assert self.head is not None, "end without a head"
        self.messages.append(Message(self.head, bytes(self.body), _fields(trailers)))
        self.head = None
        self.ends += 1

    on_response_end = on_request_end


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (no empty piece: a transport never delivers b"")."""
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if a != b]


def run_server(codec: str, data: bytes, cuts: Iterable[int] = ()) -> Outcome:
    """Feed request bytes to the server codec, answering each request as the proxy would."""
    rec = _Recorder()
    server = get_codec(codec).server(rec, max_header_bytes=MAX_HEAD_BYTES)
    end: tuple[object, ...]
    try:
        for piece in pieces(data, cuts):
            server.feed(piece)
        cycles = 0
        while True:
            if rec.ends == cycles:  # the last request did not end
                clean = server.feed_eof()
                end = ("clean",) if clean and rec.head is None else ("incomplete",)
                break
            cycles += 1
            head = rec.heads[-1]
            assert isinstance(head, RequestHead)
            if head.method == b"CONNECT":
                end = ("connect",)  # the proxy answers 405 itself and closes
                break
            if head.upgrade is not None:
                end = ("switched", server.switch_protocols())
                break
            if not head.keep_alive or cycles >= MAX_CYCLES:
                end = ("close",)
                break
            server.encode_response_head(200, b"", [(b"Content-Length", b"0")], chunked=False)
            server.encode_end([])
            server.start_next_cycle()
    except ClientError as exc:
        end = ("error", exc.status)
    return Outcome(tuple(rec.messages), end)


def run_client(codec: str, method: bytes, data: bytes, cuts: Iterable[int] = ()) -> Outcome:
    """Send one ``method`` request and feed the response bytes as the proxy's pool would.

    As dsproxy/proxy/upstream.py does: when a keep-alive response ends, the connection
    goes back to the pool at once (``start_next_cycle`` inside the end callback; an
    UpstreamError there means "never reuse"); bytes arriving later on the idle
    connection get it discarded; an error raised after the response ended reaches
    nobody but the logs. A response without keep-alive gets the connection closed.
    Ends: ``reused``, ``discarded`` (bytes behind the response), ``close``.
    """
    rec = _Recorder()
    client = get_codec(codec).client(rec)
    refused_reuse = False

    def end_of_response(trailers: Headers) -> None:
        nonlocal refused_reuse
        _Recorder.on_request_end(rec, trailers)
        if rec.heads[-1].keep_alive:
            try:
                client.start_next_cycle()
            except UpstreamError:
                refused_reuse = True

    rec.on_response_end = end_of_response  # type: ignore[method-assign]
    upgrade = method == b"GET"  # so that a 101 is an answer, not an error, in both codecs
    headers = [(b"Host", b"up")]
    if upgrade:
        headers += [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
    client.encode_request_head(method, b"/", headers, chunked=False, upgrade=upgrade)
    client.encode_end([])
    parts = pieces(data, cuts)
    for i, piece in enumerate(parts):
        try:
            client.feed(piece)
        except UpstreamError as exc:
            if not rec.ends:
                return Outcome(tuple(rec.messages), ("error", exc.kind))
            refused_reuse = True  # raised behind a complete response: logged, not reused
        last = rec.heads[-1] if rec.heads else None
        if isinstance(last, ResponseHead) and last.status == 101:
            # Tunnel bytes from here on: what the codec kept plus what was not fed.
            tail = client.switch_protocols() + b"".join(parts[i + 1 :])
            return Outcome((*rec.messages, Message(rec.heads_key(), b"", ())), ("switched", tail))
        if rec.ends:
            if not rec.heads[-1].keep_alive:
                return Outcome(tuple(rec.messages), ("close",))
            if parts[i + 1 :]:
                refused_reuse = True  # bytes on an idle pooled connection: discarded
            return Outcome(tuple(rec.messages), ("discarded",) if refused_reuse else ("reused",))
    try:
        client.feed_eof()
    except UpstreamError as exc:
        return Outcome(tuple(rec.messages), ("error", exc.kind))
    if rec.ends:  # a body delimited by the close
        return Outcome(tuple(rec.messages), ("close",))
    return Outcome(tuple(rec.messages), ("incomplete",))


# -- the invariants (shared by the property tests and the fuzz targets) --------------
def refused_for_another_fault(a: Outcome, b: Outcome) -> bool:
    """D15: a head with several faults gets the status of the one a codec checks first."""
    return (
        a.messages == b.messages
        and a.refused
        and b.refused
        and {a.end[1], b.end[1]} <= {400, 431, 501}
    )


def empty_line_behind_a_response(codec: str, whole: Outcome, split: Outcome, raw: bytes) -> bool:
    """D6 on the pool: llhttp skips CR/LF behind a response read with it (the connection
    is reused; h11 refuses to reuse it); read later, they reach an idle connection, which
    is discarded. ``whole`` and ``split`` may also be h11's and httptools' outcomes."""
    return (
        codec in ("httptools", "both")
        and whole.messages == split.messages
        and {whole.end, split.end} == {("reused",), ("discarded",)}
        and raw.endswith((b"\r", b"\n"))
    )


def split_invariance_error(
    codec: str, whole: Outcome, split: Outcome, raw: bytes = b""
) -> str | None:
    """Why ``split`` (the same bytes in other reads) was framed unlike ``whole``, or None."""
    if whole == split or refused_for_another_fault(whole, split):
        return None
    if empty_line_behind_a_response(codec, whole, split, raw):
        return None
    return f"{codec}: framing depends on how the bytes were cut:\n  {whole}\n  {split}"


def common_messages_error(a: Outcome, b: Outcome) -> str | None:
    """A message both codecs completed differs (the desync property), or None."""
    common = min(len(a.messages), len(b.messages))
    for i in range(common):
        if a.messages[i] != b.messages[i]:
            return (
                f"message {i} differs:\n  h11:       {a.messages[i]}\n  httptools: {b.messages[i]}"
            )
    return None
