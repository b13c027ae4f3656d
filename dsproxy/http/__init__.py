"""HTTP rules without I/O: codecs, RFC 9112 framing, header rules."""
