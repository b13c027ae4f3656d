"""The h2 library set up as the proxy's HTTP/2 server codec, and the frames written by hand.

``server_codec`` makes one ``h2.connection.H2Connection`` per client
connection with its initial SETTINGS queued (RFC 9113 §3.4, §6.5.2):

* SETTINGS_MAX_CONCURRENT_STREAMS = http2.max_concurrent_streams. h2 itself
  is allowed about twice as many, so that streams over the advertised limit
  reach the proxy and are refused with REFUSED_STREAM (a stream error that
  keeps the HPACK context); h2 would end the connection instead. A client
  that ignores the limit by that much more still ends it.
* SETTINGS_MAX_HEADER_LIST_SIZE = http2.max_header_list_bytes; the HPACK
  decoder stops at ``HPACK_BOMB_FACTOR`` times that (a connection error,
  ENHANCE_YOUR_CALM); between the two the request is answered 431.
* SETTINGS_INITIAL_WINDOW_SIZE = http2.stream_window_bytes, and a connection
  window that covers every stream's, so one slow stream never holds the
  others back while memory stays bounded by the stream windows.
* SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 with http2.websocket (RFC 8441 §3).

h2 checks no request fields here (``http/h2map`` does, so that a malformed
request is a stream error, not a connection error) and normalises no
response fields (h2map builds them lower-cased, without hop-by-hop fields).

GOAWAY frames for a graceful shutdown are written by hand: h2 treats any
GOAWAY it sends as the end of the connection, but the first one of the
two-step shutdown must leave the streams in flight running (RFC 9113 §6.8).
"""

from __future__ import annotations

import struct
from typing import Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings

from dsproxy.config import Http2Config

# RFC 9113 §7 error codes used by the proxy.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB
HTTP_1_1_REQUIRED: Final = 0xD

# RFC 9113 §3.4: what an HTTP/2 client sends first; preface_kind() says what a
# cleartext connection's first bytes are.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NOT_PREFACE: Final = 0
PREFACE_SO_FAR: Final = 1  # the beginning of the preface: wait for more
IS_PREFACE: Final = 2

MAX_STREAM_ID: Final = 2**31 - 1
MAX_WINDOW_BYTES: Final = 2**31 - 1
DEFAULT_WINDOW_BYTES: Final = 65535  # RFC 9113 §6.9.2
HPACK_BOMB_FACTOR: Final = 2
# The PING sent with the first GOAWAY of a graceful shutdown; its ACK means the client
# has seen that GOAWAY (one round trip), so the second one can name the last stream.
DRAIN_PING: Final = b"dsdrain1"

_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def server_codec(http2: Http2Config) -> H2Connection:
    """A server-side h2 connection for ``http2``, its SETTINGS queued in data_to_send()."""
    h2 = H2Connection(config=_CONFIG)
    streams = http2.max_concurrent_streams
    values: dict[SettingCodes, int] = {
        SettingCodes.MAX_CONCURRENT_STREAMS: streams,
        SettingCodes.MAX_HEADER_LIST_SIZE: http2.max_header_list_bytes,
        SettingCodes.INITIAL_WINDOW_SIZE: http2.stream_window_bytes,
    }
    if http2.websocket:
        values[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
    h2.local_settings = Settings(client=False, initial_values=values)
    h2.initiate_connection()
    # From here on, what h2 enforces (nothing more is sent).
    values[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * streams + 16
    h2.local_settings = Settings(client=False, initial_values=values)
    h2.decoder.max_header_list_size = HPACK_BOMB_FACTOR * http2.max_header_list_bytes
    window = min(MAX_WINDOW_BYTES, streams * http2.stream_window_bytes)
    if window > DEFAULT_WINDOW_BYTES:
        h2.increment_flow_control_window(window - DEFAULT_WINDOW_BYTES)
    return h2


def preface_kind(seen: bytes) -> int:
    """NOT_PREFACE, PREFACE_SO_FAR or IS_PREFACE for a connection's first ``seen`` bytes."""
    n = len(PREFACE)
    if seen[:n] != PREFACE[: len(seen)]:
        return NOT_PREFACE
    return IS_PREFACE if len(seen) >= n else PREFACE_SO_FAR


def first_bytes(first: bytes, data: bytes) -> tuple[bytes | None, bytes, bool]:
    """A cleartext connection's first bytes so far: ``first`` + ``data``.

    Returns (what to keep looking at, None once decided; what to parse as HTTP/1.1, or
    the bytes to hand to HTTP/2; True when they are the preface).
    """
    seen = first + data
    kind = preface_kind(seen)
    if kind == PREFACE_SO_FAR:
        return seen, b"", False
    return None, seen, kind == IS_PREFACE


def _frame(ftype: int, payload: bytes) -> bytes:
    """A frame on stream 0 without flags (RFC 9113 §4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, 0)) + b"\x00\x00\x00\x00"


def goaway_frame(last_stream_id: int, error_code: int = NO_ERROR) -> bytes:
    """A GOAWAY frame (RFC 9113 §6.8)."""
    payload = struct.pack(">II", last_stream_id & MAX_STREAM_ID, error_code)
    return _frame(0x7, payload) + payload


def refusal_frames(error_code: int = HTTP_1_1_REQUIRED) -> bytes:
    """An empty SETTINGS frame (the server preface, RFC 9113 §3.4) and a GOAWAY for stream 0.

    What a cleartext listener without server.h2c answers to the HTTP/2 preface.
    """
    return _frame(0x4, b"") + goaway_frame(0, error_code)
