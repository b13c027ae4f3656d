"""dsproxy: a dual-stack HTTP/1.1 and WebSocket reverse proxy on asyncio + uvloop."""

from __future__ import annotations

__version__ = "0.1.0"
