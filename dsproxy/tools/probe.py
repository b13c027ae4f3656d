"""``dsproxy probe URL [--ws PATH]``: is URL reachable over IPv4 *and* IPv6?

Each address family is tried on its own, so a proxy that answers on one family only
cannot hide behind happy eyeballs. Per family: one ``GET`` (h11 as the client) and,
with ``--ws``, a WebSocket handshake, a ping with a random payload answered by the
matching pong, and a close handshake (wsproto as the client). Every step is bounded
by ``timeout``.

``https://`` URLs: the certificate is verified against the system's CAs (or
``--cacert FILE``; ``--insecure`` skips verification, as curl's flags do) and the
name in the URL. The handshake offers ALPN ``h2`` and ``http/1.1``, and the TLS
column shows the version and the protocol the server chose (``TLSv1.3 h2``); the
``GET`` and the WebSocket go over HTTP/1.1 (on a second connection that offers only
``http/1.1`` when the first one chose h2).

Which addresses: ``localhost`` means 127.0.0.1 and ::1 (many /etc/hosts map it to
one only); a name is resolved for IPv4 and IPv6 separately, and a family it has no
address for fails; an IP literal tests just that address. The unspecified
addresses (``0.0.0.0``, ``[::]``) are refused: nothing can be reached there.

Verdict: exit 0 when every family got an HTTP status below 500 (2xx-4xx proves the
server was reached) and, with ``--ws``, every WebSocket check passed; 1 otherwise (a
certificate that does not verify included); 2 for a bad URL or CA file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, RejectConnection
from wsproto.events import Request as WSRequest
from wsproto.utilities import ProtocolError as WSProtocolError

from dsproxy.net.addr import Family

READ_SIZE_BYTES = 65536
# Closing a TLS connection waits this long at most for the server's close_notify.
TLS_SHUTDOWN_TIMEOUT_SECONDS = 1.0
PING_PAYLOAD_BYTES = 16
USER_AGENT = "dsproxy-probe"
NOT_TRIED = "-"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A parsed probe URL. ``host`` has no brackets; ``authority`` is the Host header."""

    host: str
    port: int
    path: str
    authority: str
    tls: bool = False  # https://

    @property
    def literal_family(self) -> Family | None:
        """The family of an IP-literal host; None for a name."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        return "ipv6" if address.version == 6 else "ipv4"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one family gave. ``http`` is a status code or an error text."""

    family: Family
    address: str  # "-" when the name has no address in this family
    http: int | str
    websocket: str  # "ok", an error text, or "-" when not checked
    latency_ms: float | None  # connect + GET + response head
    tls: str = NOT_TRIED  # "TLSv1.3 h2": the version and the ALPN protocol (https only)

    @property
    def ok(self) -> bool:
        http_ok = isinstance(self.http, int) and self.http < 500
        return http_ok and self.websocket in ("ok", NOT_TRIED)


def parse_probe_url(url: str) -> ProbeTarget:
    """Parse ``http[s]://host[:port][/path]``; ValueError with a user-facing message."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        what = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"{url!r}: {what}; probe takes http[s]://host[:port][/path]")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials in the URL are not supported")
    raw_host = parts.hostname  # lower-cased, brackets removed
    if not raw_host:
        raise ValueError(f"{url!r} has no host")
    host = unquote(raw_host)  # [fe80::1%25eth0] -> fe80::1%eth0
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            raise ValueError(f"{url!r}: {host!r} is not an IPv6 address") from None
        address = None
    if address is not None:
        if address.version == 6 and not bracketed:
            raise ValueError(f"{url!r}: IPv6 addresses must be written in brackets")
        if address.is_unspecified:
            raise ValueError(
                f"{url!r}: {host} is the unspecified address, which only a listener uses; "
                "probe a concrete address such as 127.0.0.1, [::1] or localhost"
            )
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise ValueError(f"{url!r}: port 0 cannot be connected to")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    authority = parts.netloc.rpartition("@")[2]
    return ProbeTarget(host, port, path, authority, tls=scheme == "https")


def check_ws_path(ws_path: str) -> str:
    if not ws_path.startswith("/"):
        raise ValueError(f"--ws {ws_path!r}: the WebSocket path must start with '/'")
    return ws_path


def render_table(results: Sequence[ProbeResult]) -> str:
    """The results as an aligned text table, one row per family (TLS column for https)."""
    tls = any(result.tls != NOT_TRIED for result in results)
    rows = [("FAMILY", "ADDRESS", "HTTP", *(("TLS",) if tls else ()), "WEBSOCKET", "LATENCY")]
    for result in results:
        latency = "-" if result.latency_ms is None else f"{result.latency_ms:.1f} ms"
        rows.append(
            (result.family, result.address, str(result.http),
             *((result.tls,) if tls else ()), result.websocket, latency)
        )  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def verdict(results: Sequence[ProbeResult]) -> int:
    """0 when every family passed (and there was at least one), else 1."""
    return 0 if results and all(result.ok for result in results) else 1


def summary(results: Sequence[ProbeResult]) -> str:
    families = " and ".join(result.family for result in results)
    if verdict(results) == 0:
        return f"ok: reached over {families}"
    failed = " and ".join(result.family for result in results if not result.ok)
    return f"FAIL: {failed or 'nothing tested'}"


# -- I/O ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsClient:
    """Client contexts for https://, with the same trust settings."""

    any_alpn: ssl.SSLContext  # offers h2 and http/1.1: what the TLS column reports
    http1: ssl.SSLContext  # offers http/1.1 only: the GET after an h2 answer, the WebSocket


def _client_context(cacert: Path | None, insecure: bool, alpn: list[str]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"--cacert {cacert}: {detail}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


def tls_client(cacert: Path | None = None, insecure: bool = False) -> TlsClient:
    """Verify against ``cacert`` (else the system's CAs), or not at all; ValueError if bad."""
    return TlsClient(
        _client_context(cacert, insecure, ["h2", "http/1.1"]),
        _client_context(cacert, insecure, ["http/1.1"]),
    )


def _describe_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, h11.RemoteProtocolError | WSProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


async def resolve(target: ProbeTarget) -> list[tuple[Family, str | None]]:
    """One address per family to test; None where a name has no address in that family."""
    family = target.literal_family
    if family is not None:
        return [(family, target.host)]
    if target.host.rstrip(".") == "localhost":
        return [("ipv4", "127.0.0.1"), ("ipv6", "::1")]
    loop = asyncio.get_running_loop()
    families: tuple[tuple[Family, socket.AddressFamily], ...] = (
        ("ipv4", socket.AF_INET),
        ("ipv6", socket.AF_INET6),
    )
    found: list[tuple[Family, str | None]] = []
    for family, address_family in families:
        try:
            infos = await loop.getaddrinfo(
                target.host, target.port, family=address_family, type=socket.SOCK_STREAM
            )
        except socket.gaierror:
            infos = []
        address = str(infos[0][4][0]) if infos else None
        found.append((family, address))
    return found


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _open(
    target: ProbeTarget, address: str, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if context is None:
        return await asyncio.open_connection(address, target.port)
    return await asyncio.open_connection(
        address,
        target.port,
        ssl=context,
        server_hostname=target.host.partition("%")[0],  # the name (or IP) in the URL
        ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_SECONDS,
    )


async def check_http(
    target: ProbeTarget, address: str, tls: TlsClient | None = None
) -> tuple[int, str]:
    """``GET target.path`` over a fresh connection to ``address``.

    Returns the response status and, for https, the TLS version and the protocol ALPN
    chose (``"TLSv1.3 http/1.1"``; ``"-"`` for http).
    """
    reader, writer = await _open(target, address, tls.any_alpn if tls else None)
    negotiated = NOT_TRIED
    ssl_object = writer.get_extra_info("ssl_object")
    if tls is not None and ssl_object is not None:
        alpn = ssl_object.selected_alpn_protocol()
        negotiated = f"{ssl_object.version()} {alpn or 'no ALPN'}"
        if alpn == "h2":  # the GET below speaks HTTP/1.1: ask again without h2
            await _close_writer(writer)
            reader, writer = await _open(target, address, tls.http1)
    try:
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target.path,
            headers=[
                ("Host", target.authority),
                ("User-Agent", USER_AGENT),
                ("Accept", "*/*"),
                ("Connection", "close"),
            ],
        )
        writer.write((client.send(request) or b"") + (client.send(h11.EndOfMessage()) or b""))
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE_BYTES)
                if not data:
                    raise ConnectionResetError("closed before a response")
                client.receive_data(data)
            elif isinstance(event, h11.Response):
                return event.status_code, negotiated
            # else a 1xx informational response: keep reading
    finally:
        await _close_writer(writer)


async def check_websocket(
    target: ProbeTarget, address: str, ws_path: str, tls: TlsClient | None = None
) -> str:
    """Handshake, ping/pong, close handshake; "ok" or raises."""
    reader, writer = await _open(target, address, tls.http1 if tls else None)
    try:
        ws = WSConnection(ConnectionType.CLIENT)

        async def next_events() -> list[object]:
            data = await reader.read(READ_SIZE_BYTES)
            if not data and ws.state is ConnectionState.CONNECTING:
                raise ConnectionResetError("connection closed during the handshake")
            ws.receive_data(data or None)  # None: the peer closed; wsproto reports 1006
            return list(ws.events())

        writer.write(ws.send(WSRequest(host=target.authority, target=ws_path)))
        accepted = False
        while not accepted:
            for event in await next_events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    return f"handshake refused: HTTP {event.status_code}"

        payload = os.urandom(PING_PAYLOAD_BYTES)
        writer.write(ws.send(Ping(payload=payload)))
        ponged = False
        while not ponged:
            for event in await next_events():
                if isinstance(event, Pong) and event.payload == payload:
                    ponged = True
                elif isinstance(event, CloseConnection):
                    return f"closed before the pong (code {event.code})"

        writer.write(ws.send(CloseConnection(code=1000)))
        while ws.state is not ConnectionState.CLOSED:
            await next_events()  # the server's close frame ends the handshake
        return "ok"
    finally:
        await _close_writer(writer)


async def probe_family(
    target: ProbeTarget,
    family: Family,
    address: str | None,
    ws_path: str | None,
    step_timeout: float,
    tls: TlsClient | None = None,
) -> ProbeResult:
    if address is None:
        return ProbeResult(family, "-", f"no {family} address for {target.host}", NOT_TRIED, None)
    started = time.perf_counter()
    http: int | str
    negotiated = NOT_TRIED
    latency: float | None = None
    try:
        http, negotiated = await asyncio.wait_for(check_http(target, address, tls), step_timeout)
        latency = (time.perf_counter() - started) * 1000
    except (OSError, TimeoutError, h11.ProtocolError) as exc:
        http = _describe_error(exc, step_timeout)
    websocket = NOT_TRIED
    if ws_path is not None:
        if isinstance(http, str):
            websocket = "not tried (HTTP failed)"
        else:
            try:
                websocket = await asyncio.wait_for(
                    check_websocket(target, address, ws_path, tls), step_timeout
                )
            except (OSError, TimeoutError, h11.ProtocolError, WSProtocolError) as exc:
                websocket = _describe_error(exc, step_timeout)
    return ProbeResult(family, address, http, websocket, latency, negotiated)


async def probe(
    target: ProbeTarget, ws_path: str | None, step_timeout: float, tls: TlsClient | None = None
) -> list[ProbeResult]:
    """Probe every family of ``target`` concurrently; one result per family."""
    addresses = await asyncio.wait_for(resolve(target), step_timeout)
    return list(
        await asyncio.gather(
            *(
                probe_family(target, family, address, ws_path, step_timeout, tls)
                for family, address in addresses
            )
        )
    )


def main(
    url: str,
    ws_path: str | None,
    timeout: float = 5.0,
    *,
    cacert: Path | None = None,
    insecure: bool = False,
) -> int:
    """``dsproxy probe URL [--ws PATH]``: print a table; exit 0 ok, 1 failed, 2 bad input.

    For https:// the certificate is checked against ``cacert`` (else the system's CAs),
    or not at all with ``insecure``.
    """
    try:
        target = parse_probe_url(url)
        if ws_path is not None:
            ws_path = check_ws_path(ws_path)
        if not target.tls and (cacert is not None or insecure):
            raise ValueError("--cacert and --insecure are for https:// URLs")
        tls = tls_client(cacert, insecure) if target.tls else None
    except ValueError as exc:
        print(f"dsproxy probe: {exc}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(probe(target, ws_path, timeout, tls))
    except TimeoutError:
        print(f"dsproxy probe: resolving {target.host} timed out", file=sys.stderr)
        return 1
    print(render_table(results))
    print(summary(results))
    return verdict(results)
