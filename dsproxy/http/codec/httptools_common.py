"""What the two httptools codecs share: limits and the parser's version."""

from __future__ import annotations

import httptools

# Bodies of at least this Content-Length bypass llhttp (see httptools_codec).
PASS_BODY_MIN_BYTES = 64 * 1024


def parser_version(parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> bytes:
    v = parser.get_http_version()
    if v == "1.1":
        return b"1.1"
    if v == "1.0":
        return b"1.0"
    return str(v).encode("ascii")
