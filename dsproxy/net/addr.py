"""Address forms used everywhere: listen addresses, peers, address families.

Pure functions, no sockets. ``[v6addr]:port`` and ``v4addr:port`` are the two
accepted spellings of a listen address (the same forms nginx's ``listen`` takes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Family = Literal["ipv4", "ipv6"]


@dataclass(frozen=True, slots=True)
class HostPort:
    """A parsed ``host:port``; ``host`` has no brackets (``::``, ``127.0.0.1``)."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def parse_hostport(text: str, *, allow_names: bool = False) -> HostPort:
    """Parse ``[v6]:port`` or ``v4:port`` (or ``name:port`` when ``allow_names``).

    Raises ValueError with a message fit to show a user.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r} is not of the form [v6addr]:port")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not of the form v4addr:port or [v6addr]:port")
        if ":" in host:
            raise ValueError(f"{text!r}: IPv6 addresses must be written in brackets, [{host}]")
        if not allow_names:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return HostPort(host, int(port_text))


def normalise_ip(ip: str) -> str:
    """Return ``ip`` with an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as ``a.b.c.d``.

    A peer that reaches a dual-stack ``[::]`` socket over IPv4 shows up mapped;
    headers, logs and metrics must show the IPv4 address the client really used.
    Scope ids (``fe80::1%eth0``) are kept.
    """
    if ip.startswith("::ffff:") or ip.startswith("::FFFF:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        if mapped is not None:
            return str(mapped)
    return ip


def family_of(ip: str) -> Family:
    """``ipv6`` when ``ip`` (already normalised) is an IPv6 address, else ``ipv4``."""
    return "ipv6" if ":" in ip else "ipv4"
