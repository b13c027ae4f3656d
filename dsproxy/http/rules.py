"""Forwarding rules: pure functions from a parsed head to the head we send.

No I/O here. RFC 9110 §7.6.1: hop-by-hop fields (Connection, the names it
lists, and the fixed set below) end at this hop; the proxy re-frames bodies
itself, so Transfer-Encoding is decided here and not copied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from dsproxy.config import HOP_BY_HOP as HOP_BY_HOP_NAMES
from dsproxy.config import IPNetwork, ServerConfig
from dsproxy.errors import ClientError
from dsproxy.http.codec.base import Headers, RequestHead, ResponseHead
from dsproxy.http.framing import response_has_body, tokens
from dsproxy.net.addr import normalise_ip

# RFC 9110 §7.6.1 plus the de-facto Proxy-Connection / Keep-Alive (docs/configuration.md).
HOP_BY_HOP = frozenset(name.encode("ascii") for name in HOP_BY_HOP_NAMES)
# Headers the proxy sets itself on every forwarded request (Forwarded too, when on).
_FORWARDED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)
_DROP_REQUEST = HOP_BY_HOP | _FORWARDED
# Lengths of the names above (and of "host"): any other name is passed on without
# lower-casing it first, which is most of them.
_HOP_LENGTHS = frozenset(len(n) for n in HOP_BY_HOP)
_REQUEST_LENGTHS = frozenset(len(n) for n in _DROP_REQUEST | {b"host", b"forwarded"})
# RFC 9110 §9.2.2: a request with one of these methods can be repeated safely.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


@dataclass(frozen=True, slots=True)
class ClientContext:
    """What forwarding needs to know about one client connection (fixed per connection)."""

    client_ip: str  # normalised
    listen_port: bytes  # the port the client connected to, for X-Forwarded-Port
    trusted: bool  # the peer is in server.trusted_proxies
    scheme: bytes = b"http"  # b"https" on TLS listeners (X-Forwarded-Proto)
    # RFC 7239 Forwarded: b"" = off (server.forwarded = false); else this proxy's node
    # for by= (the listening address, formatted as forwarded_node() does).
    forwarded_by: bytes = b""


def client_context(
    client_ip: str, local_ip: str, local_port: int, server: ServerConfig, *, tls: bool = False
) -> ClientContext:
    """The ``ClientContext`` of a connection from ``client_ip`` to ``local_ip:local_port``."""
    return ClientContext(
        client_ip=client_ip,
        listen_port=str(local_port).encode(),
        trusted=is_trusted(client_ip, server.trusted_proxies),
        scheme=b"https" if tls else b"http",
        forwarded_by=forwarded_node(normalise_ip(local_ip)) if server.forwarded else b"",
    )


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """A route's ``*_headers_set`` / ``*_headers_remove``: applied after the hop-by-hop rules.

    Names that are hop-by-hop or frame the body are refused when the config is
    loaded, so the rules can never forward what this hop must not.
    """

    set: tuple[tuple[bytes, bytes], ...] = ()  # replaces every field of that name
    drop: frozenset[bytes] = frozenset()  # lower-cased: the names removed, and those set

    def apply(self, headers: Headers) -> Headers:
        drop = self.drop
        out = [(n, v) for n, v in headers if n.lower() not in drop]
        out.extend(self.set)
        return out


def header_rules(set_: dict[str, str], remove: tuple[str, ...]) -> HeaderRules | None:
    """``HeaderRules`` from a route's ``*_headers_set`` table and ``*_headers_remove`` list.

    None when there are none (the usual case costs one ``is None`` per request).
    """
    if not set_ and not remove:
        return None
    pairs = tuple((name.encode("ascii"), value.encode("latin-1")) for name, value in set_.items())
    names = {name.lower().encode("ascii") for name in remove}
    names.update(name.lower() for name, _ in pairs)
    return HeaderRules(pairs, frozenset(names))



@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """What forwarding needs to know about the upstream group a request goes to."""

    authority: bytes  # "host:port" of the upstream (its first server)
    preserve_host: bool  # upstream.host_header == "preserve"
    request_rules: HeaderRules | None = None  # the route's request header rules


# RFC 9110 §5.6.2 tchar: a Forwarded value made only of these needs no quotes.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _forwarded_value(value: bytes) -> bytes:
    """A token as it is, anything else as a quoted-string (RFC 7239 §4)."""
    if value and all(byte in _TCHAR for byte in value):
        return value
    escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + escaped + b'"'


def forwarded_node(ip: str) -> bytes:
    """An address as a Forwarded node (RFC 7239 §6): IPv6 bracketed and quoted, no port."""
    if ":" in ip:
        return b'"[' + ip.encode("ascii") + b']"'
    return ip.encode("ascii") if ip else b"unknown"


def forwarded_element(ctx: ClientContext, host: bytes) -> bytes:
    """This hop's ``Forwarded`` element: for, proto, host, by."""
    out = b"for=" + forwarded_node(ctx.client_ip) + b";proto=" + ctx.scheme
    if host:
        out += b";host=" + _forwarded_value(host)
    return out + b";by=" + ctx.forwarded_by


def is_trusted(client_ip: str, networks: Iterable[IPNetwork]) -> bool:
    """True when ``client_ip`` lies in one of ``networks`` (server.trusted_proxies)."""
    nets = tuple(networks)
    if not nets:
        return False
    try:
        ip = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return False
    return any(ip in net for net in nets)


# Connection values that list only hop-by-hop names (the usual ones): nothing more to strip.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade"})


def _listed(value: bytes) -> tuple[bytes, ...]:
    """The field names a Connection header value lists (RFC 9110 §7.6.1), lower-cased."""
    if value in _PLAIN_CONNECTION:
        return ()
    return tokens(value)


def _end_to_end(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones: ``HOP_BY_HOP`` and those Connection lists.

    One pass; a second one only when Connection names another field.
    """
    out: Headers = []
    listed: list[bytes] = []
    for name, value in headers:
        if len(name) in _HOP_LENGTHS:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    listed += _listed(value)
                continue
        out.append((name, value))
    if listed:
        extra = {t for t in listed if t not in HOP_BY_HOP}
        if extra:
            out = [(n, v) for n, v in out if n.lower() not in extra]
    return out


@dataclass(slots=True)
class UpstreamRequest:
    """The head to send upstream and how its body is framed."""

    method: bytes
    target: bytes
    headers: Headers
    chunked: bool
    websocket: bool
    host: bytes  # the Host the client asked for (for logs and X-Forwarded-Host)


def build_upstream_request(
    head: RequestHead, ctx: ClientContext, target: UpstreamTarget, *, max_body_bytes: int = 0
) -> UpstreamRequest:
    """Check a client request and rewrite it for the upstream, in one pass over its headers.

    Raises ClientError for what a reverse proxy must refuse: CONNECT (405), a
    declared body over ``max_body_bytes`` (413, 0 = no limit), an HTTP/1.1
    request without exactly one Host (400, RFC 9112 §3.2).
    """
    if head.method == b"CONNECT":
        raise ClientError("CONNECT is not supported by a reverse proxy", status=405)
    if max_body_bytes and head.content_length is not None and head.content_length > max_body_bytes:
        raise ClientError("request body too large", status=413, kind="body_too_large")
    out: Headers = []
    listed: list[bytes] = []
    hosts = 0
    host = b""
    xff = b""
    real_ip = b""
    proto = b""
    forwarded = b""
    wants_trailers = False
    trusted = ctx.trusted
    preserve_host = target.preserve_host
    add_forwarded = bool(ctx.forwarded_by)
    for name, value in head.headers:
        if len(name) not in _REQUEST_LENGTHS:
            out.append((name, value))
            continue
        lname = name.lower()
        if add_forwarded and lname == b"forwarded":
            if trusted:
                forwarded = value if not forwarded else forwarded + b", " + value
            continue
        if lname in _DROP_REQUEST:
            if lname == b"connection":
                listed += _listed(value)
            elif lname == b"te":
                # RFC 9110 §10.1.4: the client accepts trailers; we pass them through.
                wants_trailers = wants_trailers or b"trailers" in value.lower()
            elif trusted:
                if lname == b"x-forwarded-for":
                    xff = value if not xff else xff + b", " + value
                elif lname == b"x-real-ip":
                    real_ip = value
                elif lname == b"x-forwarded-proto":
                    proto = value
            continue
        if lname == b"host":
            hosts += 1
            host = value
            if not preserve_host:
                continue
        out.append((name, value))
    if hosts != 1 and head.version == b"1.1":
        raise ClientError("an HTTP/1.1 request needs exactly one Host header", status=400)
    # Fields the client's Connection header lists end at this hop too; Host is
    # end-to-end and mandatory, so a Connection token naming it is ignored.
    if listed:
        extra = {t for t in listed if t not in _DROP_REQUEST and t != b"host"}
        if extra:
            out = [(n, v) for n, v in out if n.lower() not in extra]
    client = ctx.client_ip.encode("ascii")
    if not host or not preserve_host:
        out.append((b"Host", target.authority))
    out.append((b"X-Forwarded-For", xff + b", " + client if xff else client))
    out.append((b"X-Real-IP", real_ip or client))
    out.append((b"X-Forwarded-Proto", proto or ctx.scheme))
    out.append((b"X-Forwarded-Host", host or target.authority))
    out.append((b"X-Forwarded-Port", ctx.listen_port))
    if add_forwarded:
        element = forwarded_element(ctx, host or target.authority)
        out.append((b"Forwarded", forwarded + b", " + element if forwarded else element))
    if wants_trailers:
        out.append((b"TE", b"trailers"))
    websocket = head.upgrade == b"websocket"
    if websocket:
        out.append((b"Upgrade", b"websocket"))
        out.append((b"Connection", b"upgrade"))
    rules = target.request_rules
    if rules is not None:
        out = rules.apply(out)
    chunked = head.chunked
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    return UpstreamRequest(head.method, head.target, out, chunked, websocket, host)


@dataclass(slots=True)
class ClientResponse:
    headers: Headers
    chunked: bool
    close: bool  # the client connection must close after this response


def build_client_response(
    resp: ResponseHead, request: RequestHead, *, close: bool
) -> ClientResponse:
    """Rewrite an upstream response for the client; ``close`` when we will close anyway."""
    out = _end_to_end(resp.headers)
    chunked = False
    if resp.content_length is None and response_has_body(request.method, resp.status):
        if request.version == b"1.1":
            chunked = True
            out.append((b"Transfer-Encoding", b"chunked"))
        else:
            close = True  # HTTP/1.0 client: the body ends when we close (RFC 9112 §6.3)
    if not request.keep_alive:
        close = True
    if close:
        out.append((b"Connection", b"close"))
    return ClientResponse(out, chunked, close)


def build_switch_response(resp: ResponseHead) -> Headers:
    """Headers of a 101 for a WebSocket upgrade: hop-by-hop stripped, upgrade restated."""
    out = _end_to_end(resp.headers)
    out.append((b"Upgrade", b"websocket"))
    out.append((b"Connection", b"Upgrade"))
    return out


def error_response(status: int) -> tuple[bytes, Headers, bytes]:
    """A short plain-text error: (reason, headers, body). The connection closes after."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{status} {phrase}\n".encode()
    headers: Headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
    ]
    return phrase.encode(), headers, body
