"""What an exchange needs from the client side it answers on.

The HTTP/1.1 ``ClientConnection`` is one host (one exchange at a time); an
HTTP/2 stream is another (many exchanges on one connection). An exchange
never touches the client's socket: it reports response events, asks for
reading to pause or resume, and reports when it is done, and the host maps
that onto its own protocol (HTTP/1.1 framing and TCP backpressure, or HTTP/2
frames and flow-control windows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dsproxy.errors import ProxyError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.rules import ClientContext
from dsproxy.net.addr import Family
from dsproxy.observe.records import Observer

if TYPE_CHECKING:
    from dsproxy.proxy.exchange import Exchange
    from dsproxy.proxy.upstream import UpstreamConnection


class ExchangeHost(Protocol):
    """The client side an exchange answers on (an HTTP/1.1 connection, an HTTP/2 stream)."""

    ctx: ClientContext
    client_ip: str
    client_port: int
    family: Family
    observer: Observer
    body_timeout: float  # client inactivity while sending the body / reading the response

    @property
    def reading_paused(self) -> bool:
        """The client's request body is not being read (backpressure)."""
        ...

    clock: Callable[[], float]  # the event loop's time()

    def arm(self, when: float) -> None:
        """Check this exchange's deadlines no later than ``when``."""

    def pause_request(self) -> None:
        """Stop reading the request body (upstream full, or held while connecting)."""

    def resume_request(self) -> None: ...
    def send_informational(self, status: int, reason: bytes, request: RequestHead) -> None: ...
    def send_response_head(self, head: ResponseHead, exchange: Exchange) -> None: ...
    def send_body(self, data: bytes) -> None: ...
    def send_end(self, trailers: Headers) -> None: ...
    def flush(self) -> None: ...
    def send_error(self, error: ProxyError, request: RequestHead) -> int:
        """Answer with ``error``'s status and end the client side; return the body size."""

    def abort_client(self) -> None:
        """End the client side at once: a truncated response is never passed off as whole."""

    def switch_protocols(
        self, exchange: Exchange, conn: UpstreamConnection, head: ResponseHead
    ) -> None: ...
    def exchange_done(self, exchange: Exchange) -> None:
        """The response is complete and recorded: write what is left of it, then move on."""
