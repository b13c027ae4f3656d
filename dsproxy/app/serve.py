"""Process lifecycle: start, signals, reload, graceful shutdown.

SIGTERM / SIGINT (Kubernetes, Ctrl-C):
  1. /readyz turns 503 at once; traffic is still served for shutdown.delay
     seconds (a hostNetwork pod has no kube-proxy to drain it for us);
  2. listeners close, keep-alive connections get ``Connection: close`` on their
     next response and idle ones close, in-flight requests finish;
  3. after shutdown.grace what is left (WebSocket tunnels too) is closed; exit 0.
A second signal skips to the end. SIGHUP re-reads the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from dsproxy.config import Config
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort
from dsproxy.net.listener import Listener, ListenError
from dsproxy.proxy.server import ProxyServer

log = logging.getLogger("dsproxy")

# How often buffered access-log lines and batched metric counts are flushed.
FLUSH_SECONDS = 1.0


class Lifecycle:
    """Signals and phases of one serving process."""

    def __init__(self) -> None:
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        self.ready = False

    def on_stop_signal(self) -> None:
        if self.stop_requested.is_set():
            log.warning("second stop signal: closing everything now")
            self.force.set()
        else:
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
    listeners: list[Listener] | None = None,
    install_signals: bool = True,
    lifecycle: Lifecycle | None = None,
    reuse_port: bool | None = None,
) -> int:
    """Run one proxy process until it is told to stop; return the exit code."""
    from dsproxy.observe.accesslog import AccessLog, combine
    from dsproxy.observe.logsetup import configure_logging
    from dsproxy.observe.metrics import Metrics, metrics_registry_for_scrape

    configure_logging(config.log.level)
    loop = asyncio.get_running_loop()
    life = lifecycle or Lifecycle()
    metrics = Metrics()
    access = AccessLog(config.log.access) if config.log.access != "off" else None
    observer = combine([metrics, access] if access is not None else [metrics])
    server = ProxyServer(config, observer, reuse_port=reuse_port)
    try:
        await server.start(listeners)
    except ListenError as exc:
        log.error("%s", exc)
        return 1

    admin = None
    if config.admin.listen is not None:
        from dsproxy.observe.admin import start_admin

        try:
            admin = await start_admin(
                config.admin.listen,
                registry=metrics_registry_for_scrape(metrics.registry),
                is_ready=lambda: life.ready,
            )
        except OSError as exc:
            log.error("cannot listen on admin address %s: %s", config.admin.listen, exc)
            await server.shutdown(0)
            return 1

    async def do_reload() -> None:
        from dsproxy.config import reload_config

        source = server.config.source
        if source is None:
            log.warning("SIGHUP: no config file to re-read (started without -c)")
            return
        try:
            new = reload_config(server.config)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running config: %s: %s", source, exc)
            return
        try:
            await server.reload(new)
        except ListenError as exc:
            log.error("reload: %s", exc)
            return
        log.info("reloaded %s", source)

    reload_tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(do_reload())
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, life.on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

    flusher: asyncio.TimerHandle | None = None

    def flush() -> None:
        nonlocal flusher
        if access is not None:
            access.flush()
        metrics.flush()
        flusher = loop.call_later(FLUSH_SECONDS, flush)

    flush()
    life.ready = True
    if ready is not None:
        ready(server.addresses)
    try:
        await life.stop_requested.wait()
        life.ready = False
        if config.shutdown.delay > 0:
            log.info("readiness off; serving %.0fs more before draining", config.shutdown.delay)
            await life.sleep_unless_forced(config.shutdown.delay)
        grace = 0.0 if life.force.is_set() else config.shutdown.grace
        drain = loop.create_task(server.shutdown(grace))
        forced = loop.create_task(life.force.wait())
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await server.shutdown(0)
        forced.cancel()
    finally:
        if flusher is not None:
            flusher.cancel()
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
