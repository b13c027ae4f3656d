"""Slow and greedy clients against a dsproxy subprocess: slowloris, slow request bodies,
clients that never read, and descriptor exhaustion.

Loopback only, ports from the OS, bounded in time; prints a JSON report.

``slowloris``::

    python bench/slowclients.py slowloris --connections 10000 --header-timeout 10

opens ``--connections`` client connections that each send a request line and then one
header field every ``--trickle`` seconds, never finishing the head. Meanwhile a normal
client sends GETs (a new connection each) and its latency is measured before and during
the attack. Reported: the proxy's RSS and descriptors before and with every slow
connection open (KiB per connection), when the slow connections were answered or
closed (the header timeout: 408), and the normal client's p50/p99/max.

``slowpost`` / ``noread``::

    python bench/slowclients.py slowpost --connections 500 --body-timeout 10
    python bench/slowclients.py noread --connections 500 --body-timeout 10

``slowpost`` clients announce a 1 MiB body and send one byte every ``--trickle``
seconds (server.body_timeout is an inactivity limit, so a trickle faster than it keeps
them alive: use a trickle above it to see the 408); ``noread`` clients ask for a 16 MiB
response and never read it (the proxy stops reading the upstream when its write buffer
is full and cuts the client off after server.body_timeout). Reported as for slowloris.

``emfile``::

    python bench/slowclients.py emfile --nofile 64 --clients 200

starts the proxy with ``RLIMIT_NOFILE`` at ``--nofile`` and opens ``--clients`` idle
connections, more than it has descriptors for; then samples the proxy's CPU time for
``--hold`` seconds (an accept loop spinning on EMFILE shows as ~100% of a core), sends
requests on the connections it accepted (each needs an upstream socket: 502 when there
is no descriptor for it, never a crash), closes everything, and checks a normal request
is served again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

HEAD = b"GET /ok HTTP/1.1\r\nHost: slow.test\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# ----------------------------------------------------------------- upstream and proxy
BIG_BODY_BYTES = 16 * 1024 * 1024
BIG = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_BODY_BYTES


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers ``200 ok`` to every request head (a request body is read and dropped);
    ``GET /big`` gets a 16 MiB body, written as fast as the proxy takes it."""
    try:
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                if head.startswith(b"GET /big "):
                    writer.write(BIG)
                    chunk = bytes(256 * 1024)
                    for _ in range(BIG_BODY_BYTES // len(chunk)):
                        writer.write(chunk)
                        await writer.drain()
                elif not head.startswith(b"POST "):
                    writer.write(OK)
                else:
                    buf = b""  # a slow POST: its body never completes; the proxy ends it
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()


class Proxy:
    def __init__(self, config: Path, nofile: int | None = None) -> None:
        self.config = config
        self.nofile = nofile
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[str] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        limit = self.nofile

        def lower_nofile() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dsproxy",
            "run",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=lower_nofile,
        )
        self._task = asyncio.create_task(self._read_log())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([ready, self._task], timeout=20, return_when="FIRST_COMPLETED")
        ready.cancel()
        if not self.port:
            raise RuntimeError("dsproxy did not start:\n" + "".join(self.log[-20:]))

    async def _read_log(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            if len(self.log) < 5000:
                self.log.append(line)
            if not self.port and (m := re.search(r"listening on [^ ]*:(\d+) ", line)):
                self.port = int(m.group(1))
                self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, 5)
        return proc.returncode


def write_config(path: Path, upstream_port: int, **server: object) -> None:
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in server.items())
    path.write_text(
        f"""[server]
listen = ["127.0.0.1:0"]
{fields}

[upstream]
url = "http://127.0.0.1:{upstream_port}"
connect_timeout = 2

[admin]
listen = "off"

[shutdown]
delay = 0
grace = 1

[log]
access = "off"
level = "info"
"""
    )


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def get(port: int, limit_s: float = 10.0) -> tuple[int, float]:
    """One GET on a new connection: (status or 0, seconds)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(HEAD + b"\r\n")
                line = await reader.readline()
            finally:
                writer.transport.abort()
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        status = 0
    return status, time.monotonic() - start


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def start_attack_target(
    tmp: Path, connections: int, **server: object
) -> tuple[asyncio.Server, Proxy, dict[str, Any]]:
    """The upstream and a proxy (``server`` keys set), and the normal client's baseline."""
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    config = tmp / "dsproxy.toml"
    write_config(
        config,
        upstream.sockets[0].getsockname()[1],
        max_connections=connections + 1000,
        **server,
    )
    proxy = Proxy(config)
    await proxy.start()
    report: dict[str, Any] = {
        "normal_client_before": percentiles([(await get(proxy.port))[1] for _ in range(200)]),
        "rss_kib_before": rss_kib(proxy.pid),
        "fds_before": fds(proxy.pid),
    }
    return upstream, proxy, report


async def normal_client_during(
    proxy: Proxy,
    tasks: list[asyncio.Task[None]],
    report: dict[str, Any],
    tick: Callable[[], None] | None = None,
) -> None:
    """A normal client's GETs (a new connection each) while the attack's tasks run."""
    during: list[float] = []
    failures = 0
    while any(not t.done() for t in tasks) and len(during) < 2000:
        status, seconds = await get(proxy.port)
        if status == 200:
            during.append(seconds)
        else:
            failures += 1
        if tick is not None:
            tick()
        await asyncio.sleep(0.01)
    report["normal_client_during"] = percentiles(during)
    report["normal_client_failures_during"] = failures


# ----------------------------------------------------------------- slowloris
async def slowloris(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    upstream, proxy, report = await start_attack_target(
        tmp, args.connections, header_timeout=args.header_timeout
    )
    report.update(connections=args.connections, trickle_s=args.trickle)
    try:
        outcomes: Counter[str] = Counter()
        closed_after: list[float] = []
        opened = asyncio.Event()
        started = 0

        async def slow_client() -> None:
            nonlocal started
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            except OSError:
                outcomes["connect_failed"] += 1
                return
            started += 1
            if started == args.connections:
                opened.set()
            t0 = time.monotonic()
            writer.write(HEAD)
            try:
                async with asyncio.timeout(args.header_timeout * 3 + 10):
                    read = asyncio.create_task(reader.read(4096))
                    i = 0
                    while not read.done():
                        await asyncio.wait([read], timeout=args.trickle)
                        if not read.done():
                            writer.write(b"X-Slow-%d: %s\r\n" % (i, b"a" * 8))
                            i += 1
                    data = read.result()
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
                outcomes[status] += 1
            except TimeoutError:
                outcomes["never_closed"] += 1
            except ConnectionError:
                outcomes["reset"] += 1
            finally:
                closed_after.append(time.monotonic() - t0)
                writer.transport.abort()

        attack_start = time.monotonic()
        tasks = []
        for _ in range(args.connections):
            tasks.append(asyncio.create_task(slow_client()))
            if len(tasks) % 500 == 0:
                await asyncio.sleep(0.05)  # do not overflow the listen backlog
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), args.header_timeout)
        report["open_seconds"] = round(time.monotonic() - attack_start, 2)
        await asyncio.sleep(1)
        report["rss_kib_during"] = rss_kib(proxy.pid)
        report["fds_during"] = fds(proxy.pid)
        opened_count = max(1, report["fds_during"] - report["fds_before"])
        report["kib_per_slow_connection"] = round(
            (report["rss_kib_during"] - report["rss_kib_before"]) / opened_count, 2
        )
        await normal_client_during(proxy, tasks, report)
        await asyncio.wait(tasks, timeout=args.header_timeout * 3 + 20)
        report["slow_outcomes"] = dict(outcomes)
        report["slow_closed_after_s"] = percentiles(closed_after)
        await asyncio.sleep(1)
        report["fds_after"] = fds(proxy.pid)
        report["rss_kib_after"] = rss_kib(proxy.pid)
        report["normal_client_after"] = percentiles([(await get(proxy.port))[1] for _ in range(50)])
        # More rounds against the same process: memory reused, or grown each time?
        report["later_rounds"] = [
            await attack_round(proxy, args) for _ in range(max(0, args.rounds - 1))
        ]
    finally:
        report["proxy_exit_code"] = await proxy.stop()
        report["tracebacks"] = sum("Traceback" in line for line in proxy.log)
        upstream.close()
    return report


async def attack_round(proxy: Proxy, args: argparse.Namespace) -> dict[str, Any]:
    """Open the slow connections again, wait until the proxy closed them all."""
    outcomes: Counter[str] = Counter()

    async def slow_client() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        except OSError:
            outcomes["connect_failed"] += 1
            return
        writer.write(HEAD)
        try:
            async with asyncio.timeout(args.header_timeout * 3 + 10):
                data = await reader.read(4096)
            outcomes[
                data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
            ] += 1
        except (TimeoutError, ConnectionError):
            outcomes["no_answer"] += 1
        finally:
            writer.transport.abort()

    tasks = []
    for _ in range(args.connections):
        tasks.append(asyncio.create_task(slow_client()))
        if len(tasks) % 500 == 0:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    during = rss_kib(proxy.pid)
    await asyncio.wait(tasks, timeout=args.header_timeout * 3 + 20)
    await asyncio.sleep(1)
    return {
        "rss_kib_during": during,
        "rss_kib_after": rss_kib(proxy.pid),
        "fds_after": fds(proxy.pid),
        "outcomes": dict(outcomes),
    }


# ----------------------------------------------------------------- slow POST, no reader
async def never_read(writer: asyncio.StreamWriter, done: asyncio.Event) -> str:
    """Read nothing: the response piles up in the kernel buffers, then in the proxy.
    When the proxy gives up it closes its socket, which a client that never reads
    cannot see (no RST: the proxy has nothing unread), so the proxy's descriptors are
    watched instead (``proxy_closed_all_after_s``); the client holds until then."""
    transport = cast(asyncio.Transport, writer.transport)
    transport.pause_reading()  # stop taking bytes off the socket
    await done.wait()
    return "cut_off"


async def slow_body_or_no_read(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``slowpost``: clients send a POST head announcing 1 MiB, then a byte every
    ``--trickle`` seconds (a body that stalls: server.body_timeout -> 408).
    ``noread``: clients ask for a 16 MiB body and never read it (the proxy's write
    buffer fills, it stops reading the upstream, and after server.body_timeout it
    cuts the client off). Either way: memory per connection, time until the proxy
    ends each one, and a normal client's latency meanwhile."""
    upstream, proxy, report = await start_attack_target(
        tmp, args.connections, body_timeout=args.body_timeout
    )
    report.update(mode=args.mode, connections=args.connections)
    try:
        outcomes: Counter[str] = Counter()
        ended_after: list[float] = []
        proxy_let_go = asyncio.Event()  # noread: the proxy closed every client connection

        async def client() -> None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            except OSError:
                outcomes["connect_failed"] += 1
                return
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(args.body_timeout * 3 + 20):
                    if args.mode == "slowpost":
                        writer.write(
                            b"POST /up HTTP/1.1\r\nHost: slow.test\r\n"
                            b"Content-Length: 1048576\r\n\r\n"
                        )
                        read = asyncio.create_task(reader.read(4096))
                        while not read.done():
                            await asyncio.wait([read], timeout=args.trickle)
                            if not read.done():
                                writer.write(b"x")
                        data = read.result()
                        outcome = data.split(b" ", 2)[1].decode() if data else "closed"
                    else:
                        writer.write(b"GET /big HTTP/1.1\r\nHost: slow.test\r\n\r\n")
                        outcome = await never_read(writer, proxy_let_go)
            except TimeoutError:
                outcome = "never_ended"
            except ConnectionError:
                outcome = "reset" if args.mode == "slowpost" else "cut_off"
            finally:
                ended_after.append(time.monotonic() - t0)
                writer.transport.abort()
            outcomes[outcome] += 1

        tasks = []
        for _ in range(args.connections):
            tasks.append(asyncio.create_task(client()))
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        report["rss_kib_during"] = rss_kib(proxy.pid)
        report["fds_during"] = fds(proxy.pid)
        held = max(1, report["fds_during"] - report["fds_before"])
        report["kib_per_connection"] = round(
            (report["rss_kib_during"] - report["rss_kib_before"]) / held, 2
        )
        attack_start = time.monotonic() - 2

        def watch_descriptors() -> None:
            if args.mode != "noread" or proxy_let_go.is_set():
                return
            if fds(proxy.pid) <= report["fds_before"] + 2:
                report["proxy_closed_all_after_s"] = round(time.monotonic() - attack_start, 1)
                proxy_let_go.set()
            elif time.monotonic() - attack_start > args.body_timeout * 3 + 20:
                proxy_let_go.set()  # give up waiting; reported as never closed

        await normal_client_during(proxy, tasks, report, watch_descriptors)
        proxy_let_go.set()
        await asyncio.wait(tasks, timeout=args.body_timeout * 3 + 30)
        report["outcomes"] = dict(outcomes)
        report["ended_after_s"] = percentiles(ended_after)
        await asyncio.sleep(1)
        report["fds_after"] = fds(proxy.pid)
        report["rss_kib_after"] = rss_kib(proxy.pid)
    finally:
        report["proxy_exit_code"] = await proxy.stop()
        report["tracebacks"] = sum("Traceback" in line for line in proxy.log)
        upstream.close()
    return report


# ----------------------------------------------------------------- EMFILE
async def emfile(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    config = tmp / "dsproxy.toml"
    write_config(config, upstream.sockets[0].getsockname()[1])
    proxy = Proxy(config, nofile=args.nofile)
    await proxy.start()
    report: dict[str, Any] = {"nofile": args.nofile, "clients": args.clients}
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        report["fds_idle"] = fds(proxy.pid)
        for _ in range(args.clients):
            try:
                conns.append(await asyncio.open_connection("127.0.0.1", proxy.port))
            except OSError as exc:
                report.setdefault("client_connect_errors", []).append(str(exc))
                break
        await asyncio.sleep(0.5)
        report["fds_full"] = fds(proxy.pid)
        cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
        await asyncio.sleep(args.hold)
        report["cpu_percent_while_full"] = round(
            100 * (cpu_seconds(proxy.pid) - cpu0) / (time.monotonic() - t0), 1
        )
        report["alive_while_full"] = proxy.alive()
        # A request on each connection: accepted ones need an upstream socket now.
        statuses: Counter[str] = Counter()

        async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(HEAD + b"\r\n")
                async with asyncio.timeout(5):
                    line = await reader.readline()
                statuses[
                    line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"
                ] += 1
            except (OSError, TimeoutError):
                statuses["no_answer"] += 1

        await asyncio.gather(*(ask(r, w) for r, w in conns))
        report["statuses_when_full"] = dict(statuses)
        report["alive_after_requests"] = proxy.alive()
        for _, writer in conns:
            writer.transport.abort()
        conns.clear()
        await asyncio.sleep(1)
        report["fds_after_release"] = fds(proxy.pid) if proxy.alive() else None
        served = [await get(proxy.port, limit_s=5) for _ in range(20)]
        report["statuses_after_release"] = dict(Counter(str(s) for s, _ in served))
    finally:
        for _, writer in conns:
            writer.transport.abort()
        report["proxy_exit_code"] = await proxy.stop()
        report["tracebacks"] = sum("Traceback" in line for line in proxy.log)
        messages = Counter(
            m.group(1) for line in proxy.log if (m := re.search(r'msg="([^":0-9]*)', line))
        )
        report["log_messages"] = dict(messages.most_common(8))
        upstream.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    slow = sub.add_parser("slowloris")
    slow.add_argument("--connections", type=int, default=2000)
    slow.add_argument("--trickle", type=float, default=2.0, help="seconds between fields")
    slow.add_argument("--header-timeout", type=float, default=10.0)
    slow.add_argument("--rounds", type=int, default=1, help="attacks on the same process")
    for mode in ("slowpost", "noread"):
        greedy = sub.add_parser(mode)
        greedy.add_argument("--connections", type=int, default=500)
        greedy.add_argument("--trickle", type=float, default=2.0, help="seconds between bytes")
        greedy.add_argument("--body-timeout", type=float, default=10.0)
    exhaust = sub.add_parser("emfile")
    exhaust.add_argument("--nofile", type=int, default=64)
    exhaust.add_argument("--clients", type=int, default=200)
    exhaust.add_argument("--hold", type=float, default=5.0, help="seconds of CPU sampling")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the clients need descriptors
    with tempfile.TemporaryDirectory(prefix="dsproxy-slow-") as tmp:
        run = {"slowloris": slowloris, "emfile": emfile}.get(args.mode, slow_body_or_no_read)
        try:
            import uvloop
        except ImportError:
            report = asyncio.run(run(args, Path(tmp)))
        else:
            report = uvloop.run(run(args, Path(tmp)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if report.get("proxy_exit_code") == 0 and not report.get("tracebacks") else 1


if __name__ == "__main__":
    sys.exit(main())
