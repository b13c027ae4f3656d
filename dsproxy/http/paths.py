"""The path a request is routed by: pure functions, no I/O.

Routes match the request's path, not the bytes as sent, so that ``/x/../api``
and ``/%61pi`` cannot dodge the ``/api`` route (docs/configuration.md, "Routes").
The request is still forwarded with its target unchanged. The path used for
matching is the target's path (before ``?``) with:

* percent-encoded unreserved characters decoded (RFC 3986 §2.3: ``%41`` is ``A``,
  ``%2E`` is ``.``); other escapes, ``%2F`` among them, stay as they are;
* empty segments merged (``//api`` is ``/api``), as nginx's ``merge_slashes``;
* dot-segments removed (RFC 3986 §5.2.4); a path that climbs above ``/`` is
  refused with 400.

Absolute-form targets (``http://host/path``) are routed by their path; the
asterisk form (``OPTIONS *``) and anything else without a leading ``/`` are
routed by ``/``.
"""

from __future__ import annotations

from dsproxy.errors import ClientError

# RFC 3986 §2.3 unreserved characters, as the byte values a %XX escape may stand for.
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX = b"0123456789abcdefABCDEF"


def _decode_unreserved(path: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        byte = path[i]
        if byte == 0x25 and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            value = int(path[i + 1 : i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
                i += 3
                continue
        out.append(byte)
        i += 1
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path with empty segments merged; None above ``/``."""
    segments: list[bytes] = []
    parts = path.split(b"/")
    last = len(parts) - 1
    trailing = False
    for index, part in enumerate(parts):
        if part == b"" or part == b".":
            trailing = index == last and index > 0
            continue
        if part == b"..":
            if not segments:
                raise ClientError("the request path climbs above /", status=400)
            segments.pop()
            trailing = index == last
            continue
        segments.append(part)
        trailing = False
    joined = b"/" + b"/".join(segments)
    if trailing and segments:
        joined += b"/"
    return joined


def route_path(target: bytes) -> bytes:
    """The normalised path of a request target, as routes are matched against it.

    Raises ClientError (400) for a path that climbs above ``/``.
    """
    path = target
    if not path.startswith(b"/"):
        scheme_end = path.find(b"://")
        if scheme_end < 0:
            return b"/"  # asterisk-form, authority-form: routed as "/"
        start = scheme_end + 3
        end = len(path)
        for mark in (b"/", b"?", b"#"):  # the authority ends at the first of these
            found = path.find(mark, start)
            if 0 <= found < end:
                end = found
        if end == len(path) or path[end] != 0x2F:
            return b"/"  # no path: "http://gw" or "http://gw?q=/api"
        path = path[end:]
    cut = path.find(b"?")
    if cut >= 0:
        path = path[:cut]
    cut = path.find(b"#")
    if cut >= 0:
        path = path[:cut]
    # The usual path needs nothing more: no escape, no dot-segment, no empty segment.
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return path
    if b"%" in path:
        path = _decode_unreserved(path)
    return _remove_dot_segments(path)


def normalise_prefix(prefix: str) -> str:
    """A route prefix as it is matched: no trailing ``/`` (``/api/`` is ``/api``), ``/`` kept."""
    stripped = prefix.rstrip("/")
    return stripped or "/"
