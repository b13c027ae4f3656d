"""What ``dsproxy check`` and the expiry gauge need from an X.509 certificate, read from DER.

The standard library loads certificates into OpenSSL but has no public call that
returns a leaf certificate's fields (``SSLContext.get_ca_certs`` lists only CA
certificates, ``getpeercert`` needs a verified handshake, which an expired
certificate cannot pass). So this module reads the few fields it needs straight from
the DER encoding (RFC 5280 §4.1, X.690 DER), and nothing else:

    Certificate  ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    TBSCertificate ::= SEQUENCE {
        [0] EXPLICIT version OPTIONAL, serialNumber, signature AlgorithmIdentifier,
        issuer Name, validity SEQUENCE { notBefore Time, notAfter Time },
        subject Name, subjectPublicKeyInfo, [1] [2] unique IDs OPTIONAL,
        [3] EXPLICIT extensions OPTIONAL }

Names become ``CN=example.com, O=Example`` (attributes in encoded order), the
subjectAltName extension (2.5.29.17) becomes ``DNS:...`` / ``IP:...`` entries, and
both times become POSIX timestamps. Anything malformed raises ``ValueError``; the
caller names the config key. Signatures are not checked here: OpenSSL does that
when the certificate is loaded and when clients verify it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import ipaddress
import re
from dataclasses import dataclass

PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL
)

# Universal tags used below (X.690 §8.1.2).
BOOLEAN, INTEGER, OCTET_STRING, OID = 0x01, 0x02, 0x04, 0x06
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
SEQUENCE, SET = 0x30, 0x31
# Context-specific tags in a certificate (constructed [0] and [3]) and in GeneralName.
VERSION_TAG, EXTENSIONS_TAG = 0xA0, 0xA3
SAN_DNS, SAN_URI, SAN_IP = 0x82, 0x86, 0x87

SUBJECT_ALT_NAME = "2.5.29.17"
# Attribute short names as openssl prints them; any other attribute shows its OID.
ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "emailAddress",
}


@dataclass(frozen=True, slots=True)
class CertificateFields:
    subject: str  # "CN=example.com, O=Example"
    issuer: str
    names: tuple[str, ...]  # subjectAltName: "DNS:example.com", "IP:2001:db8::1"
    not_before: float  # POSIX seconds
    not_after: float


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER bytes of every ``CERTIFICATE`` block of ``pem``, in file order."""
    out: list[bytes] = []
    for index, match in enumerate(PEM_CERTIFICATE.finditer(pem), start=1):
        body = b"".join(match.group(1).split())
        try:
            out.append(base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"certificate {index} is not valid base64") from None
    return out


def _read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The element at ``pos``: (tag, content start, content end). DER lengths only."""
    if pos + 2 > end:
        raise ValueError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tags are not used in certificates")
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise ValueError("bad length")  # 0x80: indefinite length, which DER forbids
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise ValueError("truncated element")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _read(data, start, end)
        out.append(element)
        start = element[2]
    return out


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int]:
    if element[0] != tag:
        raise ValueError(f"{what}: expected tag 0x{tag:02x}, found 0x{element[0]:02x}")
    return element[1], element[2]


def _oid(raw: bytes) -> str:
    if not raw:
        raise ValueError("empty object identifier")
    parts: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if raw[-1] & 0x80:
        raise ValueError("truncated object identifier")
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])


def _time(tag: int, raw: bytes) -> float:
    """UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), RFC 5280 §4.1.2.5."""
    text = raw.decode("ascii", "replace")
    if tag == UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:]
    elif tag == GENERALIZED_TIME and re.fullmatch(r"\d{14}Z", text):
        year, rest = int(text[:4]), text[4:]
    else:
        raise ValueError(f"bad time {text!r}")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"bad time {text!r}")
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _name(data: bytes, start: int, end: int) -> str:
    """A Name (SEQUENCE OF SET OF AttributeTypeAndValue) as ``CN=x, O=y``."""
    parts: list[str] = []
    for rdn in _children(data, start, end):
        for attribute in _children(data, *_expect(rdn, SET, "name")):
            fields = _children(data, *_expect(attribute, SEQUENCE, "name attribute"))
            if len(fields) != 2:
                raise ValueError("name attribute: expected a type and a value")
            oid = _oid(data[slice(*_expect(fields[0], OID, "attribute type"))])
            raw = data[fields[1][1] : fields[1][2]]
            # BMPString (0x1e) is UTF-16; the other string types are ASCII or UTF-8.
            value = raw.decode("utf-16-be" if fields[1][0] == 0x1E else "utf-8", "replace")
            parts.append(f"{ATTRIBUTE_NAMES.get(oid, oid)}={value}")
    return ", ".join(parts)


def _alt_names(data: bytes, start: int, end: int) -> list[str]:
    """GeneralNames: DNS names, IP addresses and URIs (other kinds are skipped)."""
    names: list[str] = []
    for tag, s, e in _children(data, *_expect(_read(data, start, end), SEQUENCE, "alt names")):
        raw = data[s:e]
        if tag == SAN_DNS:
            names.append("DNS:" + raw.decode("ascii", "replace"))
        elif tag == SAN_IP and len(raw) in (4, 16):
            names.append(f"IP:{ipaddress.ip_address(raw)}")
        elif tag == SAN_URI:
            names.append("URI:" + raw.decode("ascii", "replace"))
    return names


def _extensions(data: bytes, start: int, end: int) -> list[str]:
    (outer,) = _children(data, start, end)
    for extension in _children(data, *_expect(outer, SEQUENCE, "extensions")):
        fields = _children(data, *_expect(extension, SEQUENCE, "extension"))
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[1][0] != BOOLEAN):
            raise ValueError("extension: expected an OID, an optional flag and a value")
        oid = _oid(data[slice(*_expect(fields[0], OID, "extension id"))])
        if oid == SUBJECT_ALT_NAME:
            return _alt_names(data, *_expect(fields[-1], OCTET_STRING, "extension value"))
    return []


def parse_certificate(der: bytes) -> CertificateFields:
    """Subject, issuer, subjectAltName and validity of one DER certificate."""
    certificate = _read(der, 0, len(der))
    if certificate[2] != len(der):
        raise ValueError("bytes after the certificate")
    outer = _children(der, *_expect(certificate, SEQUENCE, "certificate"))
    if len(outer) != 3:
        raise ValueError("certificate: expected 3 parts")
    tbs = _children(der, *_expect(outer[0], SEQUENCE, "tbsCertificate"))
    if tbs and tbs[0][0] == VERSION_TAG:
        tbs = tbs[1:]
    if len(tbs) < 6:
        raise ValueError("tbsCertificate: too few fields")
    _expect(tbs[0], INTEGER, "serial number")
    issuer = _name(der, *_expect(tbs[2], SEQUENCE, "issuer"))
    validity = _children(der, *_expect(tbs[3], SEQUENCE, "validity"))
    if len(validity) != 2:
        raise ValueError("validity: expected two times")
    not_before, not_after = (_time(tag, der[s:e]) for tag, s, e in validity)
    subject = _name(der, *_expect(tbs[4], SEQUENCE, "subject"))
    names: list[str] = []
    for tag, start, end in tbs[6:]:
        if tag == EXTENSIONS_TAG:
            names = _extensions(der, start, end)
    return CertificateFields(subject, issuer, tuple(names), not_before, not_after)
