"""TLS listeners: accepting, each connection's handshake, and the certificate in force.

A TLS listen socket is bound by ``net/listener.py`` exactly like a cleartext one. A
``TlsAcceptor`` accepts on it; each connection gets a ``TlsHandshake`` that runs
``loop.connect_accepted_socket(ssl=...)`` (uvloop's TLS, or asyncio's) with the context
in force at accept time. When the handshake completes, the loop calls the handshake's
``connection_made`` with the TLS transport, and it hands the transport over to the
protocol ALPN chose (``ALPN_HANDLERS``: ``ClientConnection`` for ``http/1.1`` or no
ALPN), which gets ``connection_made`` as if it had been accepted directly; no byte
of the connection has been read by then.

Why not ``loop.create_server(ssl=...)``: the loop then swallows failed handshakes
(``ssl.SSLError`` is an ``OSError``, which it logs only in debug mode), so nothing
could be counted, and a reload could not give new handshakes a new certificate
without touching the context live connections were made with. Why not ``start_tls``
on a connection from a cleartext server: uvloop starts reading a new connection right
after ``connection_made`` (a ``pause_reading`` there has no effect), so the
ClientHello can be read before ``start_tls`` takes the socket, and is lost.
``connect_accepted_socket`` raises what went wrong, so failures are counted by reason
(``net.tls.handshake_failure_reason``). The cost is one task per TLS connection (not
per request), small next to the handshake's own cryptography.

Deadlines: the handshake must finish within ``server.header_timeout``; closing a TLS
connection waits at most ``TLS_SHUTDOWN_TIMEOUT_SECONDS`` for the client's close_notify.
Out of descriptors (EMFILE and the like), an acceptor stops accepting for
``ACCEPT_RETRY_SECONDS`` and leaves new connections in the kernel's queue, as asyncio's
own servers do.

Reload: ``TlsFront.reload`` loads the files again. A certificate or key that cannot be
loaded leaves the one in force serving (and the log says why); connections already
open keep the session they have, and new handshakes use whatever is in force.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from dsproxy.config import Config
from dsproxy.errors import ConfigError
from dsproxy.net.tls import ALPN_PROTOCOLS, ServerTls, handshake_failure_reason, load_server_tls
from dsproxy.observe.records import Observer
from dsproxy.proxy.connection import ClientConnection
from dsproxy.proxy.shared import Shared

log = logging.getLogger("dsproxy.proxy.tls")

# Closing a TLS connection sends close_notify and waits for the client's; a client that
# keeps the socket open without answering is cut off after this (uvloop's default is 30 s).
TLS_SHUTDOWN_TIMEOUT_SECONDS = 5.0
# Connections accepted per wake-up at most, so a burst cannot starve the loop's other work.
ACCEPT_BATCH = 64
# accept() out of descriptors or memory: pause accepting this long (asyncio waits 1 s too).
ACCEPT_RETRY_SECONDS = 1.0
# accept() errors that concern one queued connection only (the client gave up).
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

# ALPN protocol -> the client-side protocol that serves it; a connection without ALPN
# is HTTP/1.1. Only protocols listed here are offered (in ALPN_PROTOCOLS' order, h2
# first), so registering the HTTP/2 front end here is what turns "h2" on.
ALPN_HANDLERS: dict[str, Callable[[Shared], asyncio.Protocol]] = {
    "http/1.1": ClientConnection,
}
HTTP1 = "http/1.1"


def offered_protocols() -> tuple[str, ...]:
    return tuple(p for p in ALPN_PROTOCOLS if p in ALPN_HANDLERS)


def load_tls(config: Config) -> ServerTls:
    """``[tls]`` of ``config`` loaded (ConfigError naming ``tls.cert``/``tls.key``)."""
    tls = config.tls
    if tls.cert is None or tls.key is None:
        missing = "tls.cert" if tls.cert is None else "tls.key"
        raise ConfigError(missing, "is required when server.tls_listen is set")
    return load_server_tls(tls.cert, tls.key, tls.min_version, offered_protocols())


class TlsFront:
    """The certificate one worker serves on its TLS listeners, and their connections.

    ``shared`` returns the configuration generation in force (it changes on reload).
    """

    def __init__(self, observer: Observer, shared: Callable[[], Shared]) -> None:
        self.observer = observer
        self.shared = shared
        self.current: ServerTls | None = None

    def start(self, config: Config) -> None:
        """Load the certificate when there are TLS listeners; ConfigError if it cannot be."""
        if config.server.tls_listen:
            self._install(load_tls(config))

    def reload(self, config: Config) -> bool:
        """Load the files again; False when TLS listeners cannot serve (no certificate).

        A certificate that cannot be loaded keeps the one in force (logged); files that
        did not change keep the context, and with it the session ticket keys.
        """
        if not config.server.tls_listen:
            return True
        try:
            loaded = load_tls(config)
        except ConfigError as exc:
            current = self.current
            if current is None:
                log.error("reload: %s; the TLS listeners stay closed", exc)
                return False
            log.error(
                "reload: %s; kept the certificate in force (%s), the rest of the config applies",
                exc,
                current.certificate.path,
            )
            return True
        if self.current is None or loaded.fingerprint != self.current.fingerprint:
            self._install(loaded)
        return True

    def _install(self, loaded: ServerTls) -> None:
        self.current = loaded
        info = loaded.certificate
        log.info("TLS certificate %s: %s", info.path, info.describe())
        for warning in info.warnings():
            log.warning("TLS: %s", warning)
        self.observer.tls_certificate_loaded(info.not_after)

    def accept(self, sock: socket.socket, peer: object) -> None:
        """A connection just accepted on a TLS listener: count it, start its handshake."""
        current, shared = self.current, self.shared()
        if current is None or len(shared.connections) >= shared.config.server.max_connections:
            shared.observer.client_error("over_capacity")  # (no certificate: never served)
            sock.close()
            return
        TlsHandshake(shared, self.shared, current.context, sock, peer).start()


class TlsHandshake(asyncio.Protocol):
    """Owns a connection accepted on a TLS listener until its handshake is over.

    It is one of ``shared.connections`` (of the generation it was accepted in)
    meanwhile, so it counts against ``server.max_connections`` (checked before any
    cryptography) and a shutdown's abort reaches it. A handshake in progress is not
    idle: a reload or a drain lets it finish. Its connection then serves on the
    generation in force at the end of the handshake (``current()``), not the one it was
    accepted in: a reload in between has closed that one's pools.
    """

    def __init__(
        self,
        shared: Shared,
        current: Callable[[], Shared],
        context: ssl.SSLContext,
        sock: socket.socket,
        peer: object,
    ) -> None:
        self.shared = shared
        self.current = current
        self.context = context
        self.sock = sock  # the loop's once the handshake task runs
        self.peer = peer
        self.task: asyncio.Task[None] | None = None
        self.running = False
        self.handed_over = False
        self.aborted = False  # by a shutdown: not a failure to count

    def start(self) -> None:
        self.shared.connections.add(self)
        task = self.task = asyncio.get_running_loop().create_task(self._handshake())
        task.add_done_callback(self._done)

    async def _handshake(self) -> None:
        self.running = True
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._self,
                self.sock,
                ssl=self.context,
                ssl_handshake_timeout=self.shared.config.server.header_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_SECONDS,
            )
        except asyncio.CancelledError:  # aborted: the loop closed the connection
            raise
        except Exception as exc:
            self._failed(exc)
            return
        if not self.handed_over:  # lost during the handshake, without an error
            self._failed(None)

    def _self(self) -> TlsHandshake:
        return self  # the protocol factory: the loop's TLS layer reports to us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is complete: hand the TLS transport to the protocol ALPN chose."""
        tls = transport
        ssl_object = tls.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        app = ALPN_HANDLERS.get(alpn or HTTP1, ALPN_HANDLERS[HTTP1])(self.current())
        self.handed_over = True
        # Leave the books first: the app counts itself against max_connections.
        self.shared.connections.discard(self)
        tls.set_protocol(app)
        app.connection_made(tls)
        self.shared.connection_closed(self)  # (a no-op, or it tells a drain we are gone)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # only ever reaches the app protocol, after the hand-over

    def _failed(self, exc: BaseException | None) -> None:
        self.shared.connection_closed(self)
        if self.aborted:
            return
        reason = handshake_failure_reason(exc)
        self.shared.observer.tls_handshake_failed(reason)
        log.debug("TLS handshake from %s failed (%s): %r", self.peer, reason, exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not self.running:  # cancelled before it ran: the socket is still ours
            self.sock.close()
        self.shared.connection_closed(self)

    # ServedConnection: what a drain or a reload asks of it.
    def close_if_idle(self) -> bool:
        return False

    def abort(self) -> None:
        self.aborted = True
        if self.task is not None and not self.handed_over:
            self.task.cancel()


class TlsAcceptor:
    """Accepts connections on one TLS listen socket (which it owns and closes).

    It offers what ``ProxyServer`` uses of an ``asyncio.Server``: ``is_serving``,
    ``close`` and ``wait_closed``.
    """

    def __init__(self, sock: socket.socket, on_accept: Callable[[socket.socket, object], None]):
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._on_accept = on_accept
        self._serving = True
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: connections wait in the kernel's queue.
                log.error(
                    "TLS listener %s: accept failed (%s); accepting again in %gs",
                    self._sock.getsockname()[:2],
                    exc.strerror or exc,
                    ACCEPT_RETRY_SECONDS,
                )
                self._loop.remove_reader(self._fd)
                self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                return
            conn.setblocking(False)
            self._on_accept(conn, peer)

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            self._loop.add_reader(self._fd, self._accept)

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._loop.remove_reader(self._fd)
        self._sock.close()

    async def wait_closed(self) -> None:
        return None
