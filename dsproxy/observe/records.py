"""What the proxy reports about its work, and the interface that receives it.

The I/O layer fills a ``RequestRecord`` per request and a ``TunnelRecord`` per
WebSocket session and hands them to one ``Observer``; metrics and the access
log are observers. Keeping this seam narrow keeps the hot path free of
prometheus and logging details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mypy_extensions import mypyc_attr

from dsproxy.http.codec.base import RequestHead
from dsproxy.net.addr import Family

# Bounded label values for client_error(kind).
CLIENT_ERROR_KINDS = (
    "bad_request",
    "header_timeout",
    "body_timeout",
    "header_too_large",
    "body_too_large",
    "over_capacity",
    "too_many_connections",
    "rate_limited",
    "proxy_protocol",  # no valid PROXY header in time, or a peer not allowed to send one
)
# Bounded label values for upstream_error(kind) (docs/configuration.md, metrics).
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "protocol")


class RequestRecord:
    """One finished request (proxied, or answered by the proxy itself).

    Made once per request on the hot path, so it keeps the parsed request head
    and decodes the text fields (method, target, version, Host, Referer,
    User-Agent) only when they are read: the access log reads them, metrics
    never do.
    """

    __slots__ = (
        "client_ip",
        "client_port",
        "family",
        "head",
        "status",
        "bytes_received",
        "bytes_sent",
        "start_time",
        "duration",
        "upstream_addr",
        "upstream_duration",
        "error",
        "route",
        "_fields",
    )

    def __init__(
        self,
        client_ip: str,  # normalised: never ::ffff:a.b.c.d
        client_port: int,
        family: Family,
        head: RequestHead,  # the request as the client sent it
        status: int,  # status sent to the client (0 when nothing could be sent)
        bytes_received: int,  # request body bytes read from the client
        bytes_sent: int,  # response body bytes written to the client
        start_time: float,  # wall clock (time.time()) when the head was complete
        duration: float,  # seconds, head complete -> response complete
        upstream_addr: str | None,  # "10.0.0.1:18080" / "[::1]:18080"
        upstream_duration: float | None,  # seconds from upstream request sent to response end
        error: str | None,  # ProxyError.kind when the proxy answered or aborted
        route: str = "default",  # the route's name ([[routes]] name, or "default")
    ) -> None:
        self.client_ip = client_ip
        self.client_port = client_port
        self.family = family
        self.head = head
        self.status = status
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.start_time = start_time
        self.duration = duration
        self.upstream_addr = upstream_addr
        self.upstream_duration = upstream_duration
        self.error = error
        self.route = route
        self._fields: tuple[str, str, str] | None = None

    @property
    def method(self) -> str:
        return self.head.method.decode("latin-1")

    @property
    def target(self) -> str:
        return self.head.target.decode("latin-1")

    @property
    def http_version(self) -> str:
        """``"1.1"`` / ``"1.0"``."""
        return self.head.version.decode("latin-1")

    def _scan(self) -> tuple[str, str, str]:
        fields = self._fields
        if fields is None:
            host = referer = agent = b""
            for name, value in self.head.headers:
                n = len(name)
                if n == 4 or n == 7 or n == 10:
                    lname = name.lower()
                    if lname == b"host":
                        host = value
                    elif lname == b"referer":
                        referer = value
                    elif lname == b"user-agent":
                        agent = value
            fields = self._fields = (
                host.decode("latin-1"),
                referer.decode("latin-1"),
                agent.decode("latin-1"),
            )
        return fields

    @property
    def host(self) -> str:
        return self._scan()[0]

    @property
    def referer(self) -> str:
        return self._scan()[1]

    @property
    def user_agent(self) -> str:
        return self._scan()[2]

    def __repr__(self) -> str:
        return (
            f"RequestRecord({self.client_ip}:{self.client_port} {self.method} {self.target!r}"
            f" -> {self.status}, error={self.error})"
        )


@dataclass(slots=True)
class TunnelRecord:
    """One WebSocket session, reported when the tunnel closes."""

    client_ip: str
    client_port: int
    family: Family
    target: str
    host: str
    upstream_addr: str | None
    start_time: float
    duration: float
    bytes_from_client: int
    bytes_to_client: int
    close_reason: str  # client_closed | upstream_closed | idle_timeout | shutdown | error
    user_agent: str = ""  # the client's User-Agent on the upgrade request
    route: str = "default"  # the route's name


class Observer(Protocol):
    """Receives events from the I/O layer. Implementations must not raise."""

    def connection_opened(self, family: Family) -> None: ...
    def connection_closed(self, family: Family) -> None: ...
    def request_done(self, record: RequestRecord) -> None: ...
    def client_error(self, kind: str) -> None: ...
    def upstream_error(self, kind: str) -> None: ...
    def upstream_connected(self, seconds: float) -> None: ...
    def upstream_acquired(self, reused: bool) -> None: ...
    def pool_idle(self, count: int) -> None: ...
    def websocket_opened(self) -> None: ...
    def websocket_closed(self, record: TunnelRecord) -> None: ...
    # TLS listeners: a handshake that failed (reason: net.tls.HANDSHAKE_FAILURE_REASONS),
    # and the certificate in force (its notAfter, POSIX seconds) after a start or reload.
    def tls_handshake_failed(self, reason: str) -> None: ...
    def tls_certificate_loaded(self, not_after: float) -> None: ...


# Compiled builds: observers written in plain Python (tests, plug-ins) may build on this.
@mypyc_attr(allow_interpreted_subclasses=True)
class NullObserver:
    """An observer that drops everything (tests, benchmarks of the bare path)."""

    def connection_opened(self, family: Family) -> None:
        pass

    def connection_closed(self, family: Family) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def client_error(self, kind: str) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass

    def upstream_connected(self, seconds: float) -> None:
        pass

    def upstream_acquired(self, reused: bool) -> None:
        pass

    def pool_idle(self, count: int) -> None:
        pass

    def websocket_opened(self) -> None:
        pass

    def websocket_closed(self, record: TunnelRecord) -> None:
        pass

    def tls_handshake_failed(self, reason: str) -> None:
        pass

    def tls_certificate_loaded(self, not_after: float) -> None:
        pass
