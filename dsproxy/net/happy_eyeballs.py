"""RFC 8305 Happy Eyeballs: connect to the first of several addresses that answers.

Attempts start ``delay`` seconds apart (the next one at once when the one
before it failed); the first to connect wins and every other attempt is
cancelled, and one that connected anyway is handed to ``discard`` so its
socket never leaks. The addresses come interleaved by family from the
resolver, so an unreachable family costs one ``delay``, not a connect timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# RFC 8305 §5: the recommended delay between connection attempts.
HAPPY_EYEBALLS_DELAY_SECONDS = 0.25


async def connect_first(
    attempt: Callable[[str], Awaitable[T]],
    addresses: Sequence[str],
    *,
    discard: Callable[[T], None],
    delay: float = HAPPY_EYEBALLS_DELAY_SECONDS,
) -> T:
    """The result of the first ``attempt(address)`` to succeed; OSError naming every failure."""
    if len(addresses) == 1:
        return await attempt(addresses[0])
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[T]] = set()
    errors: list[str] = []
    remaining = list(addresses)

    async def run(address: str) -> T:
        return await attempt(address)

    try:
        while remaining or pending:
            if remaining:
                pending.add(loop.create_task(run(remaining.pop(0))))
            done, _ = await asyncio.wait(
                pending,
                timeout=delay if remaining else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                pending.discard(task)
                exc = task.exception()
                if exc is None:
                    return task.result()
                errors.append(str(exc))
        raise OSError("; ".join(errors) or "no address to connect to")
    finally:
        for task in pending:
            task.cancel()
            task.add_done_callback(lambda t: _discard_if_connected(t, discard))


def _discard_if_connected(task: asyncio.Task[T], discard: Callable[[T], None]) -> None:
    if not task.cancelled() and task.exception() is None:
        discard(task.result())
