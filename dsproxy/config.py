"""Configuration: TOML file + command-line overrides -> one frozen ``Config``.

(Loading and validation are being written; the dataclasses below are the
contract the rest of the code is written against.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dsproxy.addr import HostPort

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


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    idle_timeout: float = 3600.0  # 0 = never


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: HostPort | None = HostPort("127.0.0.1", 9100)  # None = "off"


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    delay: float = 5.0
    grace: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access: Literal["combined", "json", "off"] = "combined"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file it was loaded from (for SIGHUP reload)
