"""The one place an exchange becomes a record for the observers (metrics, access log).

A ``RequestRecord`` per finished request (proxied, refused, failed or
aborted; exactly once) and a ``TunnelRecord`` per WebSocket session, filled
in as the tunnel runs and reported when it closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsproxy.http.codec.base import Headers
from dsproxy.observe.records import RequestRecord, TunnelRecord

if TYPE_CHECKING:
    from dsproxy.proxy.exchange import Exchange
    from dsproxy.proxy.upstream import UpstreamConnection


def request_record(ex: Exchange, now: float, error: str | None) -> RequestRecord:
    host = ex.host
    upstream_started = ex.upstream_started
    return RequestRecord(  # positional: this runs once per request
        host.client_ip,
        host.client_port,
        host.family,
        ex.head,
        ex.status,
        ex.bytes_received,
        ex.bytes_sent,
        ex.wall_start,
        now - ex.started,
        ex.upstream_peer,
        (now - upstream_started) if upstream_started else None,
        error,
    )


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
    )


def _field(headers: Headers, lname: bytes) -> bytes:
    n = len(lname)
    for name, value in headers:
        if len(name) == n and name.lower() == lname:
            return value
    return b""
