"""What every client connection of one configuration generation shares.

A reload makes a new ``Shared``: connections accepted after it use the new
configuration, router and pools; open ones finish on the one they started with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from dsproxy.config import Config
from dsproxy.http.codec.base import CodecFactory
from dsproxy.observe.records import Observer
from dsproxy.proxy.limits import ClientLimits
from dsproxy.proxy.pool import PoolRegistry
from dsproxy.proxy.router import Router


class ServedConnection(Protocol):
    """A client connection as the server sees it while draining."""

    def close_if_idle(self) -> bool: ...
    def abort(self) -> None: ...


@dataclass(slots=True, eq=False)
class Shared:
    config: Config
    codec: CodecFactory
    pools: PoolRegistry
    router: Router
    observer: Observer
    # The worker's, shared by every generation (counts survive reloads); off by default.
    limits: ClientLimits = field(default_factory=ClientLimits.off)
    connections: set[ServedConnection] = field(default_factory=set)
    draining: bool = False
    # Set by shutdown; fired when the last connection closes.
    all_closed: asyncio.Event | None = None
    # Set by a reload: the generation that replaced this one. A request that arrives on
    # a connection of this generation after the reload is new work, so it is routed by
    # the newest generation's router and pools (this one's pools are closed).
    successor: Shared | None = None

    def newest(self) -> Shared:
        shared = self
        while shared.successor is not None:
            shared = shared.successor
        return shared

    def connection_closed(self, conn: ServedConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self.all_closed is not None:
            self.all_closed.set()
