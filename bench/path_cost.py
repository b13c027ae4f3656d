"""CPU cost of dsproxy's own Python per proxied request: the whole hot path, no sockets.

One keep-alive cycle goes through the real objects a worker uses: a
``ClientConnection`` gets the request bytes (``data_received``), its exchange
borrows an ``UpstreamConnection`` from the real ``UpstreamPool``, writes the request head
to it, the upstream connection gets the response bytes, and the response is
written back; the request is recorded to the real ``Metrics`` observer (and,
with ``--access-log``, to an access log writing to /dev/null). The transports
are stand-ins that only count bytes, so what is measured is everything the
proxy does in Python per request, and nothing the kernel or the event loop do.

Compare with ``codec_cost.py`` (the codec alone) and with the ``http`` suite of
``run.py`` (the proxy's CPU per request under wrk, syscalls included).

Usage: ``python bench/path_cost.py [--n 20000] [--repeat 5] [--codec httptools]
[--access-log json] [--routes N]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path
from typing import Any, cast

# Appended, not prepended: an installed dsproxy (the compiled build in its venv) wins.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.codec_cost import REQUESTS, RESPONSES  # noqa: E402
from dsproxy.config import (  # noqa: E402
    Config,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    UpstreamServer,
)
from dsproxy.http.codec import get_codec, httptools_available  # noqa: E402
from dsproxy.net.resolver import Resolver  # noqa: E402
from dsproxy.observe.metrics import Metrics  # noqa: E402
from dsproxy.observe.records import Observer  # noqa: E402
from dsproxy.proxy.connection import ClientConnection  # noqa: E402
from dsproxy.proxy.pool import DEFAULT_GROUP, PoolRegistry, UpstreamPool  # noqa: E402
from dsproxy.proxy.router import build_router  # noqa: E402
from dsproxy.proxy.shared import Shared  # noqa: E402
from dsproxy.proxy.upstream import UpstreamConnection  # noqa: E402


class CountingTransport:
    """The asyncio.Transport calls the proxy makes; writes are only counted."""

    def __init__(self, peer: tuple[Any, ...], sock: tuple[Any, ...]) -> None:
        self.extra = {"peername": peer, "sockname": sock}
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.bytes += len(chunk)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def measure(
    codec_name: str, kind: str, n: int, repeat: int, access_log: str, routes: int = 0
) -> float:
    """Best-of-``repeat`` CPU µs per request over ``n`` keep-alive cycles.

    ``routes``: that many ``[[routes]]`` whose prefixes the request does not match, so
    every request is matched against all of them and goes to the default route.
    """
    upstream_config = UpstreamConfig(
        servers=(UpstreamServer("127.0.0.1", 18080),), keepalive_requests=10**9
    )
    config = Config(
        server=ServerConfig(parser="h11" if codec_name == "h11" else "httptools"),
        upstream=upstream_config,
        routes=tuple(
            RouteConfig(f"/route{i}", f"r{i}", upstream_config, 3600.0) for i in range(routes)
        ),
    )
    codec = get_codec(codec_name)
    observer: Observer = Metrics()
    if access_log != "off":
        from dsproxy.observe.accesslog import AccessLog, combine

        sink = io.StringIO()
        observer = combine([observer, AccessLog(access_log, sink)])  # type: ignore[arg-type]
    pool = UpstreamPool(config.upstream, codec, observer, Resolver(0))
    pools = PoolRegistry(
        {DEFAULT_GROUP: pool}
        | {r.name: UpstreamPool(r.upstream, codec, observer, Resolver(0)) for r in config.routes}
    )
    shared = Shared(
        config=config,
        codec=codec,
        pools=pools,
        router=build_router(config, pools),
        observer=observer,
    )
    down = ClientConnection(shared)
    client = CountingTransport(("::ffff:192.0.2.7", 50000, 0, 0), ("::", 16980, 0, 0))
    down.connection_made(cast(asyncio.Transport, client))
    conn = UpstreamConnection(pool, config.upstream.servers[0], codec)
    upstream = CountingTransport(("127.0.0.1", 18080), ("127.0.0.1", 40000))
    conn.connection_made(cast(asyncio.Transport, upstream))
    pool.release(conn, used=False)
    request, response = REQUESTS[kind], RESPONSES[kind]

    def cycle() -> None:
        down.data_received(request)
        conn.data_received(response)

    for _ in range(500):  # warm up, and check that every cycle completes
        before = client.bytes
        cycle()
        if client.bytes <= before or client.closed or pool.idle_count != 1:
            raise RuntimeError("a cycle did not complete")
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            cycle()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    if client.closed or upstream.closed:
        raise RuntimeError("the proxy closed a keep-alive connection")
    pool.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU µs of dsproxy's Python per request")
    parser.add_argument("--n", type=int, default=20000, help="cycles per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements (best is kept)")
    parser.add_argument("--codec", action="append", help="h11 / httptools (default: both)")
    parser.add_argument("--access-log", default="off", choices=("off", "combined", "json"))
    parser.add_argument(
        "--routes", type=int, default=0, help="[[routes]] the request is matched against"
    )
    args = parser.parse_args()
    codecs = args.codec or ["h11"] + (["httptools"] if httptools_available() else [])
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    from dsproxy.cli import build_kind

    print(
        f"{args.n:,} keep-alive cycles, best of {args.repeat}, CPU time;"
        f" metrics on, access log {args.access_log}, {args.routes} [[routes]];"
        f" build: {build_kind()}\n"
    )
    print("| codec | request | µs/req, whole Python path | ceiling req/s/core |")
    print("|---|---|---|---|")
    for name in codecs:
        for kind in REQUESTS:
            us = runner(measure(name, kind, args.n, args.repeat, args.access_log, args.routes))
            print(f"| {name} | {kind} | {us:.1f} | {1e6 / us:,.0f} |")


if __name__ == "__main__":
    main()
