"""HTTP/1.1 codecs: ``h11`` (reference, always installed) and ``httptools`` (speedups)."""

from __future__ import annotations

from dsproxy.http.codec.base import CodecFactory


def httptools_available() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def get_codec(name: str) -> CodecFactory:
    """The codec for ``server.parser``: ``auto`` picks httptools when importable."""
    if name == "auto":
        name = "httptools" if httptools_available() else "h11"
    if name == "httptools":
        from dsproxy.http.codec.httptools_codec import HttptoolsCodec

        return HttptoolsCodec()
    if name == "h11":
        from dsproxy.http.codec.h11_codec import H11Codec

        return H11Codec()
    raise ValueError(f"unknown parser {name!r} (auto, h11, httptools)")
