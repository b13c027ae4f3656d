"""Process lifecycle: start, signals, reload, graceful shutdown.

SIGTERM / SIGINT (Kubernetes, Ctrl-C):
  1. /readyz turns 503 at once; traffic is still served for shutdown.delay
     seconds (a hostNetwork pod has no kube-proxy to drain it for us). Ctrl-C
     in a terminal (SIGINT with stdin a TTY) skips this: nothing load-balances
     a proxy run by hand;
  2. listeners close, keep-alive connections get ``Connection: close`` on their
     next response and idle ones close, in-flight requests finish;
  3. after shutdown.grace what is left (WebSocket tunnels too) is closed; exit 0.
A second signal skips to the end at once.

Readiness (/readyz, or the supervisor's pipe) is: started, no stop signal, at
least one listener open, and, when ``upstream.readiness_interval`` is set, an
upstream address answered recently (``dsproxy.app.health``).

SIGHUP re-reads the config file and applies it: listeners, upstream, timeouts,
the TLS certificate, the admin listener and ``log.level``. Keys that only apply at start
(``RESTART_KEYS``) are named in the log when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from dsproxy import __version__
from dsproxy.app.health import UpstreamReadiness
from dsproxy.config import Config
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort
from dsproxy.net.listener import Listener, ListenError
from dsproxy.proxy.server import ProxyServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dsproxy.observe.admin import AdminServer

log = logging.getLogger("dsproxy")

# How often buffered access-log lines and batched metric counts are flushed, and
# readiness changes are reported to a supervisor.
FLUSH_SECONDS = 1.0

# Keys a one-process reload cannot apply: (section, field, key as written).
RESTART_KEYS = (
    ("log", "access", "log.access"),
    ("server", "workers", "server.workers"),
    # Unchanged listen addresses keep their sockets, so their IPV6_V6ONLY stays as it was.
    ("server", "ipv6only", "server.ipv6only"),
)


def codec_name(parser: str) -> str:
    """What ``server.parser`` resolves to (``auto``: httptools when importable)."""
    if parser != "auto":
        return parser
    from dsproxy.http.codec import httptools_available

    return "httptools" if httptools_available() else "h11"


def describe_start(config: Config) -> str:
    """The start-up line: version, codec and upstream, what a bug report needs first."""
    upstream = ", ".join(server.url for server in config.upstream.servers) or "(none)"
    codec = codec_name(config.server.parser)
    return f"dsproxy {__version__} starting: upstream {upstream}, codec {codec}"


def keys_needing_restart(old: Config, new: Config) -> list[str]:
    return [
        key
        for section, name, key in RESTART_KEYS
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name)
    ]


def listen_error(exc: ListenError) -> str:
    """A listen address that cannot be bound, and what changes it."""
    flag = "--tls-listen" if exc.key == "server.tls_listen" else "--listen"
    return f"{exc} (change it with {flag} ADDR or {exc.key})"


def cannot_serve(config: Config, old: Config | None = None) -> str | None:
    """Why a worker could not start on ``config``, or None: what a supervisor checks first.

    A listen or TLS listen address that cannot be bound (with ``old``, only those it
    did not have), or a TLS certificate that cannot be loaded.
    """
    from dsproxy.net.listener import bind_all
    from dsproxy.proxy.tlsfront import load_tls

    server = config.server
    before = old.server if old is not None else None
    for key, addresses, had in (
        ("server.listen", server.listen, before.listen if before else ()),
        ("server.tls_listen", server.tls_listen, before.tls_listen if before else ()),
    ):
        added = tuple(a for a in addresses if a not in had)
        try:
            for listener in bind_all(added, ipv6only=server.ipv6only, reuse_port=True, key=key):
                listener.sock.close()
        except ListenError as exc:
            return listen_error(exc)
    if server.tls_listen:
        try:
            load_tls(config)
        except ConfigError as exc:
            return str(exc)
    return None


def stdin_is_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


class Lifecycle:
    """Signals and phases of one serving process."""

    def __init__(self) -> None:
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        self.ready = False
        self.interactive = False  # stopped by Ctrl-C in a terminal: no readiness delay

    def on_stop_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.stop_requested.is_set():
            log.info("second stop signal: closing everything now")
            self.force.set()
        else:
            self.interactive = sig == signal.SIGINT and stdin_is_terminal()
            log.info("stop signal: draining")
            self.ready = False
            self.stop_requested.set()

    async def sleep_unless_forced(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.force.wait(), timeout=seconds)


async def serve(
    config: Config,
    *,
    ready: Callable[[list[HostPort]], None] | None = None,
    readiness: Callable[[bool], None] | None = None,
    listeners: list[Listener] | None = None,
    install_signals: bool = True,
    lifecycle: Lifecycle | None = None,
    reuse_port: bool | None = None,
    supervised: bool = False,
) -> int:
    """Run one proxy process until it is told to stop; return the exit code.

    ``ready`` is called once with the bound addresses; ``readiness`` with every
    change of readiness (a worker tells its supervisor through it). A
    ``supervised`` worker leaves ``server.workers`` to its supervisor.
    """
    from dsproxy.observe.accesslog import AccessLog, combine
    from dsproxy.observe.admin import admin_bind_error, replace_admin
    from dsproxy.observe.logsetup import configure_logging
    from dsproxy.observe.metrics import Metrics, metrics_registry_for_scrape

    configure_logging(config.log.level)
    log.info("%s", describe_start(config))
    loop = asyncio.get_running_loop()
    life = lifecycle or Lifecycle()
    metrics = Metrics()
    access = AccessLog(config.log.access) if config.log.access != "off" else None
    observer = combine([metrics, access] if access is not None else [metrics])
    try:
        server = ProxyServer(config, observer, reuse_port=reuse_port)
    except ConfigError as exc:  # the TLS certificate cannot be loaded
        log.error("%s", exc)
        return 2
    upstream_ready = UpstreamReadiness(config.upstream, server.resolver)
    try:
        await server.start(listeners)
    except ListenError as exc:
        log.error("%s", listen_error(exc))
        return 1

    def is_ready() -> bool:
        return life.ready and server.listening and upstream_ready.ready()

    registry: CollectorRegistry = metrics_registry_for_scrape(metrics.registry)
    admin: AdminServer | None = None
    if config.admin.listen is not None:
        from dsproxy.observe.admin import start_admin

        try:
            admin = await start_admin(config.admin.listen, registry=registry, is_ready=is_ready)
        except OSError as exc:
            log.error("%s", admin_bind_error(config.admin.listen, exc))
            await server.shutdown(0)
            return 1

    async def do_reload() -> None:
        nonlocal admin
        from dsproxy.config import reload_config

        source = server.config.source
        if source is None:
            log.warning("SIGHUP: no config file to re-read (started without -c)")
            return
        old = server.config
        try:
            new = reload_config(old)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running config: %s: %s", source, exc)
            return
        configure_logging(new.log.level)
        try:
            await server.reload(new)
        except ListenError as exc:
            kept = ", ".join(str(address) for address in server.addresses + server.tls_addresses)
            log.error(
                "reload: %s; kept the old listeners (%s), the rest of the config applies",
                exc,
                kept,
            )
        await upstream_ready.reconfigure(new.upstream)
        if new.admin.listen != old.admin.listen:
            admin = await replace_admin(
                admin,
                old.admin.listen,
                new.admin.listen,
                lambda address: _start_admin(address, registry, is_ready),
            )
        restart = [
            key
            for key in keys_needing_restart(old, new)
            if not (supervised and key == "server.workers")
        ]
        if restart:
            log.warning("reload: %s changed but applies only after a restart", ", ".join(restart))
        log.info("reloaded %s", source)
        report_readiness()

    reload_tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(do_reload())
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, life.on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

    reported: bool | None = None

    def report_readiness() -> None:
        nonlocal reported
        now = is_ready()
        if now != reported and readiness is not None:
            readiness(now)
        reported = now

    flusher: asyncio.TimerHandle | None = None

    def flush() -> None:
        nonlocal flusher
        if access is not None:
            access.flush()
        metrics.flush()
        report_readiness()
        flusher = loop.call_later(FLUSH_SECONDS, flush)

    upstream_ready.start()
    life.ready = True
    flush()
    if ready is not None:
        ready(server.addresses)
    try:
        await life.stop_requested.wait()
        life.ready = False
        report_readiness()
        delay = server.config.shutdown.delay
        if delay > 0 and not life.interactive:
            log.info("readiness off; serving %gs more before draining", delay)
            await life.sleep_unless_forced(delay)
        grace = 0.0 if life.force.is_set() else server.config.shutdown.grace
        await _drain(server, grace, life.force)
    finally:
        if flusher is not None:
            flusher.cancel()
        for task in reload_tasks:
            task.cancel()
        await upstream_ready.stop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if admin is not None:
            await admin.close()
        if access is not None:
            access.flush()
        metrics.flush()
    log.info("stopped")
    return 0


async def _start_admin(
    address: HostPort, registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> AdminServer:
    from dsproxy.observe.admin import start_admin

    return await start_admin(address, registry=registry, is_ready=is_ready)


async def _drain(server: ProxyServer, grace: float, force: asyncio.Event) -> None:
    """``server.shutdown(grace)``, cut short when ``force`` is set (a second signal).

    Cutting short aborts the connections, so the drain's own wait ends at once and
    the drain finishes normally. Cancelling the drain instead would leave the
    ``gather`` inside ``ProxyServer.shutdown`` with a CancelledError nobody
    retrieves, which asyncio logs with a traceback at exit.
    """
    loop = asyncio.get_running_loop()
    drain = loop.create_task(server.shutdown(grace))
    forced = loop.create_task(force.wait())
    try:
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            server.abort()  # the drain's wait then ends at once
        await drain
    finally:
        forced.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forced
