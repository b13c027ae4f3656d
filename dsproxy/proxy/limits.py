"""Per-client limits: open connections per client, and a request rate per client.

A *client* is an IPv4 address, or an IPv6 prefix (``server.ipv6_client_prefix``,
a /64 by default): one host is usually given a whole /64, and counting its
addresses one by one would let it open 2^64 times the limit.

``ClientLimits`` lives as long as the worker (a reload changes its settings,
not its counts, so connections opened before the reload still count). It does
no I/O: the client connection asks it and acts on the answer (close at once,
or answer 429). Rate limiting is a token bucket per client (nginx's
``limit_req`` with ``burst``, without the delay queue): ``rate`` tokens a
second, at most ``burst`` saved up; a request takes one. Buckets of clients
that went quiet are dropped, so memory follows the active clients only.
"""

from __future__ import annotations

import ipaddress

# How often (in requests checked) full buckets of quiet clients are swept out.
SWEEP_EVERY_REQUESTS = 4096


def client_key(ip: str, ipv6_prefix: int) -> str:
    """The unit the limits count: the IPv4 address, or the IPv6 address's /prefix."""
    if ":" not in ip:
        return ip
    try:
        net = ipaddress.IPv6Network((ip.partition("%")[0], ipv6_prefix), strict=False)
    except ValueError:
        return ip
    return str(net)


class ClientLimits:
    __slots__ = (
        "max_connections",
        "rate",
        "burst",
        "ipv6_prefix",
        "_open",
        "_buckets",
        "_checked",
    )

    def __init__(self, *, max_connections: int, rate: float, burst: int, ipv6_prefix: int) -> None:
        self.max_connections = 0
        self.rate = 0.0
        self.burst = 0.0
        self.ipv6_prefix = 64
        self._open: dict[str, int] = {}
        # key -> (tokens, loop time they were counted at)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._checked = 0
        self.configure(
            max_connections=max_connections, rate=rate, burst=burst, ipv6_prefix=ipv6_prefix
        )

    def configure(self, *, max_connections: int, rate: float, burst: int, ipv6_prefix: int) -> None:
        """New settings (a reload); counts of open connections are kept."""
        self.max_connections = max_connections
        self.rate = rate
        self.burst = float(burst) if burst else max(1.0, rate)  # 0: one second's worth
        if ipv6_prefix != self.ipv6_prefix:
            self._buckets.clear()  # keys change meaning; open counts keep their old keys
        self.ipv6_prefix = ipv6_prefix

    @staticmethod
    def off() -> ClientLimits:
        return ClientLimits(max_connections=0, rate=0.0, burst=0, ipv6_prefix=64)

    @property
    def active(self) -> bool:
        return bool(self.max_connections or self.rate)

    def key(self, ip: str) -> str:
        return client_key(ip, self.ipv6_prefix)

    # -- connections ----------------------------------------------------------------
    def connection_opened(self, key: str) -> bool:
        """Count a new connection of ``key``; False (not counted) when over the limit."""
        count = self._open.get(key, 0)
        if self.max_connections and count >= self.max_connections:
            return False
        self._open[key] = count + 1
        return True

    def connection_closed(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_connections(self, key: str) -> int:
        return self._open.get(key, 0)

    # -- request rate ---------------------------------------------------------------
    def allow_request(self, key: str, now: float) -> bool:
        """Take a token from ``key``'s bucket; False when it is empty (answer 429)."""
        rate = self.rate
        if not rate:
            return True
        burst = self.burst
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._checked += 1
        if self._checked >= SWEEP_EVERY_REQUESTS:
            self._sweep(now)
        return allowed

    def _sweep(self, now: float) -> None:
        """Drop buckets that have refilled: their client is quiet, a new bucket is the same."""
        self._checked = 0
        full_after = self.burst / self.rate
        self._buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self._buckets.items()
            if now - at < full_after
        }

    @property
    def tracked_clients(self) -> int:
        return len(self._buckets)
