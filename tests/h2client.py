"""A raw HTTP/2 client for the tests: the h2 library as the peer, in memory or on a socket.

``H2Peer`` is sans-IO: ``outgoing()`` is what to send, ``feed(data)`` takes what
came back and files every event under its stream (``streams[sid]``) or the
connection (``goaway``, ``settings``, ``pings``). ``H2Socket`` drives a peer
over a blocking socket (optionally TLS) for loopback tests.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, RstStreamFrame

Fields = list[tuple[bytes, bytes]]


@dataclass
class StreamSeen:
    headers: Fields = field(default_factory=list)  # the final response head
    informational: list[Fields] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: Fields = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code from the server

    @property
    def status(self) -> int:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return 0

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


def request_fields(
    path: str = "/", method: str = "GET", authority: str = "example.test", scheme: str = "http",
    extra: Fields | None = None,
) -> Fields:  # fmt: skip
    fields: Fields = [
        (b":method", method.encode()),
        (b":path", path.encode()),
        (b":scheme", scheme.encode()),
        (b":authority", authority.encode()),
    ]
    return fields + (extra or [])


class H2Peer:
    def __init__(
        self,
        *,
        auto_ack: bool = True,
        initial_window: int | None = None,
        validate: bool = True,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(config=config)
        if initial_window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window},
            )
        self.conn.initiate_connection()
        self.auto_ack = auto_ack  # give received DATA back at once (WINDOW_UPDATE)
        self.streams: dict[int, StreamSeen] = {}
        self.goaway: list[h2.events.ConnectionTerminated] = []
        self.remote_settings: dict[int, int] = {}
        self.ping_acks: list[bytes] = []
        self.pings: list[bytes] = []
        self.events: list[h2.events.Event] = []
        self.frames: list[Frame] = []  # every frame received, parsed (for frame-level checks)
        self._raw = bytearray()
        self.gone = False  # h2 saw a GOAWAY and will not read on

    def outgoing(self) -> bytes:
        data = self.conn.data_to_send()
        # After a GOAWAY h2 refuses what follows it (a PING, a stream's frames) with a
        # GOAWAY of its own; a real client does not: keep it from the server.
        return b"" if self.gone else data

    def request(
        self, path: str = "/", *, method: str = "GET", body: bytes | None = None,
        end: bool = True, extra: Fields | None = None, authority: str = "example.test",
        scheme: str = "http",
    ) -> int:  # fmt: skip
        sid = self.conn.get_next_available_stream_id()
        fields = request_fields(path, method, authority, scheme, extra=extra)
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        self.streams[sid] = StreamSeen()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, data: bytes, *, end: bool = False) -> None:
        """DATA frames of at most the server's frame size (windows permitting)."""
        size = self.conn.max_outbound_frame_size
        for i in range(0, len(data), size):
            last = i + size >= len(data)
            self.conn.send_data(sid, data[i : i + size], end_stream=end and last)
        if not data and end:
            self.conn.end_stream(sid)

    def feed(self, data: bytes) -> list[h2.events.Event]:
        """Take what the server sent. After a GOAWAY h2 (as a client) refuses every frame;
        they are still parsed into ``frames``."""
        self._parse_frames(data)
        if self.gone:
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            if not self.goaway_codes():
                raise
            self.gone = True
            return []
        for ev in events:
            self.events.append(ev)
            sid = getattr(ev, "stream_id", 0) or 0
            seen = self.streams.setdefault(sid, StreamSeen()) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and seen is not None:
                seen.headers = list(ev.headers or [])
            elif isinstance(ev, h2.events.InformationalResponseReceived) and seen is not None:
                seen.informational.append(list(ev.headers or []))
            elif isinstance(ev, h2.events.DataReceived) and seen is not None:
                seen.data += ev.data or b""
                if self.auto_ack and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived) and seen is not None:
                seen.trailers = list(ev.headers or [])
            elif isinstance(ev, h2.events.StreamEnded) and seen is not None:
                seen.ended = True
            elif isinstance(ev, h2.events.StreamReset) and seen is not None:
                seen.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway.append(ev)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for code, change in ev.changed_settings.items():
                    self.remote_settings[int(code)] = change.new_value
            elif isinstance(ev, h2.events.PingAckReceived):
                self.ping_acks.append(ev.ping_data or b"")
            elif isinstance(ev, h2.events.PingReceived):
                self.pings.append(ev.ping_data or b"")
        return events

    def _parse_frames(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        while len(raw) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(raw[:9])))
            if len(raw) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(raw[9 : 9 + length])))
            self.frames.append(frame)
            del raw[: 9 + length]

    def ignore_limits(self) -> None:
        """Act as a client that has not seen (or ignores) the server's stream and header limits."""
        settings = self.conn.remote_settings
        settings.max_concurrent_streams = 2**31 - 1
        settings.max_header_list_size = 2**31 - 1
        settings.acknowledge()

    def data_frames(self, sid: int) -> tuple[bytes, bool]:
        """(the DATA of stream ``sid``, END_STREAM seen) from the frames received: what
        came after a GOAWAY too, which h2 no longer reads."""
        frames = [f for f in self.frames if isinstance(f, DataFrame) and f.stream_id == sid]
        return b"".join(f.data for f in frames), any("END_STREAM" in f.flags for f in frames)

    def goaway_codes(self) -> list[int]:
        return [f.error_code for f in self.frames if isinstance(f, GoAwayFrame)]

    def goaway_last_ids(self) -> list[int]:
        return [f.last_stream_id for f in self.frames if isinstance(f, GoAwayFrame)]

    def resets(self) -> dict[int, int]:
        return {f.stream_id: f.error_code for f in self.frames if isinstance(f, RstStreamFrame)}


class H2Socket:
    """An ``H2Peer`` on a blocking socket (cleartext with prior knowledge, or TLS + ALPN)."""

    def __init__(
        self, address: tuple[str, int], *, ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost", timeout: float = 5.0, **peer: object,
    ) -> None:  # fmt: skip
        sock = socket.create_connection(address, timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.peer = H2Peer(**peer)  # type: ignore[arg-type]
        self.closed = False
        self.send()

    def send(self, data: bytes | None = None) -> None:
        out = self.peer.outgoing() if data is None else data
        if out:
            self.sock.sendall(out)

    def pump(self, until: Callable[[H2Peer], bool], timeout: float = 5.0) -> bool:
        """Read and answer (WINDOW_UPDATE, PING, SETTINGS ACK) until ``until`` holds."""
        deadline = time.monotonic() + timeout
        while not until(self.peer):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return until(self.peer)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return until(self.peer)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                return until(self.peer)
            self.peer.feed(data)
            if not self.closed:
                self.send()
        return True

    def close(self) -> None:
        self.sock.close()
