"""Certificates made in the tests (trustme), written as the PEM files ``[tls]`` names.

No fixtures here (they live in conftest.py): plain helpers the unit, integration and
process tests share.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class TlsFiles:
    """A CA, and a leaf it issued written to ``cert`` (leaf, then the CA) and ``key``."""

    ca: trustme.CA
    leaf: trustme.LeafCert
    cert: Path
    key: Path
    ca_file: Path

    def client_context(self, *, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        """A client context that trusts the CA (verifies the name too)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def reissue(self, *names: str, not_after: datetime.datetime | None = None) -> None:
        """Write a new leaf from the same CA over ``cert`` and ``key`` (a renewal)."""
        self.leaf = issue(self.ca, names or LOOPBACK_NAMES, not_after)
        write_pair(self.leaf, self.ca, self.cert, self.key)

    @property
    def leaf_der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.leaf.cert_chain_pems[0].bytes().decode())


def issue(
    ca: trustme.CA, names: tuple[str, ...], not_after: datetime.datetime | None = None
) -> trustme.LeafCert:
    return ca.issue_cert(*names, common_name=names[0], not_after=not_after)


def write_pair(leaf: trustme.LeafCert, ca: trustme.CA, cert: Path, key: Path) -> None:
    cert.write_bytes(leaf.cert_chain_pems[0].bytes() + ca.cert_pem.bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)


def make_tls_files(
    directory: Path,
    names: tuple[str, ...] = LOOPBACK_NAMES,
    *,
    not_after: datetime.datetime | None = None,
    prefix: str = "tls",
) -> TlsFiles:
    ca = trustme.CA(organization_name="dsproxy tests")
    leaf = issue(ca, names, not_after)
    cert, key, ca_file = (directory / f"{prefix}.{ext}" for ext in ("crt", "key", "ca.pem"))
    write_pair(leaf, ca, cert, key)
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsFiles(ca, leaf, cert, key, ca_file)


def tls_connect(
    host: str, port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> ssl.SSLSocket:
    """A blocking TLS client socket, handshake done (timeouts short)."""
    raw = socket.create_connection((host, port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise
