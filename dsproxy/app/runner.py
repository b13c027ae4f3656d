"""The event loop a dsproxy process runs on: uvloop when installed, else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the default on Linux), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_main(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop and return its exit code."""
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(coro)
    except KeyboardInterrupt:
        return 130
