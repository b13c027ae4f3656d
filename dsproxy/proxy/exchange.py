"""One request in flight: route -> borrow an upstream connection -> relay both ways -> record.

An ``Exchange`` never touches the client's socket. It talks to its host (the
HTTP/1.1 client connection today; an HTTP/2 stream can be another) through
``ExchangeHost``, to its upstream connection as its ``UpstreamOwner``, and to
its pool as a ``ConnectWaiter``. States:

    CONNECTING   no upstream connection yet (request body bytes are held)
    FORWARDING   an upstream connection is borrowed; body up, response down
    SWITCHED     a 101 was relayed: the host runs a tunnel, the exchange is over
    DONE         response complete, failed or aborted; recorded exactly once

Request and response are independent directions: ``request_done`` and
``response_started`` say how far each has gone. Deadlines are checked by the
host's one timer through ``next_deadline``; activity only stamps times.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from dsproxy.errors import ClientError, ProxyError, UpstreamError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.rules import (
    IDEMPOTENT_METHODS,
    UpstreamRequest,
    build_upstream_request,
)
from dsproxy.observe.records import RequestRecord
from dsproxy.proxy.flow import HeldBody
from dsproxy.proxy.host import ExchangeHost
from dsproxy.proxy.router import Route
from dsproxy.proxy.upstream import UpstreamConnection

log = logging.getLogger("dsproxy.proxy.exchange")

CONNECTING: Final = 0
FORWARDING: Final = 1
SWITCHED: Final = 2
DONE: Final = 3

# Status logged when the client went away before its response was complete (nginx's 499).
CLIENT_CLOSED_STATUS = 499
# A request with no deadline of its own (waiting on a connect, which has its own
# timeout, or paused by backpressure) is looked at again this often.
RECHECK_SECONDS = 1.0


class Exchange:
    # fmt: off
    __slots__ = (
        "host", "route", "head", "up_req", "state", "upstream", "reused", "retried", "held",
        "request_done", "body_forwarded", "response_started", "status", "bytes_received",
        "bytes_sent", "started", "wall_start", "upstream_started", "upstream_peer",
        "upstream_keep_alive", "client_activity", "upstream_activity", "upstream_write_paused_at",
        "client_write_paused_at", "flush",
    )
    # fmt: on

    def __init__(self, host: ExchangeHost, route: Route, head: RequestHead, now: float) -> None:
        self.host = host
        self.route = route
        self.head = head
        self.up_req: UpstreamRequest | None = None
        self.state = CONNECTING
        self.upstream: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self.held: HeldBody | None = None  # request body bytes held while connecting
        self.request_done = False
        self.body_forwarded = False
        self.response_started = False
        self.status = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.started = now
        self.wall_start = time.time()
        self.upstream_started = 0.0
        self.upstream_peer: str | None = None
        self.upstream_keep_alive = False
        self.client_activity = now
        self.upstream_activity = 0.0
        self.upstream_write_paused_at = 0.0
        self.client_write_paused_at = 0.0
        # What the upstream connection calls after each read: the host's flush itself.
        self.flush = host.flush

    # ============================================================ request side
    def start(self, max_body_bytes: int) -> None:
        """Check and rewrite the request, then borrow (or start opening) a connection."""
        head = self.head
        try:
            self.up_req = build_upstream_request(
                head, self.host.ctx, self.route.target, max_body_bytes=max_body_bytes
            )
        except ClientError as exc:
            self.refuse(exc)
            return
        if head.content_length or head.chunked:
            self.host.arm(self.started + self.host.body_timeout)
        conn = self.route.pool.acquire(self)
        if conn is not None:
            self.upstream_ready(conn, True)

    def request_body(self, data: bytes, max_body_bytes: int) -> None:
        if self.state != CONNECTING and self.state != FORWARDING:
            return
        self.bytes_received += len(data)
        if max_body_bytes and self.bytes_received > max_body_bytes:
            self.refuse(ClientError("request body too large", status=413, kind="body_too_large"))
            return
        up = self.upstream
        if up is not None:
            up.write_pieces(up.codec.encode_body(data))
            self.body_forwarded = True
        else:
            held = self.held
            if held is None:
                held = self.held = HeldBody()
            if held.hold(data):
                self.host.pause_request()

    def request_end(self, trailers: Headers) -> None:
        if self.state != CONNECTING and self.state != FORWARDING:
            return
        self.request_done = True
        now = self.host.clock()
        self.upstream_activity = now
        up = self.upstream
        if up is not None:
            if not (self.up_req and self.up_req.chunked):
                trailers = []
            up.write(up.codec.encode_end(trailers))
            self.host.arm(now + self.route.read_timeout)
        else:
            held = self.held
            if held is None:
                held = self.held = HeldBody()
            held.trailers = trailers

    # ===================================================== upstream: connecting
    def upstream_ready(self, conn: UpstreamConnection, reused: bool) -> None:
        up_req = self.up_req
        if self.state != CONNECTING or up_req is None:
            # The client went away while we connected: keep the connection for others.
            self.route.pool.release(conn, used=False)
            return
        self.state = FORWARDING
        self.upstream = conn
        self.upstream_peer = conn.peer
        self.reused = reused
        conn.owner = self
        host = self.host
        host.observer.upstream_acquired(reused)
        head = conn.codec.encode_request_head(
            up_req.method,
            up_req.target,
            up_req.headers,
            chunked=up_req.chunked,
            upgrade=up_req.websocket,
        )
        now = host.clock()
        self.upstream_started = now
        self.upstream_activity = now
        held = self.held
        if held is not None and held.pieces:
            conn.write_pieces(held.encoded(head, conn.codec))
            self.body_forwarded = True
            host.resume_request()
        else:
            conn.write(head)
        ended = held.trailers if held is not None else None  # the request ended meanwhile
        if ended is not None or (self.request_done and not self.body_forwarded):
            conn.write(conn.codec.encode_end(ended if ended and up_req.chunked else []))
            host.arm(now + self.route.read_timeout)
        self.held = None

    def upstream_failed(self, conn: UpstreamConnection | None, error: UpstreamError) -> None:
        if conn is not None and conn is not self.upstream:
            return
        if self.state != CONNECTING and self.state != FORWARDING:
            return
        self.host.observer.upstream_error(error.kind)
        self.upstream = None
        if conn is not None:
            self.route.pool.detach(conn)
        if (
            conn is not None
            and error.kind == "reset"  # closed before answering; never a bad answer
            and self.reused
            and not self.retried
            and not self.response_started
            and not self.body_forwarded
            and self.head.method in IDEMPOTENT_METHODS
        ):
            # A pooled connection the upstream closed while idle: one retry on a
            # fresh connection (never for a non-idempotent request: it was sent).
            self.retried = True
            self.state = CONNECTING
            self.route.pool.connect(self)
            return
        if self.response_started:
            message = "upstream failed mid-response, aborting client: %s"
        else:
            message = "upstream error: %s"
        log.warning(
            message, error.detail, extra={"client": self.host.client_ip, "kind": error.kind}
        )
        self._fail(error)

    # ========================================== upstream: response events and flow
    def on_response_head(self, head: ResponseHead) -> None:
        if self.state != FORWARDING:
            return
        status = head.status
        rules = self.route.response_rules
        if rules is not None:
            head.headers = rules.apply(head.headers)
        if status < 200:
            if status == 101:  # the codec refused one the request did not ask for
                self._switch(head)
            elif status != 100 or self.head.expect_continue:
                self.host.send_informational(status, head.reason, self.head)
            return
        self.response_started = True
        self.status = status
        self.upstream_keep_alive = head.keep_alive
        try:
            self.host.send_response_head(head, self)
        except Exception as exc:  # h11 refuses a head it cannot frame
            self.upstream_protocol_error(f"cannot forward response head: {exc}")

    def on_response_body(self, data: bytes) -> None:
        if self.response_started and self.state == FORWARDING:
            self.bytes_sent += len(data)
            self.host.send_body(data)

    def on_response_end(self, trailers: Headers) -> None:
        up = self.upstream
        if up is None or not self.response_started or self.state != FORWARDING:
            return
        host = self.host
        host.send_end(trailers)
        up.owner = None
        self.upstream = None
        pool = self.route.pool
        if self.request_done and self.upstream_keep_alive:
            pool.release(up)
        else:
            pool.detach(up)
            up.close()
        self.state = DONE
        self.record(None)
        host.exchange_done(self)  # writes the response's last bytes first

    def upstream_pause_writing(self) -> None:
        host = self.host
        now = self.upstream_write_paused_at = host.clock()
        host.pause_request()
        host.arm(now + self.route.send_timeout)  # the stall is due then, not at a later check

    def upstream_resume_writing(self) -> None:
        self.upstream_write_paused_at = 0.0
        self.host.resume_request()

    def client_pause_writing(self) -> None:
        """The client's buffer is full: stop reading the upstream until it drains."""
        host = self.host
        now = self.client_write_paused_at = host.clock()
        if self.upstream is not None:
            self.upstream.pause_reading()
        host.arm(now + host.body_timeout)  # a client that never reads is cut off then

    def client_resume_writing(self) -> None:
        self.client_write_paused_at = 0.0
        if self.upstream is not None:
            self.upstream.resume_reading()

    # ================================================================ switching
    def _switch(self, head: ResponseHead) -> None:
        conn = self.upstream
        if conn is None or conn.transport is None:
            return
        self.status = 101
        self.state = SWITCHED
        self.route.pool.detach(conn)
        conn.owner = None
        self.upstream = None
        self.host.switch_protocols(self, conn, head)

    # ============================================================ ending badly
    def refuse(self, error: ClientError) -> None:
        """The client sent something we refuse: answer with its status, or abort."""
        host = self.host
        host.observer.client_error(error.kind if error.status != 431 else "header_too_large")
        log.info(
            "client error %d: %s",
            error.status,
            error.detail,
            extra={"client": host.client_ip, "kind": error.kind},
        )
        self.drop_upstream()
        self._fail(error)

    def upstream_protocol_error(self, detail: str) -> None:
        self.drop_upstream()
        self.upstream_failed(None, UpstreamError(detail, kind="protocol"))

    def upstream_timeout(self, detail: str) -> None:
        self.host.observer.upstream_error("timeout")
        self.drop_upstream()
        log.warning(detail, extra={"client": self.host.client_ip, "kind": "timeout"})
        self._fail(UpstreamError(detail, status=504, kind="timeout"))

    def client_gone(self, kind: str) -> None:
        """End a half-done exchange whose client side is gone (or about to be cut off)."""
        if self.state == CONNECTING or self.state == FORWARDING:
            self.drop_upstream()
            if not self.response_started and kind.startswith("client"):
                self.status = CLIENT_CLOSED_STATUS
            self.state = DONE
            self.record(kind)

    def abort(self, kind: str) -> None:
        """Tear down a half-done exchange and the client side with it."""
        self.client_gone(kind)
        self.host.abort_client()

    def drop_upstream(self) -> None:
        """Give up the borrowed connection for good: it is in an unknown state."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            self.route.pool.detach(up)
            up.abort()

    def _fail(self, error: ProxyError) -> None:
        if self.response_started:
            self.abort(error.kind)
            return
        if self.state == DONE or self.state == SWITCHED:
            return
        self.state = DONE
        self.status = error.status
        self.bytes_sent = self.host.send_error(error, self.head)
        self.record(error.kind)

    # ================================================================ records
    def record(self, error: str | None) -> None:
        """Report this request, once, to the observer (metrics, access log)."""
        host = self.host
        now = host.clock()
        upstream_started = self.upstream_started
        host.observer.request_done(
            RequestRecord(  # positional: this runs once per request
                host.client_ip,
                host.client_port,
                host.family,
                self.head,
                self.status,
                self.bytes_received,
                self.bytes_sent,
                self.wall_start,
                now - self.started,
                self.upstream_peer,
                (now - upstream_started) if upstream_started else None,
                error,
                self.route.name,
            )
        )

    # ================================================================ deadlines
    def next_deadline(self, now: float) -> float | None:
        """Act on every deadline that passed; return the next one (None: nothing left)."""
        if self.state != CONNECTING and self.state != FORWARDING:
            return None
        host = self.host
        nxt = 0.0
        if not self.request_done and not host.reading_paused:
            due = self.client_activity + host.body_timeout
            if now >= due:
                self._body_timeout()
                return None
            nxt = due
        if self.upstream_write_paused_at:
            due = self.upstream_write_paused_at + self.route.send_timeout
            if now >= due:
                self.upstream_timeout("sending to upstream timed out")
                return None
            nxt = min(nxt, due) if nxt else due
        if self.upstream is not None and self.request_done and not self.client_write_paused_at:
            due = self.upstream_activity + self.route.read_timeout
            if now >= due:
                self.upstream_timeout("upstream read timed out")
                return None
            nxt = min(nxt, due) if nxt else due
        if self.client_write_paused_at:
            due = self.client_write_paused_at + host.body_timeout
            if now >= due:
                self.abort("client_write_timeout")
                return None
            nxt = min(nxt, due) if nxt else due
        return nxt or now + RECHECK_SECONDS

    def _body_timeout(self) -> None:
        self.host.observer.client_error("body_timeout")
        self.drop_upstream()
        self._fail(ClientError("request body timed out", status=408, kind="body_timeout"))
