"""Several worker processes on one port (SO_REUSEPORT), watched by a supervisor.

The supervisor never touches client traffic. Each worker is a full one-process
proxy (``dsproxy.app.serve.serve``) that binds the listen addresses itself with
SO_REUSEPORT, so the kernel spreads new connections over the workers. The
supervisor:

- checks once that the listen addresses can be bound, then starts
  ``server.workers`` workers (``python -m dsproxy.app.worker --worker FILE``, the
  Config pickled into FILE); a worker reports its readiness through a pipe, one
  line (``ready`` / ``unready``) each time it changes (no listener open, or the
  upstream readiness rule failing, makes a worker unready);
- serves the admin listener: /metrics summed over workers with client_python's
  multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a fresh directory per run),
  /healthz, and /readyz = every wanted worker is ready and no stop signal came;
- SIGTERM / SIGINT: readiness off at once, SIGTERM to every worker (each drains
  with shutdown.delay and shutdown.grace), SIGKILL whatever is left after
  delay + grace + STOP_MARGIN_SECONDS, exit 0. A second signal sends a second
  SIGTERM, which makes the workers stop at once;
- SIGHUP: re-reads the config file; an invalid file, a new listen address that
  cannot be bound or a TLS certificate that cannot be loaded is logged and changes
  nothing (a worker started later must be able to start on it); a valid one is
  forwarded as SIGHUP (each worker reloads itself) and the worker count is adjusted;
- restarts a worker that dies unexpectedly; more than RESTART_LIMIT deaths
  within RESTART_WINDOW_SECONDS stop everything with exit code 1.

Workers run in their own session, so a terminal's Ctrl-C (sent to the whole
foreground process group) reaches only the supervisor, which alone decides
what the workers are told; under systemd use ``KillMode=mixed`` for the same
reason. On Linux a worker gets SIGTERM when the supervisor dies, even by
SIGKILL, so no orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsproxy.app.runner import run_main
from dsproxy.app.serve import cannot_serve, describe_start, serve, stdin_is_terminal
from dsproxy.config import Config
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dsproxy.observe.admin import AdminServer

log = logging.getLogger("dsproxy.app.supervisor")

# More unexpected worker deaths than this within the window: give up (crash loop).
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 30.0
# Extra time a stopping worker gets beyond shutdown.delay + shutdown.grace before SIGKILL.
STOP_MARGIN_SECONDS = 5.0
# What a worker writes to its readiness pipe: its first line says it has started
# (listeners bound); every later line is a change of readiness.
READY_MESSAGE = b"ready\n"
UNREADY_MESSAGE = b"unready\n"  # readiness lost (draining, no listener, no upstream)


@dataclass(eq=False)
class Worker:
    process: asyncio.subprocess.Process
    generation: int  # the config generation it was started with
    started: bool = False  # reported on its pipe: listeners bound, signals handled
    ready: bool = False
    retiring: bool = False  # told to stop: its exit is expected

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Starts, watches, signals and restarts the worker processes."""

    def __init__(self, config: Config, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.metrics_dir = state_dir / "metrics"
        self.metrics_dir.mkdir()
        self.workers: set[Worker] = set()
        self.generation = 0
        self.config_file = self._write_config(config)
        self.stopping = False
        self._stop_with = signal.SIGTERM  # what _retire sends a worker
        self.exit_code = 0
        self.all_exited = asyncio.Event()
        self.admin: AdminServer | None = None
        self._deaths: deque[float] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state -------------------------------------------------------------------
    @property
    def serving(self) -> list[Worker]:
        return [w for w in self.workers if not w.retiring]

    @property
    def wanted(self) -> int:
        return max(1, self.config.server.workers)

    def is_ready(self) -> bool:
        serving = self.serving
        return not self.stopping and len(serving) >= self.wanted and all(w.ready for w in serving)

    def _write_config(self, config: Config) -> Path:
        # A new file per generation: a worker started later reads the config it was meant to.
        self.generation += 1
        path = self.state_dir / f"config-{self.generation}.pickle"
        path.write_bytes(pickle.dumps(config))
        return path

    # -- main --------------------------------------------------------------------
    async def run(self) -> int:
        log.info("%s", describe_start(self.config))
        loop = asyncio.get_running_loop()
        # Fail fast and clearly instead of letting every worker crash on bind.
        problem = cannot_serve(self.config)
        if problem is not None:
            log.error("%s", problem)
            return 1
        if any(address.port == 0 for address in self.config.server.listen):
            log.warning("listen port 0 with several workers: each worker gets its own port")
        if self.config.admin.listen is not None:
            try:
                self.admin = await self._start_admin(self.config.admin.listen)
            except OSError as exc:
                from dsproxy.observe.admin import admin_bind_error

                log.error("%s", admin_bind_error(self.config.admin.listen, exc))
                return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.on_reload_signal)
        try:
            log.info("starting %d workers", self.wanted)
            for _ in range(self.wanted):
                await self.spawn()
            await self.all_exited.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for timer in self._timers:
                timer.cancel()
            for task in self._tasks:
                task.cancel()
            if self.admin is not None:
                await self.admin.close()
            for worker in self.workers:  # only when run() itself failed
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        log.info("stopped")
        return self.exit_code

    async def _start_admin(self, address: HostPort) -> AdminServer:
        from dsproxy.observe.admin import start_admin

        return await start_admin(address, registry=self._metrics_registry(), is_ready=self.is_ready)

    def _metrics_registry(self) -> CollectorRegistry:
        from dsproxy.observe.metrics import multiprocess_registry

        return multiprocess_registry(str(self.metrics_dir))

    # -- workers -----------------------------------------------------------------
    async def spawn(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir))
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dsproxy.app.worker",
                "--worker",
                str(self.config_file),
                "--ready-fd",
                str(write_fd),
                "--supervisor-pid",
                str(os.getpid()),
                pass_fds=(write_fd,),
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker = Worker(process, self.generation)
        self.workers.add(worker)
        log.info("worker %d started", worker.pid)
        if self.stopping:  # a stop signal came while it was being started
            self._retire(worker)

        pending = bytearray()

        def on_ready_pipe() -> None:
            try:
                data = os.read(read_fd, 4096)
            except OSError:
                data = b""
            if not data:  # EOF: the worker is gone
                loop.remove_reader(read_fd)
                os.close(read_fd)
                worker.ready = False
                return
            pending.extend(data)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                self._worker_reported(worker, line + b"\n")

        loop.add_reader(read_fd, on_ready_pipe)
        self._start_task(self._watch(worker))

    def _worker_reported(self, worker: Worker, message: bytes) -> None:
        if message not in (READY_MESSAGE, UNREADY_MESSAGE):
            log.warning("worker %d wrote %r on its readiness pipe", worker.pid, message)
            return
        ready = message == READY_MESSAGE
        if worker.started and ready != worker.ready:
            log.info("worker %d %s", worker.pid, "ready" if ready else "not ready")
        worker.ready = ready
        if not worker.started:
            worker.started = True
            self._worker_started(worker)

    def _worker_started(self, worker: Worker) -> None:
        log.debug("worker %d started (ready: %s)", worker.pid, worker.ready)
        if worker.generation != self.generation and not worker.retiring:
            # The config was reloaded while it started: bring it up to date.
            self._signal(worker, signal.SIGHUP)
            worker.generation = self.generation

    async def _watch(self, worker: Worker) -> None:
        from dsproxy.observe.metrics import mark_process_dead

        code = await worker.process.wait()
        self.workers.discard(worker)
        # Drops the dead process's live gauge files; its counters stay in the sums.
        mark_process_dead(worker.pid, path=str(self.metrics_dir))
        if worker.retiring or self.stopping:
            log.info("worker %d exited (%s)", worker.pid, describe_exit(code))
        else:
            log.error("worker %d died unexpectedly (%s)", worker.pid, describe_exit(code))
            if self._crash_loop():
                log.error(
                    "workers died more than %d times within %.0fs: stopping",
                    RESTART_LIMIT,
                    RESTART_WINDOW_SECONDS,
                )
                self.exit_code = 1
                self.stop()
            else:
                await self.spawn()
        if self.stopping and not self.workers:
            self.all_exited.set()

    def _crash_loop(self) -> bool:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - RESTART_WINDOW_SECONDS:
            self._deaths.popleft()
        return len(self._deaths) > RESTART_LIMIT

    def _retire(self, worker: Worker) -> None:
        """Tell ``worker`` to drain and stop; SIGKILL it if it outstays its time."""
        worker.retiring = True
        self._signal(worker, self._stop_with)
        shutdown = self.config.shutdown
        self._call_later(
            shutdown.delay + shutdown.grace + STOP_MARGIN_SECONDS,
            lambda: self._kill(worker),
        )

    def _kill(self, worker: Worker) -> None:
        if worker in self.workers:
            log.warning("worker %d did not stop in time: killing it", worker.pid)
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(sig)

    # -- signals -----------------------------------------------------------------
    def on_stop_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.stopping:
            log.warning("second stop signal: telling the workers to stop now")
            for worker in list(self.workers):
                self._signal(worker, signal.SIGTERM)
            return
        log.info("stop signal: readiness off, draining %d workers", len(self.workers))
        if sig == signal.SIGINT and stdin_is_terminal():
            # Ctrl-C by hand: the workers (same terminal on stdin) skip shutdown.delay
            # when they get SIGINT, as a one-process proxy does.
            self._stop_with = signal.SIGINT
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        for worker in self.serving:
            self._retire(worker)
        if not self.workers:
            self.all_exited.set()

    def on_reload_signal(self) -> None:
        self._start_task(self.reload())

    async def reload(self) -> None:
        from dsproxy.config import reload_config

        if self.stopping:
            return
        source = self.config.source
        if source is None:
            log.warning("SIGHUP: no config file to re-read (started without -c)")
            return
        try:
            new = reload_config(self.config)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running config: %s: %s", source, exc)
            return
        old = self.config
        if not self._can_listen(old, new):
            return
        self.config = new
        self.config_file = self._write_config(new)
        if new.admin.listen != old.admin.listen:
            from dsproxy.observe.admin import replace_admin

            self.admin = await replace_admin(
                self.admin, old.admin.listen, new.admin.listen, self._start_admin
            )
        if new.log.level != old.log.level:
            from dsproxy.observe.logsetup import configure_logging

            configure_logging(new.log.level)
        # Workers still starting are brought up to date when they report ready.
        for worker in self.serving:
            if worker.started:
                self._signal(worker, signal.SIGHUP)
                worker.generation = self.generation
        serving = sorted(self.serving, key=lambda w: w.pid)
        for worker in serving[self.wanted :]:
            self._retire(worker)
        for _ in range(self.wanted - len(serving)):
            await self.spawn()
        log.info(
            "reloaded %s (%d workers; each reloads itself and logs what it could not apply)",
            source,
            self.wanted,
        )

    def _can_listen(self, old: Config, new: Config) -> bool:
        """Can workers bind ``new``'s added addresses and load its certificate? Else refuse.

        Each worker would keep its old listeners (and certificate) anyway, but a worker
        started later (a replacement, or more workers) would start on the new config
        and die on it.
        """
        problem = cannot_serve(new, old)
        if problem is None:
            return True
        kept = ", ".join(str(address) for address in old.server.listen + old.server.tls_listen)
        log.error(
            "reload refused: %s; kept the old listeners (%s) and the running config", problem, kept
        )
        return False

    # -- helpers -------------------------------------------------------------------
    def _start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            callback()

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(config: Config) -> int:
    """``dsproxy run`` with ``server.workers > 1``: run the supervisor until stopped."""
    from dsproxy.observe.logsetup import configure_logging

    configure_logging(config.log.level)
    state_dir = Path(tempfile.mkdtemp(prefix="dsproxy-"))
    try:
        return run_main(_supervise(config, state_dir))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


async def _supervise(config: Config, state_dir: Path) -> int:
    return await Supervisor(config, state_dir).run()


def run(config: Config) -> int:
    """``dsproxy run``: one process, or a supervisor with ``server.workers`` processes."""
    if config.server.workers > 1:
        return supervise(config)
    return run_main(serve(config))
