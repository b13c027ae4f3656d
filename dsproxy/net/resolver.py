"""Upstream name resolution with a cache that outlives failures.

nginx resolves ``proxy_pass`` names once at start, so a gateway Service whose
address changes is lost until a reload. We re-resolve every
``upstream.resolve_interval`` seconds (0 = once, like nginx) and keep the last
good answer when a lookup fails, logging the failure once per outage.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dsproxy.config import UpstreamServer

log = logging.getLogger("dsproxy.net.resolver")

Lookup = Callable[[str, int], Awaitable[list[tuple[int, str]]]]


async def system_lookup(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs from getaddrinfo, in the resolver's preference order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [(int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos]


def interleave_families(pairs: list[tuple[int, str]]) -> list[str]:
    """RFC 8305 §4: alternate families, starting with the family of the first answer."""
    seen: set[str] = set()
    first: list[str] = []
    second: list[str] = []
    lead = pairs[0][0] if pairs else socket.AF_INET6
    for family, address in pairs:
        if address in seen:
            continue
        seen.add(address)
        (first if family == lead else second).append(address)
    out: list[str] = []
    for i in range(max(len(first), len(second))):
        if i < len(first):
            out.append(first[i])
        if i < len(second):
            out.append(second[i])
    return out


@dataclass(slots=True)
class _Entry:
    addresses: list[str]
    expires: float
    failing: bool = False


class Resolver:
    def __init__(self, interval: float, lookup: Lookup = system_lookup) -> None:
        self.interval = interval
        self.lookup = lookup
        self._cache: dict[tuple[str, int], _Entry] = {}

    async def resolve(self, server: UpstreamServer, interval: float | None = None) -> list[str]:
        """Addresses to try for ``server``; raises OSError only with no good answer ever.

        ``interval`` is the caller's re-resolve interval (a route's own
        ``resolve_interval``); None means this resolver's.
        """
        if interval is None:
            interval = self.interval
        host = server.host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        key = (host, server.port)
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is not None and (interval == 0 or now < entry.expires):
            return entry.addresses
        try:
            addresses = interleave_families(await self.lookup(host, server.port))
            if not addresses:
                raise OSError(f"{host}: no addresses")
        except OSError as exc:
            if entry is None:
                raise OSError(f"cannot resolve {host}: {exc}") from None
            if not entry.failing:
                log.warning(
                    "resolving %s failed, keeping last good addresses %s: %s",
                    host,
                    ",".join(entry.addresses),
                    exc,
                )
                entry.failing = True
            entry.expires = now + min(interval, 5.0)
            return entry.addresses
        if entry is None or entry.addresses != addresses or entry.failing:
            log.info("upstream %s resolved to %s", host, ",".join(addresses))
        self._cache[key] = _Entry(addresses, now + interval)
        return addresses
