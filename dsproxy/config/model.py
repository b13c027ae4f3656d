"""The configuration's shape: frozen dataclasses, one per TOML section, and their value types."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dsproxy.net.addr import HostPort

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One upstream from ``upstream.url``: ``http://host:port`` (host may be a DNS name)."""

    host: str  # no brackets: "127.0.0.1", "::1", "gateway-server.ezci.svc.cluster.local"
    port: int

    @property
    def authority(self) -> str:
        """``host:port`` as it goes in a Host header (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[HostPort, ...] = (HostPort("::", 16980),)
    ipv6only: bool = False
    workers: int = 1  # "auto" is resolved to os.cpu_count() at load
    parser: Literal["auto", "h11", "httptools"] = "auto"
    max_connections: int = 10000
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 0  # 0 = unlimited
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_connections_per_ip: int = 0  # 0 = off; per client (IPv6: per ipv6_client_prefix)
    rate_limit: float = 0.0  # requests per second per client, 0 = off; over it -> 429
    rate_limit_burst: int = 0  # bucket size; 0 = one second's worth
    ipv6_client_prefix: int = 64  # IPv6 clients are counted per /N
    tls_listen: tuple[HostPort, ...] = ()  # TLS listeners (ALPN h2, http/1.1); needs [tls]
    h2c: bool = False  # cleartext listeners also take HTTP/2 with prior knowledge
    proxy_protocol: bool = False  # every connection opens with a PROXY v1/v2 header
    proxy_protocol_from: tuple[IPNetwork, ...] = ()  # peers allowed to send one
    forwarded: bool = False  # add an RFC 7239 Forwarded header


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    servers: tuple[UpstreamServer, ...] = ()  # from upstream.url (string or list); required
    host_header: Literal["preserve", "upstream"] = "preserve"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 64
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 10000
    resolve_interval: float = 30.0
    # Opt-in readiness rule: every readiness_interval seconds each upstream address is
    # connected to; /readyz fails while none answered within readiness_window. 0 = off.
    readiness_interval: float = 0.0
    readiness_window: float = 30.0


TlsVersion = Literal["1.2", "1.3"]
TLS_VERSIONS: tuple[TlsVersion, ...] = ("1.2", "1.3")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None  # PEM: the leaf, then its chain
    key: Path | None = None  # PEM private key of the leaf
    min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class Http2Config:
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 65536  # decoded header list (HPACK bombs stop here)
    websocket: bool = True  # RFC 8441 extended CONNECT


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    idle_timeout: float = 3600.0  # 0 = never


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # Next to the proxy's 16980; not 9100, which node_exporter holds on most nodes.
    listen: HostPort | None = HostPort("127.0.0.1", 16981)  # None = "off"


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    delay: float = 5.0
    grace: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access: Literal["combined", "json", "off"] = "combined"


# RFC 9110 §7.6.1 hop-by-hop fields (plus the de-facto Keep-Alive / Proxy-Connection):
# never forwarded. http/rules.py applies them; route header rules may not name them.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[[routes]]`` table: a path prefix and its own upstream group."""

    prefix: str  # normalised: starts with "/", no trailing "/"
    name: str  # metrics / access-log label (default: the prefix as written)
    upstream: UpstreamConfig  # [upstream] with this route's keys applied
    websocket_idle_timeout: float  # websocket.idle_timeout unless the route sets it
    request_headers_set: tuple[tuple[str, str], ...] = ()
    request_headers_remove: tuple[str, ...] = ()
    response_headers_set: tuple[tuple[str, str], ...] = ()
    response_headers_remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    http2: Http2Config = field(default_factory=Http2Config)
    admin: AdminConfig = field(default_factory=AdminConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    log: LogConfig = field(default_factory=LogConfig)
    routes: tuple[RouteConfig, ...] = ()  # [[routes]], in file order
    source: Path | None = None  # the file it was loaded from (for SIGHUP reload)
    # Command-line flags given at start, as apply_overrides keywords: a reload
    # re-reads the file and applies them again, so flags keep beating the file.
    overrides: tuple[tuple[str, str | tuple[str, ...]], ...] = ()


ParserName = Literal["auto", "h11", "httptools"]
HostHeaderMode = Literal["preserve", "upstream"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
AccessLogFormat = Literal["combined", "json", "off"]

PARSER_NAMES: tuple[ParserName, ...] = ("auto", "h11", "httptools")
HOST_HEADER_MODES: tuple[HostHeaderMode, ...] = ("preserve", "upstream")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error", "critical")
ACCESS_LOG_FORMATS: tuple[AccessLogFormat, ...] = ("combined", "json", "off")
