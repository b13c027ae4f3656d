"""Listening sockets: one dual-stack socket for ``[::]`` unless told otherwise.

We create and bind the sockets ourselves instead of letting
``loop.create_server(host=...)`` do it, because that would open two sockets
for ``::`` on some systems and always set IPV6_V6ONLY on IPv6 ones; the whole
point here is a single ``[::]`` socket that takes IPv4 too (as nginx's
``listen [::]:P ipv6only=off``).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

from dsproxy.net.addr import HostPort

log = logging.getLogger("dsproxy.net.listener")

# Accept queue length: the kernel caps it at net.core.somaxconn, so asking high
# costs nothing and lets bursts of new connections wait instead of being reset.
BACKLOG = 4096


class ListenError(OSError):
    """A listen address could not be bound; the message names it, ``key`` its config key."""

    key = "server.listen"


@dataclass(slots=True)
class Listener:
    address: HostPort  # what was asked for
    sock: socket.socket
    # What the socket is bound to (port 0 resolved), read once at bind time: the
    # event loop closes the socket when its server closes, and then it has no name.
    bound: HostPort = HostPort("", 0)

    def __post_init__(self) -> None:
        host, port = self.sock.getsockname()[:2]
        self.bound = HostPort(str(host), int(port))

    @property
    def dual_stack(self) -> bool:
        if self.sock.family != socket.AF_INET6:
            return False
        return self.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def _make_socket(
    family: int, host: str, port: int, *, v6only: bool, reuse_port: bool
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Set explicitly: the default comes from net.ipv6.bindv6only and differs by host.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(
    address: HostPort, *, ipv6only: bool = False, reuse_port: bool = False
) -> Listener:
    """Bind one listen address. ``[::]`` on a host without IPv6 falls back to 0.0.0.0."""
    try:
        if address.is_ipv6:
            try:
                sock = _make_socket(
                    socket.AF_INET6,
                    address.host,
                    address.port,
                    v6only=ipv6only,
                    reuse_port=reuse_port,
                )
            except OSError as exc:
                unavailable = exc.errno in (
                    errno.EAFNOSUPPORT,
                    errno.EADDRNOTAVAIL,
                    errno.EPROTONOSUPPORT,
                )
                if address.host != "::" or ipv6only or not unavailable:
                    raise
                log.warning(
                    "IPv6 is not available on this host (%s); listening on 0.0.0.0:%d instead",
                    exc.strerror,
                    address.port,
                )
                sock = _make_socket(
                    socket.AF_INET, "0.0.0.0", address.port, v6only=False, reuse_port=reuse_port
                )
        else:
            sock = _make_socket(
                socket.AF_INET, address.host, address.port, v6only=False, reuse_port=reuse_port
            )
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}") from None
    return Listener(address, sock)


def bind_all(
    addresses: tuple[HostPort, ...],
    *,
    ipv6only: bool,
    reuse_port: bool,
    key: str = "server.listen",
) -> list[Listener]:
    """Bind every address or none (sockets already bound are closed on failure).

    ``key`` is the config key the addresses come from; a ``ListenError`` carries it.
    """
    listeners: list[Listener] = []
    try:
        for address in addresses:
            listeners.append(bind_listener(address, ipv6only=ipv6only, reuse_port=reuse_port))
    except BaseException as exc:
        for listener in listeners:
            listener.sock.close()
        if isinstance(exc, ListenError):
            exc.key = key
        raise
    return listeners
