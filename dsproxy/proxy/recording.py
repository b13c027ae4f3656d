"""The record of a WebSocket session, made from the exchange that switched protocols.

``Exchange.record`` reports a ``RequestRecord`` per finished request (proxied,
refused, failed or aborted; exactly once); a 101 instead starts a tunnel whose
``TunnelRecord`` is filled in as it runs and reported when it closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsproxy.http.codec.base import Headers
from dsproxy.observe.records import TunnelRecord

if TYPE_CHECKING:
    from dsproxy.proxy.exchange import Exchange
    from dsproxy.proxy.upstream import UpstreamConnection


def tunnel_record(ex: Exchange, conn: UpstreamConnection) -> TunnelRecord:
    host = ex.host
    up_req = ex.up_req
    return TunnelRecord(
        client_ip=host.client_ip,
        client_port=host.client_port,
        family=host.family,
        target=ex.head.target.decode("latin-1"),
        host=(up_req.host if up_req else b"").decode("latin-1"),
        upstream_addr=conn.peer,
        start_time=ex.wall_start,
        duration=0.0,
        bytes_from_client=0,
        bytes_to_client=0,
        close_reason="",
        user_agent=_field(ex.head.headers, b"user-agent").decode("latin-1"),
        route=ex.route.name,
    )


def _field(headers: Headers, lname: bytes) -> bytes:
    n = len(lname)
    for name, value in headers:
        if len(name) == n and name.lower() == lname:
            return value
    return b""
