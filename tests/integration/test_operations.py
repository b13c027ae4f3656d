"""Operations on real processes over loopback: signals, reload, workers, metrics, logs.

Each test starts ``python -m dsproxy run -c FILE`` (one process, or a supervisor
with workers), a small echo upstream in a thread of the test process, and
talks to both over 127.0.0.1 / ::1. Every wait is bounded and every process is
killed in ``finally``.

The upstream answers every request with JSON naming itself, the path, and the
peer address of the proxy's upstream connection (``peer_port``: each worker
has its own pool, so distinct ports show distinct upstream connections).
``/slow?seconds=S`` answers after S seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dsproxy.config import Config, ServerConfig, UpstreamConfig, UpstreamServer
from dsproxy.net.addr import HostPort
from dsproxy.net.resolver import Resolver
from dsproxy.observe.records import NullObserver
from dsproxy.proxy.server import ProxyServer
from tests.support import ipv6_available

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0
WAIT_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


HAS_IPV6 = ipv6_available()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="IPv6 loopback (::1) is not available")


def free_port() -> int:
    """A port that was free a moment ago, on both 127.0.0.1 and [::].

    Several workers bind the listen port themselves (SO_REUSEPORT), so the
    proxy cannot be given port 0. We bind port 0, read the port and close the
    socket: another process could take the port before the proxy binds it. The
    window is a few milliseconds on a test box; the proxy then fails to start
    with "cannot listen on" in its log, which names the cause.
    """
    family, host = (socket.AF_INET6, "::") if HAS_IPV6 else (socket.AF_INET, "127.0.0.1")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def wait_until_async(
    step: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    what: str,
) -> None:
    """Await ``step()`` every 0.1 s until ``predicate`` accepts its result."""
    timeout = WAIT_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(await step()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- the upstream -------------------------------------------------------------------


@dataclass
class EchoUpstream:
    """A tiny HTTP/1.1 keep-alive server on asyncio that echoes each request as JSON."""

    name: str
    requests: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close every open connection (as a crashed server would)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self.writers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                url = urlsplit(target)
                if url.path == "/slow":
                    await asyncio.sleep(float(parse_qs(url.query)["seconds"][0]))
                body = json.dumps(
                    {
                        "upstream": self.name,
                        "method": method,
                        "path": url.path,
                        "peer_host": peer[0],
                        "peer_port": peer[1],
                        "headers": headers,
                    }
                ).encode()
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\n" % len(body)
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\n"
                    + body
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()


class UpstreamThread:
    """Runs EchoUpstream servers on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstreams: list[EchoUpstream] = []

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_TIMEOUT_SECONDS)

    def start(self, name: str, host: str = "127.0.0.1", port: int = 0) -> EchoUpstream:
        upstream = EchoUpstream(name)
        self.call(upstream.start(host, port))
        self.upstreams.append(upstream)
        return upstream

    def stop(self, upstream: EchoUpstream) -> None:
        self.call(upstream.close())

    def close(self) -> None:
        for upstream in self.upstreams:
            with contextlib.suppress(Exception):
                self.call(upstream.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_TIMEOUT_SECONDS)
        self.loop.close()


@pytest.fixture
def upstreams() -> Iterator[UpstreamThread]:
    runner = UpstreamThread()
    try:
        yield runner
    finally:
        runner.close()


# -- the proxy process --------------------------------------------------------------


def config_text(
    *,
    port: int,
    admin_port: int,
    upstream_ports: list[int],
    workers: int = 1,
    delay: float = 0,
    grace: float = 10,
    keepalive: int | None = None,
    extra: str = "",
    upstream_extra: str = "",
    log_extra: str = "",
    access: str = "json",
) -> str:
    listen = f"[::]:{port}" if HAS_IPV6 else f"127.0.0.1:{port}"
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in upstream_ports)
    if keepalive is not None:
        upstream_extra += f"\nkeepalive = {keepalive}\n"
    return (
        f'[server]\nlisten = ["{listen}"]\nworkers = {workers}\n{extra}\n'
        f"[upstream]\nurl = [{urls}]\n{upstream_extra}\n"
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n\n'
        f"[shutdown]\ndelay = {delay}\ngrace = {grace}\n\n"
        f'[log]\naccess = "{access}"\n{log_extra}\n'
    )


class ProxyProcess:
    """``python -m dsproxy run -c FILE`` with its stdout and stderr collected by threads."""

    def __init__(
        self, config_file: Path, port: int, admin_port: int, stdin: int | None = None
    ) -> None:
        self.config_file = config_file
        self.port = port
        self.admin_port = admin_port
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dsproxy", "run", "-c", str(config_file)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._collect, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.decode(errors="replace"))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return "".join(self.stderr)

    def admin_status(self, path: str) -> int | None:
        try:
            return httpx.get(self.admin_url + path, timeout=2, trust_env=False).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"proxy exited with {self.process.returncode} while starting:\n{self.log()}"
                )
            if self.admin_status("/readyz") == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"proxy not ready after {START_TIMEOUT_SECONDS:.0f}s:\n{self.log()}")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"proxy still running {timeout:.0f}s after being told to stop:\n{self.log()}"
            ) from None

    def children(self) -> set[int]:
        """Live child processes (the workers), read from /proc."""
        found: set[int] = set()
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (task / "children").read_text().split())
        return {pid for pid in found if process_alive(pid)}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(self.admin_url + "/metrics", timeout=5, trust_env=False).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def close(self) -> None:
        workers = self.children()
        if self.process.poll() is None:
            self.process.kill()
        for pid in workers:  # the kernel would SIGTERM them; don't wait for their drain
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(WAIT_TIMEOUT_SECONDS)
        for reader in self._readers:
            reader.join(WAIT_TIMEOUT_SECONDS)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def process_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a zombie has closed its sockets)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(*, stdin: int | None = None, wait_ready: bool = True, **options: Any) -> ProxyProcess:
        port, admin_port = free_port(), free_port()
        config_file = tmp_path / "dsproxy.toml"
        config_file.write_text(config_text(port=port, admin_port=admin_port, **options))
        proxy = ProxyProcess(config_file, port, admin_port, stdin=stdin)
        started.append(proxy)
        if wait_ready:
            proxy.wait_ready()
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.close()


def get(url: str, timeout: float = 5) -> httpx.Response:
    """One request on a fresh connection."""
    return httpx.get(url, timeout=timeout, trust_env=False)


def echo(url: str) -> dict[str, Any]:
    response = get(url)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])


# -- signals ------------------------------------------------------------------------


@WORKERS
def test_sigterm_readiness_off_then_drain_then_exit_0(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=workers, delay=1.5, grace=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, proxy.url + "/slow?seconds=3", 15)
        wait_until(lambda: upstream.requests == 1, "the slow request to reach the upstream")
        proxy.signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_until(lambda: proxy.admin_status("/readyz") == 503, "/readyz 503", timeout=1.0)
        assert time.monotonic() - sent < 1.0
        # shutdown.delay: readiness is off but traffic is still served.
        assert echo(proxy.url + "/during-delay")["path"] == "/during-delay"
        assert proxy.process.poll() is None
        code = proxy.wait_exit(15)
        assert slow.result(1).status_code == 200
    assert code == 0
    assert time.monotonic() - sent >= 2.5  # it waited for the in-flight request


@WORKERS
def test_second_sigterm_stops_at_once(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=workers, delay=10, grace=30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, proxy.url + "/slow?seconds=20", 25)
        wait_until(lambda: upstream.requests == 1, "the slow request to reach the upstream")
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: proxy.admin_status("/readyz") == 503, "/readyz 503", timeout=1.0)
        time.sleep(0.3)
        proxy.signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proxy.wait_exit(5)
        assert time.monotonic() - sent < 5
        with pytest.raises(httpx.TransportError):
            slow.result(5)  # the in-flight request was cut
    assert code == 0


# -- reload -------------------------------------------------------------------------


@WORKERS
def test_sighup_with_new_upstream_moves_traffic(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    a, b = upstreams.start("A"), upstreams.start("B")
    proxy = start_proxy(upstream_ports=[a.port], workers=workers)
    with httpx.Client(base_url=proxy.url, timeout=5, trust_env=False) as keepalive:
        assert keepalive.get("/before").json()["upstream"] == "A"
        proxy.config_file.write_text(
            config_text(
                port=proxy.port,
                admin_port=proxy.admin_port,
                upstream_ports=[b.port],
                workers=workers,
            )
        )
        proxy.signal(signal.SIGHUP)
        wait_until(
            lambda: all(echo(proxy.url + "/after")["upstream"] == "B" for _ in range(5)),
            "new connections to reach upstream B",
        )
        # The client's keep-alive connection keeps working across the reload
        # (an idle one may be closed by the proxy; httpx reconnects, no request fails).
        for _ in range(5):
            assert keepalive.get("/kept").status_code == 200
    assert proxy.admin_status("/readyz") == 200
    wait_until(lambda: "reloaded" in proxy.log(), "the reload logged")
    # Workers have no admin listener of their own: a reload must not try to bind one.
    assert "cannot listen on admin" not in proxy.log()
    assert proxy.process.poll() is None


@WORKERS
def test_sighup_with_invalid_file_keeps_running_config(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    a, b = upstreams.start("A"), upstreams.start("B")
    proxy = start_proxy(upstream_ports=[a.port], workers=workers)
    proxy.config_file.write_text(
        config_text(
            port=proxy.port,
            admin_port=proxy.admin_port,
            upstream_ports=[b.port],
            workers=workers,
            extra="no_such_key = 1",
        )
    )
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "server.no_such_key" in proxy.log(), "the reload error naming the key")
    for _ in range(5):
        assert echo(proxy.url + "/")["upstream"] == "A"
    assert proxy.admin_status("/readyz") == 200
    assert proxy.process.poll() is None


# -- workers ------------------------------------------------------------------------


def test_killed_worker_is_replaced(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=2)
    wait_until(lambda: len(proxy.children()) == 2, "two workers")
    before = proxy.children()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not process_alive(victim), "the killed worker to be gone")
    # The survivor (and soon the replacement) keep serving new connections.
    for i in range(10):
        assert echo(proxy.url + f"/meanwhile/{i}")["upstream"] == "A"
    wait_until(
        lambda: len(proxy.children()) == 2 and victim not in proxy.children(),
        "a replacement worker",
    )
    wait_until(lambda: proxy.admin_status("/readyz") == 200, "/readyz 200 again")
    assert "died unexpectedly" in proxy.log()
    for i in range(10):
        assert echo(proxy.url + f"/after/{i}")["upstream"] == "A"


def test_workers_dying_in_a_loop_stop_the_supervisor_with_exit_1(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=2)
    killed: set[int] = set()
    deadline = time.monotonic() + 2 * START_TIMEOUT_SECONDS
    # More than RESTART_LIMIT (5) deaths within the window.
    while len(killed) < 6 and proxy.process.poll() is None and time.monotonic() < deadline:
        for pid in proxy.children() - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.05)
    assert len(killed) >= 6
    assert proxy.wait_exit(15) == 1
    assert "died more than 5 times" in proxy.log()


def test_sighup_changes_the_worker_count(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=2)
    wait_until(lambda: len(proxy.children()) == 2, "two workers")
    for workers in (3, 1):
        proxy.config_file.write_text(
            config_text(
                port=proxy.port,
                admin_port=proxy.admin_port,
                upstream_ports=[upstream.port],
                workers=workers,
            )
        )
        proxy.signal(signal.SIGHUP)
        count = workers
        wait_until(lambda: len(proxy.children()) == count, f"{count} workers")  # noqa: B023
        wait_until(lambda: proxy.admin_status("/readyz") == 200, "/readyz 200")
        for i in range(5):
            assert echo(proxy.url + f"/{workers}/{i}")["upstream"] == "A"


def test_workers_exit_when_the_supervisor_is_killed(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=2)
    wait_until(lambda: len(proxy.children()) == 2, "two workers")
    workers = proxy.children()
    proxy.process.kill()
    proxy.process.wait(WAIT_TIMEOUT_SECONDS)
    # Linux PR_SET_PDEATHSIG: each worker gets SIGTERM and drains (shutdown.delay = 0).
    wait_until(lambda: not any(process_alive(pid) for pid in workers), "orphaned workers to exit")
    with pytest.raises(httpx.TransportError):
        get(proxy.url + "/", timeout=2)


def test_two_workers_both_serve(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=2)
    # Sequential requests: one worker would reuse its single pooled upstream
    # connection, so two upstream peer ports mean two workers served. The kernel
    # spreads new connections by a hash; all 40 on one worker has odds 2**-39.
    ports = {echo(proxy.url + f"/{i}")["peer_port"] for i in range(40)}
    assert len(ports) >= 2


# -- metrics and access log ------------------------------------------------------------


@WORKERS
def test_requests_total_counts_every_request(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=workers)
    requests = 25
    for i in range(requests):
        echo(proxy.url + f"/counted/{i}")
    labels = {"code": "200", "family": "ipv4"}
    wait_until(
        lambda: proxy.metric("dsproxy_requests_total", **labels) >= requests,
        "the request counter",
        timeout=5,
    )
    assert proxy.metric("dsproxy_requests_total", **labels) == requests


def test_access_log_json_shows_plain_client_addresses(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port])
    echo(proxy.url + "/over-ipv4")
    if HAS_IPV6:
        echo(f"http://[::1]:{proxy.port}/over-ipv6")

    def entries() -> list[dict[str, Any]]:
        found = []
        for line in list(proxy.stdout):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    def entry_for(path: str) -> dict[str, Any] | None:
        for entry in entries():
            if any(isinstance(v, str) and path in v for v in entry.values()):
                return entry
        return None

    wait_until(lambda: entry_for("/over-ipv4") is not None, "the access log line", timeout=5)
    v4 = entry_for("/over-ipv4")
    assert v4 is not None
    values = [v for v in v4.values() if isinstance(v, str)]
    assert "127.0.0.1" in values, v4
    assert not any(v.startswith("::ffff:") for v in values), v4
    assert 200 in v4.values(), v4
    if HAS_IPV6:
        wait_until(lambda: entry_for("/over-ipv6") is not None, "the IPv6 log line", timeout=5)
        v6 = entry_for("/over-ipv6")
        assert v6 is not None
        assert "::1" in v6.values(), v6


# -- several upstream servers ----------------------------------------------------------


def test_round_robin_and_failover(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    a, b = upstreams.start("A"), upstreams.start("B")
    # keepalive = 0: no idle upstream connections, so every request picks a server.
    proxy = start_proxy(upstream_ports=[a.port, b.port], keepalive=0)
    seen = [echo(proxy.url + f"/rr/{i}")["upstream"] for i in range(10)]
    assert seen.count("A") == 5
    assert seen.count("B") == 5
    upstreams.stop(a)
    statuses = [get(proxy.url + f"/failover/{i}").status_code for i in range(10)]
    assert statuses == [200] * 10
    assert proxy.process.poll() is None


# -- DNS re-resolution (in-process) --------------------------------------------------


@needs_ipv6
def test_upstream_name_that_changes_address() -> None:
    """gateway.test moves from 127.0.0.1:P to [::1]:P; traffic follows after the interval."""

    async def scenario() -> None:
        a, b = EchoUpstream("A"), EchoUpstream("B")
        await a.start("127.0.0.1", 0)
        await b.start("::1", a.port)  # same port, other family: only DNS tells them apart
        answer = [(socket.AF_INET, "127.0.0.1")]

        async def fake_lookup(host: str, port: int) -> list[tuple[int, str]]:
            assert host == "gateway.test"
            return list(answer)

        config = Config(
            server=ServerConfig(listen=(HostPort("127.0.0.1", 0),)),
            upstream=UpstreamConfig(
                servers=(UpstreamServer("gateway.test", a.port),),
                keepalive_timeout=1.0,
                resolve_interval=0.2,
            ),
        )
        server = ProxyServer(config, NullObserver(), resolver=Resolver(0.2, lookup=fake_lookup))
        await server.start()
        url = f"http://127.0.0.1:{server.addresses[0].port}/"
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                for _ in range(3):
                    assert (await client.get(url)).json()["upstream"] == "A"
                assert a.open_connections >= 1
                answer[:] = [(socket.AF_INET6, "::1")]
                await wait_until_async(
                    lambda: client.get(url), lambda r: r.json()["upstream"] == "B", "upstream B"
                )
                for _ in range(3):
                    assert (await client.get(url)).json()["upstream"] == "B"
                # The pooled connections to the old address expire (keepalive_timeout).
                await wait_until_async(
                    lambda: asyncio.sleep(0),
                    lambda _: a.open_connections == 0,
                    "A's connections to close",
                )
        finally:
            await server.shutdown(1.0)
            await a.close()
            await b.close()

    asyncio.run(scenario())


# -- reload: listen addresses, admin, log (issue 12) --------------------------------


def refuses(url: str) -> bool:
    try:
        get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def hold_port(port: int) -> socket.socket:
    """Occupy ``port`` the way the proxy would bind it (dual-stack [::] when there is IPv6)."""
    family, host = (socket.AF_INET6, "::") if HAS_IPV6 else (socket.AF_INET, "127.0.0.1")
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen()
    return sock


@WORKERS
def test_sighup_with_a_new_listen_port_moves_the_listener(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=workers)
    old_url, new_port = proxy.url, free_port()
    proxy.config_file.write_text(
        config_text(
            port=new_port,
            admin_port=proxy.admin_port,
            upstream_ports=[upstream.port],
            workers=workers,
        )
    )
    proxy.signal(signal.SIGHUP)
    new_url = f"http://127.0.0.1:{new_port}"
    wait_until(lambda: not refuses(new_url), "the new listen port to serve")
    wait_until(lambda: refuses(old_url), "the old listen port to close")
    for _ in range(5):
        assert echo(new_url + "/moved")["path"] == "/moved"
    assert proxy.admin_status("/readyz") == 200
    assert "stopped listening on" in proxy.log()
    assert "Traceback" not in proxy.log()
    assert proxy.process.poll() is None


@WORKERS
def test_sighup_with_a_taken_port_keeps_the_old_listener(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], workers=workers)
    taken = hold_port(free_port())
    try:
        proxy.config_file.write_text(
            config_text(
                port=taken.getsockname()[1],
                admin_port=proxy.admin_port,
                upstream_ports=[upstream.port],
                workers=workers,
            )
        )
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: "kept the old listeners" in proxy.log(), "the reload error")
        for _ in range(5):
            assert echo(proxy.url + "/still")["path"] == "/still"
        assert proxy.admin_status("/readyz") == 200
        line = next(line for line in proxy.log().splitlines() if "kept the old" in line)
        assert f":{taken.getsockname()[1]}" in line  # names the address that failed
        assert f":{proxy.port}" in line  # and the one it kept
    finally:
        taken.close()
    assert proxy.process.poll() is None


def test_sighup_moves_the_admin_listener_and_applies_log_level(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port])
    old_admin, new_admin = proxy.admin_port, free_port()
    proxy.config_file.write_text(
        config_text(
            port=proxy.port,
            admin_port=new_admin,
            upstream_ports=[upstream.port],
            log_extra='level = "debug"',
            access="combined",
        )
    )
    proxy.signal(signal.SIGHUP)
    proxy.admin_port = new_admin
    wait_until(lambda: proxy.admin_status("/readyz") == 200, "the admin listener to move")
    wait_until(lambda: refuses(f"http://127.0.0.1:{old_admin}/healthz"), "the old admin port")
    # log.level applies at once: debug lines appear (an admin request that is refused).
    with socket.create_connection(("127.0.0.1", new_admin), timeout=5) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        sock.recv(1024)
    wait_until(lambda: "level=debug" in proxy.log(), "a debug line after the reload")
    # log.access cannot change without a restart: the log says so, naming the key.
    assert "log.access changed but applies only after a restart" in proxy.log()
    assert echo(proxy.url + "/after")["path"] == "/after"


# -- start-up and stopping by hand (issue 12) --------------------------------------------


def test_start_up_logs_version_upstream_and_codec(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    from dsproxy import __version__
    from dsproxy.app.serve import codec_name

    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port])
    line = next(line for line in proxy.log().splitlines() if "starting" in line)
    assert f"dsproxy {__version__} starting" in line
    assert f"upstream http://127.0.0.1:{upstream.port}" in line
    assert f"codec {codec_name('auto')}" in line


@contextlib.contextmanager
def terminal_stdin() -> Iterator[int]:
    """A pseudo-terminal for the child's stdin, as when run by hand."""
    import pty

    primary, secondary = pty.openpty()
    try:
        yield secondary
    finally:
        os.close(secondary)
        os.close(primary)


@WORKERS
def test_ctrl_c_in_a_terminal_skips_the_readiness_delay(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    upstream = upstreams.start("A")
    with terminal_stdin() as tty:
        proxy = start_proxy(upstream_ports=[upstream.port], delay=20, stdin=tty, workers=workers)
        proxy.signal(signal.SIGINT)
        sent = time.monotonic()
        assert proxy.wait_exit(10) == 0
    assert time.monotonic() - sent < 5  # not shutdown.delay (20 s)
    assert "readiness off; serving" not in proxy.log()


def test_sigint_without_a_terminal_keeps_the_readiness_delay(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    proxy = start_proxy(upstream_ports=[upstream.port], delay=1.5)  # stdin: not a TTY
    proxy.signal(signal.SIGINT)
    sent = time.monotonic()
    assert proxy.wait_exit(10) == 0
    assert time.monotonic() - sent >= 1.5
    assert "readiness off; serving 1.5s more" in proxy.log()


def test_second_ctrl_c_stops_at_once_without_a_traceback(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread
) -> None:
    upstream = upstreams.start("A")
    with (
        terminal_stdin() as tty,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        proxy = start_proxy(upstream_ports=[upstream.port], delay=5, grace=30, stdin=tty)
        slow = pool.submit(get, proxy.url + "/slow?seconds=20", 25)
        wait_until(lambda: upstream.requests == 1, "the slow request to reach the upstream")
        proxy.signal(signal.SIGINT)  # drains: waits for the slow request up to grace
        wait_until(lambda: "stop signal: draining" in proxy.log(), "the first stop")
        time.sleep(0.3)
        proxy.signal(signal.SIGINT)
        sent = time.monotonic()
        assert proxy.wait_exit(5) == 0
        assert time.monotonic() - sent < 1.0
        with pytest.raises(httpx.TransportError):
            slow.result(5)
    log = proxy.log()
    assert "Traceback" not in log
    assert "never retrieved" not in log


# -- readiness on the upstream (issue 12) ---------------------------------------------


@WORKERS
def test_readiness_follows_the_upstream_when_asked(
    start_proxy: Callable[..., ProxyProcess], upstreams: UpstreamThread, workers: int
) -> None:
    # With workers, each reports its readiness to the supervisor, which serves /readyz.
    gateway_port = free_port()  # nothing listens there yet
    proxy = start_proxy(
        workers=workers,
        upstream_ports=[gateway_port],
        upstream_extra='readiness_interval = "100ms"\nreadiness_window = "500ms"',
        wait_ready=False,
    )
    wait_until(lambda: proxy.admin_status("/healthz") == 200, "the admin listener")
    time.sleep(0.5)
    assert proxy.admin_status("/readyz") == 503  # no upstream address has answered
    gateway = upstreams.start("G", port=gateway_port)
    wait_until(lambda: proxy.admin_status("/readyz") == 200, "ready once the upstream answers")
    upstreams.stop(gateway)
    wait_until(lambda: proxy.admin_status("/readyz") == 503, "not ready once it stops answering")
    assert "no upstream address answers" in proxy.log()


def test_a_taken_listen_port_names_the_flag_and_the_key(tmp_path: Path) -> None:
    holder = hold_port(free_port())
    port = holder.getsockname()[1]
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run(
            [sys.executable, "-m", "dsproxy", "run", "--listen", f"127.0.0.1:{port}"]
            + ["--upstream", "http://127.0.0.1:1", "--admin", "off"],
            capture_output=True,
            text=True,
            env=env,
            timeout=START_TIMEOUT_SECONDS,
            check=False,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--listen ADDR or server.listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_readiness_needs_an_open_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz is never 200 while the server has no listener open (issue 12, item 1)."""
    from dsproxy.app.serve import Lifecycle, serve
    from dsproxy.config import AdminConfig, ShutdownConfig

    listening = {"now": True}
    monkeypatch.setattr(ProxyServer, "listening", property(lambda self: listening["now"]))
    admin_port = free_port()
    config = Config(
        server=ServerConfig(listen=(HostPort("127.0.0.1", 0),)),
        upstream=UpstreamConfig(servers=(UpstreamServer("127.0.0.1", 1),)),
        admin=AdminConfig(listen=HostPort("127.0.0.1", admin_port)),
        shutdown=ShutdownConfig(delay=0, grace=1),
    )
    seen: list[bool] = []

    async def main() -> None:
        life = Lifecycle()
        task = asyncio.create_task(
            serve(config, install_signals=False, lifecycle=life, readiness=seen.append)
        )
        url = f"http://127.0.0.1:{admin_port}/readyz"
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:

            async def status() -> int:
                try:
                    return (await client.get(url)).status_code
                except httpx.TransportError:
                    return 0

            await wait_until_async(status, lambda code: code == 200, "ready")
            listening["now"] = False
            assert await status() == 503
            listening["now"] = True
            assert await status() == 200
        life.on_stop_signal()
        assert await asyncio.wait_for(task, WAIT_TIMEOUT_SECONDS) == 0

    # serve() installs dsproxy's log handler on the root logger: take it off again.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        asyncio.run(asyncio.wait_for(main(), 2 * WAIT_TIMEOUT_SECONDS))
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    assert seen[0] is True  # reported to a supervisor as it changes
    assert seen[-1] is False  # and not ready once stopping
