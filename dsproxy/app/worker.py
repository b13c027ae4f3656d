"""One worker process of a supervised dsproxy (``python -m dsproxy.app.worker``).

The supervisor (``app/supervisor.py``) starts it with the Config pickled into a
file and a pipe to report readiness on; the worker binds the listen addresses
itself with SO_REUSEPORT and serves until told to stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dsproxy.app.runner import run_main
from dsproxy.app.serve import serve
from dsproxy.config import AdminConfig, Config

if TYPE_CHECKING:
    pass

from dsproxy.app.supervisor import READY_MESSAGE, UNREADY_MESSAGE


def _exit_with_supervisor(supervisor_pid: int) -> None:
    """Linux: have the kernel send us SIGTERM when the supervisor dies."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        sys.exit(0)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one worker: ``python -m dsproxy.app.worker --worker FILE ...``."""
    # Until serve() installs its handlers, a SIGHUP must not kill us (the
    # supervisor re-sends it once we report ready).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="dsproxy-worker")
    parser.add_argument("--worker", type=Path, required=True, help="pickled Config")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _exit_with_supervisor(args.supervisor_pid)

    config = pickle.loads(args.worker.read_bytes())
    if not isinstance(config, Config):
        print(f"dsproxy worker: {args.worker} holds no Config", file=sys.stderr)
        return 2
    ready_fd: int = args.ready_fd

    def readiness(ready: bool) -> None:
        # The supervisor's /readyz follows these lines; a dead pipe means it is gone.
        with contextlib.suppress(OSError):
            os.write(ready_fd, READY_MESSAGE if ready else UNREADY_MESSAGE)

    try:
        return run_main(
            serve(
                replace(config, admin=AdminConfig(listen=None)),
                readiness=readiness,
                reuse_port=True,
                supervised=True,
            )
        )
    finally:
        os.close(ready_fd)


if __name__ == "__main__":
    sys.exit(worker_main())
