"""Errors that carry the HTTP status the client must see.

Every fault the proxy answers itself becomes a ``ProxyError``; the downstream
protocol turns it into a short plain-text response in one place.
"""

from __future__ import annotations


class ProxyError(Exception):
    """A fault with the status to send (``status``) and a metric/log kind (``kind``)."""

    status: int = 500
    kind: str = "internal"

    def __init__(self, detail: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class ClientError(ProxyError):
    """The client sent something we refuse (400, 408, 413, 431)."""

    status = 400
    kind = "bad_request"


class UpstreamError(ProxyError):
    """The upstream failed; ``kind`` is connect | timeout | reset | protocol."""

    status = 502
    kind = "protocol"


class ConfigError(Exception):
    """A configuration problem; ``str()`` reads ``key: what is wrong``."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
