"""What each h2 event does to an HTTP/2 connection and its streams (one function per type).

``HANDLERS`` maps an event class to its handler; ``Http2Connection``
dispatches every event h2 returns from one client read through it, and
writes what they produced once afterwards. Events not listed (SETTINGS
acknowledged, PING answered by h2 itself, PRIORITY) need nothing from the
proxy; their floods are bounded by ``FrameGuard``.

A new request stream (RFC 9113 §8.1) is checked and mapped by
``http/h2map``: malformed, it is reset with PROTOCOL_ERROR; beyond
http2.max_concurrent_streams, with REFUSED_STREAM; both count against the
connection's reset budget, like the client's own RST_STREAMs and the streams
h2 resets because of the client's frames (``StreamReset`` with
``remote_reset`` false: "MadeYouReset").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes

from dsproxy.errors import ClientError
from dsproxy.http.h2codec import DRAIN_PING, PROTOCOL_ERROR, REFUSED_STREAM
from dsproxy.http.h2map import StreamProtocolError, map_request
from dsproxy.proxy.exchange import Exchange
from dsproxy.proxy.h2stream import H2Stream

if TYPE_CHECKING:
    from dsproxy.proxy.h2connection import Http2Connection

log = logging.getLogger("dsproxy.proxy.h2")


def on_request(conn: Http2Connection, ev: RequestReceived) -> None:
    sid = ev.stream_id or 0
    now = conn.now
    if sid > conn.last_stream_id:  # after the final GOAWAY: not processed, may be retried
        conn.reset_sid(sid, REFUSED_STREAM)
        return
    if len(conn.streams) >= conn.max_streams:
        conn.reset_sid(sid, REFUSED_STREAM)
        conn.count_reset()
        return
    ended = ev.stream_ended is not None
    try:
        req = map_request(ev.headers or [], ended, websocket=conn.websocket)
    except StreamProtocolError as exc:
        log.info("malformed HTTP/2 request: %s", exc, extra={"client": conn.client_ip})
        conn.reset_sid(sid, PROTOCOL_ERROR)
        conn.count_reset()
        return
    stream = H2Stream(conn, sid, ended)
    conn.streams[sid] = stream
    conn.served = True
    head = req.head
    shared = conn.shared
    # After a reload: the new configuration's routes and pools (see Shared.successor).
    router = shared.newest().router if shared.draining else shared.router
    route = router.only
    if route is None:
        try:
            route = router.route(head.target)
        except ClientError as exc:  # a path that climbs above "/"
            refused = stream.exchange = Exchange(stream, router.default, head, now)
            refused.refuse(exc)
            return
    exchange = stream.exchange = Exchange(stream, route, head, now)
    if req.size > conn.max_header_list_bytes:
        exchange.refuse(ClientError("request header list over http2.max_header_list_bytes",
                                    status=431, kind="header_too_large"))  # fmt: skip
        return
    limits = conn.limits
    if limits is not None and limits.rate and not limits.allow_request(conn.client_key, now):
        exchange.refuse(ClientError("request rate over server.rate_limit", status=429,
                                    kind="rate_limited"))  # fmt: skip
        return
    stream.ws_key = req.websocket_key
    exchange.start(conn.max_body_bytes)
    if head.upgrade is not None and stream.exchange is exchange:
        exchange.request_end([])  # the Upgrade request has no body; DATA is the tunnel's


def on_data(conn: Http2Connection, ev: DataReceived) -> None:
    stream = conn.streams.get(ev.stream_id or 0)
    if stream is not None:
        stream.on_data(ev.data or b"", ev.flow_controlled_length or 0, conn.now)
    elif ev.flow_controlled_length:  # a stream we are done with: free the connection window
        conn.h2_call(conn.h2.acknowledge_received_data, ev.flow_controlled_length, ev.stream_id)


def on_trailers(conn: Http2Connection, ev: TrailersReceived) -> None:
    stream = conn.streams.get(ev.stream_id or 0)
    if stream is not None:
        stream.on_trailers(ev.headers or [])


def on_end(conn: Http2Connection, ev: StreamEnded) -> None:
    stream = conn.streams.get(ev.stream_id or 0)
    if stream is not None:
        stream.on_end()


def on_reset(conn: Http2Connection, ev: StreamReset) -> None:
    if not ev.remote_reset:
        conn.count_reset()  # h2 reset it because of the client's frames
    stream = conn.streams.get(ev.stream_id or 0)
    if stream is not None:
        stream.on_reset("client reset the stream" if ev.remote_reset else "client stream error")


def on_window(conn: Http2Connection, ev: WindowUpdated) -> None:
    if not ev.stream_id:
        for blocked in list(conn.blocked):
            blocked.emit()
        return
    stream = conn.streams.get(ev.stream_id)
    if stream is not None and stream.out:
        stream.emit()


def on_settings(conn: Http2Connection, ev: RemoteSettingsChanged) -> None:
    if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
        for stream in list(conn.blocked):
            stream.emit()


def on_ping_ack(conn: Http2Connection, ev: PingAckReceived) -> None:
    if ev.ping_data == DRAIN_PING:
        conn.final_goaway()


def on_goaway(conn: Http2Connection, ev: ConnectionTerminated) -> None:
    # h2 sends nothing after the client's GOAWAY: what is in flight ends here.
    log.debug("client sent GOAWAY (%s)", ev.error_code, extra={"client": conn.client_ip})
    conn.close_now(None)


HANDLERS: dict[type, Callable[[Http2Connection, Any], None]] = {
    RequestReceived: on_request,
    DataReceived: on_data,
    TrailersReceived: on_trailers,
    StreamEnded: on_end,
    StreamReset: on_reset,
    WindowUpdated: on_window,
    RemoteSettingsChanged: on_settings,
    PingAckReceived: on_ping_ack,
    ConnectionTerminated: on_goaway,
}
