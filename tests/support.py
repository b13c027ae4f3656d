"""Helpers shared by the test modules (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import socket

import pytest


def ipv6_available() -> bool:
    """True when this host can bind the IPv6 loopback (::1)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
