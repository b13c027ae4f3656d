"""The server side of TLS: the context built from ``[tls]``, and what a handshake failure was.

``load_server_tls`` reads ``tls.cert`` (PEM: the leaf, then its chain) and ``tls.key``
and returns an ``ssl.SSLContext`` for the TLS listeners with the certificate's fields
(``dsproxy check``, the expiry gauge). Every failure is a ``ConfigError`` naming
``tls.cert`` or ``tls.key``: a file that cannot be read, a file without a PEM block,
an encrypted key (no one could type its passphrase), a key that does not belong to
the certificate, a certificate OpenSSL refuses.

The context (choices, and why):

* ``PROTOCOL_TLS_SERVER``, oldest version ``tls.min_version`` ("1.2" or "1.3"), newest
  whatever OpenSSL has (1.3).
* TLS 1.2 cipher suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only (forward
  secrecy, AEAD). Python's default list also has CBC suites, which RFC 9113 §9.2.2
  forbids under HTTP/2, and DHE ones, which need DH parameters Python never loads.
  TLS 1.3 suites are OpenSSL's defaults (all three are fine). The server's order wins.
* No renegotiation (a client could make the server redo the expensive half of a
  handshake at will), no compression (CRIME): ``OP_NO_RENEGOTIATION``,
  ``OP_NO_COMPRESSION``.
* ALPN ``h2`` then ``http/1.1`` (``ALPN_PROTOCOLS``; the server's preference wins). A
  client that offers neither, or no ALPN at all, gets HTTP/1.1.
* Session resumption: OpenSSL's defaults (TLS 1.3 tickets, two per handshake; TLS 1.2
  tickets and a session cache). Ticket keys belong to one context, so a resumed
  session works within one worker process and one certificate generation; elsewhere
  the client simply does a full handshake.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dsproxy.errors import ConfigError
from dsproxy.net.x509 import CertificateFields, parse_certificate, pem_certificates

ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Bounded label values of dsproxy_tls_handshake_errors_total{reason}.
HANDSHAKE_FAILURE_REASONS: Final = (
    "version",  # no TLS version in common (an old client, or tls.min_version = "1.3")
    "cipher",  # no cipher suite, group or signature algorithm in common
    "certificate",  # the client refused our certificate (unknown CA, expired, wrong name)
    "http",  # plain HTTP sent to a TLS port
    "eof",  # the client closed or reset the connection during the handshake
    "timeout",  # no complete handshake within server.header_timeout
    "other",
)
# OpenSSL's reason codes (``SSLError.reason``) behind each label.
_VERSION_REASONS = frozenset(
    {"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "VERSION_TOO_HIGH", "NO_PROTOCOLS_AVAILABLE",
     "TLSV1_ALERT_PROTOCOL_VERSION", "UNKNOWN_PROTOCOL"}
)  # fmt: skip
_CIPHER_REASONS = frozenset(
    {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SHARED_GROUPS",
     "NO_SHARED_SIGNATURE_ALGORITHMS", "NO_SUITABLE_SIGNATURE_ALGORITHM",
     "TLSV1_ALERT_INSUFFICIENT_SECURITY"}
)  # fmt: skip
_CERTIFICATE_REASONS = frozenset(
    {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
     "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
     "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_BAD_CERTIFICATE_STATUS_RESPONSE"}
)  # fmt: skip
_HTTP_REASONS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})
_EOF_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING"})
# OpenSSL refuses a certificate or its key as too weak for security level 2.
_WEAK_REASONS = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})

SECONDS_PER_DAY = 86400


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The served certificate, as ``dsproxy check`` and the logs describe it."""

    path: Path
    leaf: CertificateFields
    chain: tuple[CertificateFields, ...]  # the certificates after the leaf, in file order

    @property
    def not_after(self) -> float:
        return self.leaf.not_after

    def describe(self, now: float | None = None) -> str:
        """``subject ...; names ...; expires 2027-03-04 05:06:07 UTC (in 90 days)``."""
        now = time.time() if now is None else now
        leaf = self.leaf
        names = ", ".join(leaf.names) or "none"
        expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(leaf.not_after))
        days = (leaf.not_after - now) / SECONDS_PER_DAY
        when = f"in {days:.0f} days" if days >= 0 else f"EXPIRED {-days:.0f} days ago"
        chain = f"; chain of {len(self.chain)}" if self.chain else ""
        return f"subject {leaf.subject}; names {names}{chain}; expires {expires} ({when})"

    def warnings(self, now: float | None = None) -> list[str]:
        """What clients will refuse: an expired or not yet valid leaf, a chain out of order."""
        now = time.time() if now is None else now
        found: list[str] = []
        if now >= self.leaf.not_after:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.leaf.not_after))
            found.append(f"the certificate in {self.path} expired on {stamp}")
        elif now < self.leaf.not_before:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.leaf.not_before))
            found.append(f"the certificate in {self.path} is not valid before {stamp}")
        issued = (self.leaf, *self.chain)
        for position, (child, parent) in enumerate(zip(issued, issued[1:], strict=False), start=1):
            if child.issuer != parent.subject:
                found.append(
                    f"certificate {position + 1} in {self.path} did not issue certificate "
                    f"{position} (the chain must follow the leaf in order)"
                )
                break
        return found


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A loaded certificate: the context new handshakes use, and what it serves."""

    context: ssl.SSLContext
    certificate: CertificateInfo
    # Hash of the files' bytes and the settings: a reload with nothing changed keeps
    # the context it has (and with it the session ticket keys clients resume with).
    fingerprint: bytes


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # Never let OpenSSL prompt on the terminal: an encrypted key was refused before.
    raise ConfigError("tls.key", "is encrypted; give an unencrypted key")


def _fingerprint(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def load_server_tls(
    cert: Path,
    key: Path,
    min_version: str = "1.2",
    alpn: Sequence[str] = ALPN_PROTOCOLS,
) -> ServerTls:
    """The server context for ``cert`` + ``key``; ConfigError naming ``tls.cert``/``tls.key``."""
    cert_pem, key_pem = _read("tls.cert", cert), _read("tls.key", key)
    try:
        blocks = pem_certificates(cert_pem)
    except ValueError as exc:
        raise ConfigError("tls.cert", f"{cert}: {exc}") from None
    if not blocks:
        raise ConfigError("tls.cert", f"{cert} holds no PEM certificate (BEGIN CERTIFICATE)")
    fields: list[CertificateFields] = []
    for index, der in enumerate(blocks, start=1):
        try:
            fields.append(parse_certificate(der))
        except ValueError as exc:
            raise ConfigError(
                "tls.cert", f"{cert}: certificate {index} is malformed: {exc}"
            ) from None
    if b"PRIVATE KEY-----" not in key_pem:
        raise ConfigError("tls.key", f"{key} holds no PEM private key (BEGIN ... PRIVATE KEY)")
    if b"ENCRYPTED" in key_pem:
        raise ConfigError("tls.key", f"{key} is encrypted; give an unencrypted key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or ""
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                "tls.key", f"{key} does not match the certificate in tls.cert ({cert})"
            ) from None
        if reason in _WEAK_REASONS:
            raise ConfigError(
                "tls.cert", f"{cert}: OpenSSL refuses it as too weak ({reason.lower()})"
            ) from None
        raise ConfigError(
            "tls.key", f"{key} cannot be loaded with tls.cert {cert}: {reason or exc}"
        ) from None
    except OSError as exc:  # the files changed under us since they were read
        raise ConfigError("tls.cert", f"cannot load {cert}: {exc.strerror or exc}") from None
    info = CertificateInfo(cert, fields[0], tuple(fields[1:]))
    settings = f"{min_version} {','.join(alpn)}".encode()
    return ServerTls(context, info, _fingerprint(cert_pem, key_pem, settings))


def handshake_failure_reason(exc: BaseException | None) -> str:
    """The ``HANDSHAKE_FAILURE_REASONS`` label for why a server handshake failed.

    ``exc`` is what the event loop's ``connect_accepted_socket`` raised: an ``ssl.SSLError`` from
    OpenSSL, ``ConnectionAbortedError`` when it gave up after ``ssl_handshake_timeout``
    (uvloop and asyncio both), another ``ConnectionError`` or None when the peer went
    away (a connection lost without an error).
    """
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) or reason in _EOF_REASONS:
            return "eof"
        if reason in _VERSION_REASONS:
            return "version"
        if reason in _CIPHER_REASONS:
            return "cipher"
        if reason in _CERTIFICATE_REASONS:
            return "certificate"
        if reason in _HTTP_REASONS:
            return "http"
        return "other"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout"
    if exc is None or isinstance(exc, ConnectionError | EOFError):
        return "eof"
    return "other"
