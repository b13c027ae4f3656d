"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` over plain HTTP/1.1.

A tiny ``asyncio.Protocol`` server on h11, separate from the proxy's data path:
one small request at a time per connection (pipelined requests wait in h11's
buffer), keep-alive allowed, and every fault (malformed request, oversized
head or body, slow client) ends in an error response and/or a closed
connection, never an exception out of the protocol.

- ``GET /healthz`` -> 200 ``ok`` while the process runs (liveness).
- ``GET /readyz``  -> 200 ``ready``, or 503 ``draining`` once ``is_ready()``
  turns false (after SIGTERM), so load balancers stop sending traffic before
  the listeners close.
- ``GET /metrics`` -> the Prometheus text format of ``registry``.

HEAD is accepted wherever GET is; other methods get 405, other paths 404.
"""

from __future__ import annotations

import asyncio
import errno
import http
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dsproxy.net.addr import HostPort

log = logging.getLogger("dsproxy.observe.admin")

# Request line + headers; admin requests are a few hundred bytes.
MAX_HEADER_BYTES = 8192
# Admin endpoints take no body; a small one is read and ignored, a big one closes.
MAX_BODY_BYTES = 65536
# Each request must arrive in full within this long of the connection opening
# or of the previous response (covers idle keep-alive and slow senders).
REQUEST_TIMEOUT_SECONDS = 5.0
# A scraper holds one connection; a few more for probes and humans.
LISTEN_BACKLOG = 64

_TEXT = b"text/plain; charset=utf-8"
_ALLOWED_METHODS = (b"GET", b"HEAD")
_PATHS = (b"/healthz", b"/readyz", b"/metrics")

# IPv6 unavailable on this host: "[::]" falls back to "0.0.0.0" (as listeners do).
_NO_IPV6_ERRNOS = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: bytes = _TEXT
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


class AdminHandler:
    """Turns an admin request into a reply (no I/O)."""

    def __init__(self, registry: CollectorRegistry, is_ready: Callable[[], bool]) -> None:
        self.registry = registry
        self.is_ready = is_ready

    def handle(self, method: bytes, target: bytes) -> _Reply:
        path = target.split(b"?", 1)[0]
        if path not in _PATHS:
            return _Reply(404, b"not found\n")
        if method not in _ALLOWED_METHODS:
            return _Reply(405, b"method not allowed\n", extra_headers=((b"allow", b"GET, HEAD"),))
        if path == b"/healthz":
            return _Reply(200, b"ok\n")
        if path == b"/readyz":
            try:
                ready = self.is_ready()
            except Exception:
                log.exception("readiness check failed")
                ready = False
            return _Reply(200, b"ready\n") if ready else _Reply(503, b"draining\n")
        try:
            body = generate_latest(self.registry)
        except Exception:
            log.exception("collecting metrics failed")
            return _Reply(500, b"collecting metrics failed\n")
        return _Reply(200, body, content_type=CONTENT_TYPE_LATEST.encode())


class AdminProtocol(asyncio.Protocol):
    """One admin connection: h11 in, replies out, closed on any fault."""

    def __init__(self, handler: AdminHandler, connections: set[AdminProtocol]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.request: h11.Request | None = None
        self.body_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, don't assert.
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._cancel_timer()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            self._process()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, str(exc))
        except Exception:
            log.exception("admin connection failed")
            self._fail(500, "internal error")

    def eof_received(self) -> bool | None:
        try:
            self.conn.receive_data(b"")
            self._process()
        except Exception:
            self.close()
        return None  # close our side too

    def pause_writing(self) -> None:
        # A client that pipelines without reading: stop reading until it drains.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # -- request cycle -------------------------------------------------------
    def _process(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body_bytes = 0
            elif isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                if self.body_bytes > MAX_BODY_BYTES:
                    self._fail(413, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _respond(self) -> None:
        request = self.request
        assert request is not None
        reply = self.handler.handle(request.method, request.target)
        self._send(reply, head_only=request.method == b"HEAD")
        self.request = None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._arm_timer()
        else:
            self.close()

    def _send(self, reply: _Reply, *, head_only: bool = False, close: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(reply.body)).encode()),
            (b"cache-control", b"no-store"),
            *reply.extra_headers,
        ]
        if close:
            headers.append((b"connection", b"close"))
        conn = self.conn
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=reason_phrase(reply.status)
        )
        out = conn.send(response) or b""
        if not head_only and reply.body:
            out += conn.send(h11.Data(data=reply.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        transport.write(out)

    def _fail(self, status: int, why: str) -> None:
        """Answer ``status`` if a response can still be sent, then close."""
        log.debug("admin request refused (%d): %s", status, why)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                message = f"{h11_reason(status)}\n".encode()
                self._send(_Reply(status, message), close=True)
            except h11.LocalProtocolError:
                pass
        self.close()

    def _timed_out(self) -> None:
        self.timer = None
        conn = self.conn
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            self.close()  # an idle keep-alive connection: just close
        else:
            self._fail(408, "request timeout")

    # -- helpers -------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(REQUEST_TIMEOUT_SECONDS, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def reason_phrase(status: int) -> bytes:
    """RFC 9110 §15's reason phrase (``OK``, ``Service Unavailable``); h11 sends none."""
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def h11_reason(status: int) -> str:
    return {
        400: "bad request",
        408: "request timeout",
        413: "request body too large",
        431: "request header too large",
    }.get(status, "error")


class AdminServer:
    """A running admin listener."""

    def __init__(
        self, server: asyncio.Server, connections: set[AdminProtocol], address: HostPort
    ) -> None:
        self._server = server
        self._connections = connections
        self.address = address  # as bound: port 0 replaced by the OS's choice

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets)

    async def close(self) -> None:
        """Stop listening and close every admin connection."""
        self._server.close()
        for protocol in list(self._connections):
            protocol.close()
        await self._server.wait_closed()


def _bind(addr: HostPort) -> socket.socket:
    if not addr.is_ipv6:
        return socket.create_server((addr.host, addr.port), backlog=LISTEN_BACKLOG)
    # "[::]" is one dual-stack socket (IPV6_V6ONLY cleared) when the OS allows;
    # create_server sets IPV6_V6ONLY on other IPv6 addresses.
    dualstack = addr.host == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server(
            (addr.host, addr.port),
            family=socket.AF_INET6,
            backlog=LISTEN_BACKLOG,
            dualstack_ipv6=dualstack,
        )
    except OSError as exc:
        if addr.host != "::" or exc.errno not in _NO_IPV6_ERRNOS:
            raise
        log.warning("admin: IPv6 is not available (%s); listening on 0.0.0.0 instead", exc)
        return socket.create_server(("0.0.0.0", addr.port), backlog=LISTEN_BACKLOG)


async def start_admin(
    addr: HostPort, *, registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> AdminServer:
    """Listen on ``addr`` (port 0: the OS picks) and serve the admin endpoints.

    Raises OSError when the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    handler = AdminHandler(registry, is_ready)
    connections: set[AdminProtocol] = set()
    sock = _bind(addr)
    try:
        sock.setblocking(False)
        server = await loop.create_server(
            lambda: AdminProtocol(handler, connections), sock=sock, backlog=LISTEN_BACKLOG
        )
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    address = HostPort(host, port)
    log.info("admin listening on %s", address)
    return AdminServer(server, connections, address)


def admin_bind_error(address: HostPort, exc: OSError) -> str:
    """The log line for an admin address that cannot be bound, naming what changes it."""
    return (
        f"cannot listen on admin address {address}: {exc.strerror or exc} "
        "(change it with --admin ADDR|off or admin.listen)"
    )


async def replace_admin(
    current: AdminServer | None,
    old: HostPort | None,
    new: HostPort | None,
    start: Callable[[HostPort], Awaitable[AdminServer]],
) -> AdminServer | None:
    """Move the admin listener from ``old`` to ``new`` (either may be None = off).

    The new address is bound before the old one closes; when that fails (the same
    port on another host, say), the old one is closed first and binding is tried
    again. If ``new`` cannot be bound at all, the old listener is kept (or bound
    again) and the failure is logged: the admin listener never silently vanishes.
    """
    if new is None:
        if current is not None:
            await current.close()
            log.info("admin listener on %s closed (admin.listen = off)", old)
        return None
    try:
        fresh = await start(new)
    except OSError as exc:
        if current is None:
            log.error("%s", admin_bind_error(new, exc))
            return None
        # Maybe the old listener holds the port: close it, then try once more.
        await current.close()
        current = None
        try:
            fresh = await start(new)
        except OSError as again:
            log.error("%s; keeping the admin listener on %s", admin_bind_error(new, again), old)
            if old is None:
                return None
            try:
                return await start(old)
            except OSError as lost:
                log.error("%s", admin_bind_error(old, lost))
                return None
    if current is not None:
        await current.close()
    return fresh
