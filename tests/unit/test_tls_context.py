"""The TLS context, certificate inspection and handshake-failure reasons (no sockets).

Handshakes run in memory (``ssl.MemoryBIO`` pairs), so the SSLErrors classified here
are the ones OpenSSL really raises.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from dsproxy.errors import ConfigError
from dsproxy.net.tls import (
    HANDSHAKE_FAILURE_REASONS,
    handshake_failure_reason,
    load_server_tls,
)
from dsproxy.net.x509 import parse_certificate, pem_certificates
from dsproxy.observe.metrics import Metrics
from tests.tlsutil import TlsFiles, issue, make_tls_files

UTC = datetime.UTC


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a handshake in memory; raises what the server side raised."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                cli.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                s_in.write(c_out.read())  # the client's alert
                srv.do_handshake()
                raise
        s_in.write(c_out.read())
        if not server_done:
            try:
                srv.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            return srv, cli
    raise AssertionError("handshake did not finish")


def server_failure(server: ssl.SSLContext, first_bytes: bytes) -> ssl.SSLError:
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    s_in.write(first_bytes)
    with pytest.raises(ssl.SSLError) as info:
        srv.do_handshake()
    return info.value


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


# -- reading certificates --------------------------------------------------------------------


def test_fields_match_what_cryptography_reads(tmp_path: Path) -> None:
    ends = datetime.datetime(2031, 7, 8, 9, 10, 11, tzinfo=UTC)
    files = make_tls_files(tmp_path, ("gw.example", "*.gw.example", "10.0.0.7", "2001:db8::7"),
                           not_after=ends)  # fmt: skip
    leaf_der, ca_der = pem_certificates(files.cert.read_bytes())
    fields = parse_certificate(leaf_der)
    reference = x509.load_der_x509_certificate(leaf_der)
    assert fields.not_after == calendar.timegm(ends.timetuple())
    assert fields.not_after == reference.not_valid_after_utc.timestamp()
    assert fields.not_before == reference.not_valid_before_utc.timestamp()
    assert "CN=gw.example" in fields.subject.split(", ")
    assert fields.names == (
        "DNS:gw.example", "DNS:*.gw.example", "IP:10.0.0.7", "IP:2001:db8::7",
    )  # fmt: skip
    ca = parse_certificate(ca_der)
    assert fields.issuer == ca.subject
    assert "O=dsproxy tests" in ca.subject.split(", ")
    # trustme's CA lasts until 3000: a GeneralizedTime (UTCTime stops at 2049).
    assert ca.not_after == x509.load_der_x509_certificate(ca_der).not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("tag", "text", "expected"),
    [
        (0x17, b"491231235959Z", "2049-12-31 23:59:59"),
        (0x17, b"500101000000Z", "1950-01-01 00:00:00"),  # RFC 5280: YY >= 50 is 19YY
        (0x18, b"20500101000000Z", "2050-01-01 00:00:00"),
    ],
)
def test_both_time_encodings(tag: int, text: bytes, expected: str) -> None:
    from dsproxy.net.x509 import _time

    stamp = _time(tag, text)
    assert datetime.datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S") == expected


@pytest.mark.parametrize("text", [b"4912312359Z", b"491331235959Z", b"20500101000000", b""])
def test_bad_times_are_refused(text: bytes) -> None:
    from dsproxy.net.x509 import _time

    with pytest.raises(ValueError, match="bad time"):
        _time(0x17 if len(text) < 15 else 0x18, text)


def test_pem_blocks_in_file_order_and_bad_base64(files: TlsFiles) -> None:
    pem = files.cert.read_bytes()
    assert len(pem_certificates(b"text before\n" + pem + b"\ntext after")) == 2
    assert pem_certificates(b"no certificate here") == []
    broken = pem.replace(b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\n!!", 1)
    with pytest.raises(ValueError, match="certificate 1 is not valid base64"):
        pem_certificates(broken)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_der_raises_value_error_only(data: st.DataObject) -> None:
    der = _LEAF_DER
    cut = data.draw(st.integers(0, len(der) - 1))
    flip = data.draw(st.integers(0, len(der) - 1))
    value = data.draw(st.integers(0, 255))
    for damaged in (der[:cut], der[:flip] + bytes([value]) + der[flip + 1 :]):
        with contextlib.suppress(ValueError):  # anything else (IndexError...) fails the test
            parse_certificate(damaged)


_LEAF_DER = pem_certificates(issue(trustme.CA(), ("localhost", "::1")).cert_chain_pems[0].bytes())[
    0
]


# -- loading the pair -----------------------------------------------------------------------


def test_a_good_pair_gives_a_server_context_with_alpn(files: TlsFiles) -> None:
    loaded = load_server_tls(files.cert, files.key, "1.2")
    assert loaded.certificate.leaf.names == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
    assert len(loaded.certificate.chain) == 1
    srv, cli = handshake(loaded.context, files.client_context(alpn=("h2", "http/1.1")))
    assert srv.selected_alpn_protocol() == "h2"  # the server's order wins
    assert srv.version() == "TLSv1.3"
    srv, cli = handshake(loaded.context, files.client_context(alpn=("http/1.1",)))
    assert srv.selected_alpn_protocol() == "http/1.1"
    srv, cli = handshake(loaded.context, files.client_context(alpn=()))
    assert srv.selected_alpn_protocol() is None  # no ALPN: served as HTTP/1.1
    only_h1 = load_server_tls(files.cert, files.key, "1.2", alpn=("http/1.1",))
    srv, _ = handshake(only_h1.context, files.client_context(alpn=("h2", "http/1.1")))
    assert srv.selected_alpn_protocol() == "http/1.1"


def test_tls12_suites_are_ecdhe_aead_only(files: TlsFiles) -> None:
    context = load_server_tls(files.cert, files.key).context
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), tls12
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION


def test_fingerprint_follows_the_files_and_settings(files: TlsFiles) -> None:
    first = load_server_tls(files.cert, files.key).fingerprint
    assert load_server_tls(files.cert, files.key).fingerprint == first
    assert load_server_tls(files.cert, files.key, "1.3").fingerprint != first
    files.reissue()
    assert load_server_tls(files.cert, files.key).fingerprint != first


def _encrypted(files: TlsFiles) -> bytes:
    key = serialization.load_pem_private_key(files.leaf.private_key_pem.bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("damage", "key", "words"),
    [
        ("no cert file", "tls.cert", "cannot read"),
        ("no key file", "tls.key", "cannot read"),
        ("cert not PEM", "tls.cert", "holds no PEM certificate"),
        ("key not PEM", "tls.key", "holds no PEM private key"),
        ("cert is the key", "tls.cert", "holds no PEM certificate"),
        ("key of another cert", "tls.key", "does not match the certificate in tls.cert"),
        ("chain before leaf", "tls.key", "does not match the certificate in tls.cert"),
        ("encrypted key", "tls.key", "is encrypted"),
        ("garbled cert", "tls.cert", "certificate 1 is malformed"),
    ],
)
def test_every_bad_pair_names_its_key(
    tmp_path: Path, files: TlsFiles, damage: str, key: str, words: str
) -> None:
    cert, key_file = files.cert, files.key
    if damage == "no cert file":
        cert = tmp_path / "missing.crt"
    elif damage == "no key file":
        key_file = tmp_path / "missing.key"
    elif damage == "cert not PEM":
        cert.write_bytes(b"just text\n")
    elif damage == "key not PEM":
        key_file.write_bytes(b"just text\n")
    elif damage == "cert is the key":
        cert = key_file
    elif damage == "key of another cert":
        other = make_tls_files(tmp_path, prefix="other")
        key_file = other.key
    elif damage == "chain before leaf":
        leaf, ca = cert.read_bytes().split(b"-----END CERTIFICATE-----\n")[:2]
        cert.write_bytes(
            ca + b"-----END CERTIFICATE-----\n" + leaf + b"-----END CERTIFICATE-----\n"
        )
    elif damage == "encrypted key":
        key_file.write_bytes(_encrypted(files))
    elif damage == "garbled cert":
        der = bytearray(pem_certificates(cert.read_bytes())[0])
        der[1] ^= 0x7F  # the outer length
        cert.write_bytes(ssl.DER_cert_to_PEM_cert(bytes(der)).encode())
    with pytest.raises(ConfigError) as info:
        load_server_tls(cert, key_file)
    assert info.value.key == key
    assert words in info.value.message


def test_describe_and_warnings(tmp_path: Path) -> None:
    ends = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    files = make_tls_files(tmp_path, ("gw.example",), not_after=ends)
    info = load_server_tls(files.cert, files.key).certificate
    now = calendar.timegm(datetime.datetime(2029, 12, 2, 3, 4, 5, tzinfo=UTC).timetuple())
    assert info.describe(now).endswith(
        "names DNS:gw.example; chain of 1; expires 2030-01-02 03:04:05 UTC (in 31 days)"
    )
    assert info.warnings(now) == []
    later = calendar.timegm(ends.timetuple()) + 3 * 86400
    assert "EXPIRED 3 days ago" in info.describe(later)
    assert info.warnings(later) == [
        f"the certificate in {files.cert} expired on 2030-01-02 03:04:05 UTC"
    ]
    assert "is not valid before 2000-01-01" in info.warnings(0.0)[0]  # trustme's notBefore


def test_a_chain_out_of_order_is_a_warning(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    stranger = make_tls_files(tmp_path, prefix="stranger")
    leaf = files.cert.read_bytes().split(b"-----END CERTIFICATE-----\n")[0]
    files.cert.write_bytes(leaf + b"-----END CERTIFICATE-----\n" + stranger.ca.cert_pem.bytes())
    info = load_server_tls(files.cert, files.key).certificate
    assert info.warnings() == [
        f"certificate 2 in {files.cert} did not issue certificate 1 "
        "(the chain must follow the leaf in order)"
    ]


def test_an_expired_certificate_still_loads(tmp_path: Path) -> None:
    # Served with a warning: clients decide (docs/configuration.md, "TLS").
    ended = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    files = make_tls_files(tmp_path, not_after=ended)
    loaded = load_server_tls(files.cert, files.key)
    assert loaded.certificate.not_after == ended.timestamp()
    assert "expired on 2020-01-01" in loaded.certificate.warnings()[0]


# -- handshake failures, by reason -----------------------------------------------------------


def test_a_tls12_client_against_min_version_13_is_version(files: TlsFiles) -> None:
    server = load_server_tls(files.cert, files.key, "1.3").context
    client = files.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as info:
        handshake(server, client)
    assert handshake_failure_reason(info.value) == "version"


def test_a_client_with_only_cbc_suites_is_cipher(files: TlsFiles) -> None:
    server = load_server_tls(files.cert, files.key).context
    client = files.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises(ssl.SSLError) as info:
        handshake(server, client)
    assert handshake_failure_reason(info.value) == "cipher"


def test_a_client_that_does_not_trust_us_is_certificate(tmp_path: Path, files: TlsFiles) -> None:
    server = load_server_tls(files.cert, files.key).context
    stranger = make_tls_files(tmp_path, prefix="stranger")
    with pytest.raises(ssl.SSLError) as info:
        handshake(server, stranger.client_context())
    assert handshake_failure_reason(info.value) == "certificate"


@pytest.mark.parametrize(
    ("first_bytes", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http"),
        (b"CONNECT gw:443 HTTP/1.1\r\n\r\n", "http"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "other"),
        (b"\x00" * 16, "other"),
    ],
)
def test_bytes_that_are_not_tls(files: TlsFiles, first_bytes: bytes, reason: str) -> None:
    server = load_server_tls(files.cert, files.key).context
    assert handshake_failure_reason(server_failure(server, first_bytes)) == reason


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
        (ConnectionResetError(), "eof"),  # the loop's EOF during the handshake
        (BrokenPipeError(), "eof"),
        (None, "eof"),  # the connection was lost without an error
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "eof"),
        (RuntimeError("a loop bug"), "other"),
    ],
)
def test_what_the_loop_raises(exc: BaseException | None, reason: str) -> None:
    assert handshake_failure_reason(exc) == reason
    assert reason in HANDSHAKE_FAILURE_REASONS


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_reasons_and_show_expiry_only_once_loaded() -> None:
    metrics = Metrics()
    reg = metrics.registry
    expiry = "dsproxy_tls_certificate_expiry_timestamp_seconds"
    for reason in HANDSHAKE_FAILURE_REASONS:
        assert reg.get_sample_value("dsproxy_tls_handshake_errors_total", {"reason": reason}) == 0
    assert reg.get_sample_value(expiry) is None  # no certificate: no sample (never a 0)
    metrics.tls_handshake_failed("version")
    metrics.tls_handshake_failed("version")
    metrics.tls_handshake_failed("not-a-reason")
    assert reg.get_sample_value("dsproxy_tls_handshake_errors_total", {"reason": "version"}) == 2
    assert reg.get_sample_value("dsproxy_tls_handshake_errors_total", {"reason": "other"}) == 1
    metrics.tls_certificate_loaded(1900000000.0)
    metrics.tls_certificate_loaded(1950000000.0)  # a reload
    assert reg.get_sample_value(expiry) == 1950000000.0
