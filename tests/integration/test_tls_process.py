"""TLS on real processes: SIGHUP with a renewed certificate and with a broken one, one process
and two workers (``python -m dsproxy run -c FILE``, as tests/integration/test_operations.py).

One process: a certificate that cannot be loaded keeps the one in force and the rest of
the file applies. Several workers: the supervisor loads the certificate before it
forwards the reload, and refuses the reload as a whole when it cannot (a worker started
later would have to load it); the workers keep serving the old one.
"""

from __future__ import annotations

import datetime
import signal
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_operations import (
    ProxyProcess,
    UpstreamThread,
    config_text,
    free_port,
    wait_until,
)
from tests.tlsutil import TlsFiles, make_tls_files, tls_connect

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
FIRST_EXPIRY = datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC)
RENEWED_EXPIRY = datetime.datetime(2041, 6, 1, tzinfo=datetime.UTC)
EXPIRY_METRIC = "dsproxy_tls_certificate_expiry_timestamp_seconds"


@pytest.fixture
def echo_upstream() -> Iterator[int]:
    runner = UpstreamThread()
    try:
        yield runner.start("A").port
    finally:
        runner.close()


def _with_tls(text: str, files: TlsFiles, tls_port: int) -> str:
    server = text.replace("[server]\n", f'[server]\ntls_listen = ["127.0.0.1:{tls_port}"]\n', 1)
    return server + f'\n[tls]\ncert = "{files.cert}"\nkey = "{files.key}"\n'


@pytest.fixture
def start_tls_proxy(
    tmp_path: Path, echo_upstream: int
) -> Iterator[Callable[[int], tuple[ProxyProcess, TlsFiles, int]]]:
    started: list[ProxyProcess] = []

    def start(workers: int) -> tuple[ProxyProcess, TlsFiles, int]:
        files = make_tls_files(tmp_path, not_after=FIRST_EXPIRY)
        port, admin_port, tls_port = free_port(), free_port(), free_port()
        config_file = tmp_path / "dsproxy.toml"
        config_file.write_text(
            _with_tls(
                config_text(
                    port=port,
                    admin_port=admin_port,
                    upstream_ports=[echo_upstream],
                    workers=workers,
                ),  # fmt: skip
                files,
                tls_port,
            )
        )
        proxy = ProxyProcess(config_file, port, admin_port)
        started.append(proxy)
        proxy.wait_ready()
        return proxy, files, tls_port

    try:
        yield start
    finally:
        for proxy in started:
            proxy.close()


def wait_for_reloads(proxy: ProxyProcess, workers: int) -> None:
    """Until every worker logged its reload (each process logs "reloaded FILE" when done)."""
    done = 'logger=dsproxy msg="reloaded '
    wait_until(lambda: proxy.log().count(done) >= workers, f"{workers} reloads")


def served_der(files: TlsFiles, tls_port: int) -> bytes:
    with tls_connect("127.0.0.1", tls_port, files.client_context()) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


@WORKERS
def test_sighup_serves_a_renewed_certificate(
    start_tls_proxy: Callable[[int], tuple[ProxyProcess, TlsFiles, int]], workers: int
) -> None:
    proxy, files, tls_port = start_tls_proxy(workers)
    assert served_der(files, tls_port) == files.leaf_der
    assert proxy.metric(EXPIRY_METRIC) == FIRST_EXPIRY.timestamp()
    first = files.leaf_der
    files.reissue(not_after=RENEWED_EXPIRY)
    proxy.signal(signal.SIGHUP)
    wait_for_reloads(proxy, workers)
    for _ in range(8):  # new connections land on any worker
        assert served_der(files, tls_port) == files.leaf_der != first
    wait_until(
        lambda: proxy.metric(EXPIRY_METRIC) == RENEWED_EXPIRY.timestamp(),
        "the expiry gauge to follow",
    )
    assert "Traceback" not in proxy.log()


@WORKERS
def test_sighup_with_a_broken_key_keeps_the_certificate(
    start_tls_proxy: Callable[[int], tuple[ProxyProcess, TlsFiles, int]],
    tmp_path: Path,
    workers: int,
) -> None:
    proxy, files, tls_port = start_tls_proxy(workers)
    first = files.leaf_der
    files.key.write_bytes(make_tls_files(tmp_path, prefix="other").key.read_bytes())
    proxy.signal(signal.SIGHUP)
    if workers == 1:
        wait_for_reloads(proxy, 1)
        assert "kept the certificate in force" in proxy.log()
    else:
        wait_until(lambda: "reload refused: tls.key: " in proxy.log(), "the refused reload")
    assert "does not match the certificate in tls.cert" in proxy.log()
    for _ in range(6):
        assert served_der(files, tls_port) == first
    assert proxy.admin_status("/readyz") == 200
    assert proxy.process.poll() is None
    with pytest.raises(ssl.SSLError):  # (the broken pair really is broken)
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files.cert, files.key)
