"""CPU cost of one proxied request per codec, with no sockets and no event loop.

One keep-alive cycle, as the proxy does it:

1. the server codec parses the client's request (``feed`` -> handler callbacks),
2. the client codec encodes it for the upstream (``encode_request_head`` + ``encode_end``),
3. the client codec parses the upstream's response (``feed``),
4. the server codec encodes it for the client (head, body, end),
5. both codecs ``start_next_cycle()``.

Optionally (column "+ forwarding") the pure header rewriting of ``dsproxy.http.rules`` is
done too, as the proxy does between steps 1-2 and 3-4.

Prints µs of CPU per request for each codec and 1e6 / µs = the most requests per second
one core could proxy if nothing else (syscalls, event loop, pool) cost anything. A proxy
reaching 80% of that ceiling in the wrk suite would be near the codec's limit.

Usage: ``python bench/codec_cost.py [--n 20000] [--repeat 5] [--codec h11 --codec httptools]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Appended, not prepended: an installed dsproxy (the compiled build in its venv) wins.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from dsproxy.http.codec import get_codec, httptools_available  # noqa: E402
from dsproxy.http.codec.base import (  # noqa: E402
    ClientCodec,
    Headers,
    RequestHead,
    ResponseHead,
    ServerCodec,
)

# What wrk sends (the wrk suite's load) and what a browser/API client typically sends.
REQUESTS: dict[str, bytes] = {
    "wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:16980\r\n\r\n",
    "typical": (
        b"GET /api/v1/orders?page=2&size=50 HTTP/1.1\r\n"
        b"Host: gateway.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: application/json, text/plain, */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefgh\r\n"
        b"Cookie: session=0123456789abcdef; theme=dark\r\n"
        b"Connection: keep-alive\r\n\r\n"
    ),
}
# What the bench's upstream nginx answers, and a typical small JSON API response.
RESPONSES: dict[str, bytes] = {
    "wrk": (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 25 Nov 2025 08:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    ),
    "typical": (
        b"HTTP/1.1 200 OK\r\nDate: Tue, 25 Nov 2025 08:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: 120\r\n"
        b"Cache-Control: no-cache, no-store, max-age=0, must-revalidate\r\n"
        b"X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
        b"Vary: Origin\r\nConnection: keep-alive\r\n\r\n" + b"{" + b"x" * 118 + b"}"
    ),
}


class RequestSink:
    """Collects the events of one request (a RequestHandler)."""

    def __init__(self) -> None:
        self.head: RequestHead | None = None
        self.body: list[bytes] = []
        self.done = False

    def on_request_head(self, head: RequestHead) -> None:
        self.head = head

    def on_request_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_request_end(self, trailers: Headers) -> None:
        self.done = True

    def reset(self) -> None:
        self.head = None
        self.body.clear()
        self.done = False


class ResponseSink:
    """Collects the events of one response (a ResponseHandler)."""

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body: list[bytes] = []
        self.done = False

    def on_response_head(self, head: ResponseHead) -> None:
        self.head = head

    def on_response_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_response_end(self, trailers: Headers) -> None:
        self.done = True

    def reset(self) -> None:
        self.head = None
        self.body.clear()
        self.done = False


Rewrite = Callable[[RequestHead], tuple[bytes, bytes, Headers]]
RewriteResp = Callable[[ResponseHead, RequestHead], Headers]


def plain_request(head: RequestHead) -> tuple[bytes, bytes, Headers]:
    return head.method, head.target, head.headers


def plain_response(resp: ResponseHead, req: RequestHead) -> Headers:
    return resp.headers


def forwarding_rewriters() -> tuple[Rewrite, RewriteResp] | None:
    """dsproxy.http.rules's rewriting, or None when its API is not the one expected."""
    try:
        from dsproxy.http import rules as fw

        ctx = fw.ClientContext(client_ip="10.0.0.1", listen_port=b"16980", trusted=False)
        target = fw.UpstreamTarget(authority=b"127.0.0.1:18080", preserve_host=True)

        def req(head: RequestHead) -> tuple[bytes, bytes, Headers]:
            up = fw.build_upstream_request(head, ctx, target)
            return up.method, up.target, up.headers

        def resp(r: ResponseHead, head: RequestHead) -> Headers:
            return fw.build_client_response(r, head, close=False).headers

    except (ImportError, AttributeError, TypeError) as exc:
        print(f"(forwarding column skipped: {exc!r})", file=sys.stderr)
        return None
    return req, resp


def one_cycle(server: ServerCodec, client: ClientCodec, sreq: RequestSink, sresp: ResponseSink,
              request: bytes, response: bytes, rw_req: Rewrite, rw_resp: RewriteResp) -> int:
    sreq.reset()
    sresp.reset()
    server.feed(request)
    head = sreq.head
    assert head is not None
    method, target, headers = rw_req(head)
    out = len(client.encode_request_head(method, target, headers, chunked=False))
    out += len(client.encode_end([]))
    client.feed(response)
    rhead = sresp.head
    assert rhead is not None
    rheaders = rw_resp(rhead, head)
    out += len(server.encode_response_head(rhead.status, rhead.reason, rheaders, chunked=False))
    for piece in sresp.body:
        out += sum(map(len, server.encode_body(piece)))
    out += len(server.encode_end([]))
    if not (sreq.done and sresp.done):
        raise RuntimeError("codec did not complete the cycle")
    server.start_next_cycle()
    client.start_next_cycle()
    return out


def measure(codec_name: str, kind: str, n: int, repeat: int, forwarding: bool) -> float:
    """Best-of-``repeat`` CPU µs per request over ``n`` keep-alive cycles."""
    factory = get_codec(codec_name)
    rw: tuple[Rewrite, RewriteResp] | None = (plain_request, plain_response)
    if forwarding:
        rw = forwarding_rewriters()
        if rw is None:
            return float("nan")
    assert rw is not None
    best = float("inf")
    for _ in range(repeat):
        sreq, sresp = RequestSink(), ResponseSink()
        server = factory.server(sreq, max_header_bytes=16384)
        client = factory.client(sresp)
        request, response = REQUESTS[kind], RESPONSES[kind]
        for _ in range(200):  # warm up
            one_cycle(server, client, sreq, sresp, request, response, *rw)
        t0 = time.process_time()
        for _ in range(n):
            one_cycle(server, client, sreq, sresp, request, response, *rw)
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU µs per proxied request per codec")
    parser.add_argument("--n", type=int, default=20000, help="cycles per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many")
    parser.add_argument("--codec", action="append", help="h11, httptools (default: both)")
    args = parser.parse_args()
    codecs = args.codec or (["h11", "httptools"] if httptools_available() else ["h11"])
    print(f"Python {sys.version.split()[0]}; {args.n} keep-alive cycles, best of "
          f"{args.repeat}; CPU time (time.process_time)\n")
    print("| codec | request | µs/req codec only | ceiling req/s/core | 80% of ceiling "
          "| µs/req + forwarding | ceiling req/s/core |")
    print("|---|---|---|---|---|---|---|")
    for name in codecs:
        for kind in REQUESTS:
            alone = measure(name, kind, args.n, args.repeat, forwarding=False)
            fwd = measure(name, kind, args.n, args.repeat, forwarding=True)
            fwd_cols = (f"{fwd:.1f} | {1e6 / fwd:,.0f}" if fwd == fwd else "- | -")
            print(f"| {name} | {kind} | {alone:.1f} | {1e6 / alone:,.0f} | "
                  f"{0.8e6 / alone:,.0f} | {fwd_cols} |", flush=True)


if __name__ == "__main__":
    main()
