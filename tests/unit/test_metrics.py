"""Metrics observer: values read back from its own registry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from dsproxy.http.codec.base import RequestHead
from dsproxy.observe.metrics import (
    MULTIPROC_DIR_ENV,
    REQUEST_DURATION_BUCKETS_SECONDS,
    BatchedHistogram,
    Metrics,
    mark_process_dead,
    metrics_registry_for_scrape,
    multiprocess_registry,
)
from dsproxy.observe.records import (
    CLIENT_ERROR_KINDS,
    UPSTREAM_ERROR_KINDS,
    Observer,
    RequestRecord,
    TunnelRecord,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def request(
    *,
    method: str = "GET",
    target: str = "/",
    http_version: str = "1.1",
    host: str = "example.test",
    referer: str = "",
    user_agent: str = "",
    **overrides: Any,
) -> RequestRecord:
    """A record of a request with these head fields (the record decodes them from the head)."""
    headers: list[tuple[bytes, bytes]] = [(b"Host", host.encode("latin-1"))] if host else []
    if referer:
        headers.append((b"Referer", referer.encode("latin-1")))
    if user_agent:
        headers.append((b"User-Agent", user_agent.encode("latin-1")))
    head = RequestHead(
        method.encode("latin-1"),
        target.encode("latin-1"),
        http_version.encode("latin-1"),
        headers,
        True,
        None,
        False,
        None,
        False,
    )
    fields: dict[str, Any] = dict(
        client_ip="10.0.0.1",
        client_port=50000,
        family="ipv4",
        head=head,
        status=200,
        bytes_received=0,
        bytes_sent=0,
        start_time=1_795_593_301.0,
        duration=0.002,
        upstream_addr="127.0.0.1:18080",
        upstream_duration=0.001,
        error=None,
    )
    fields.update(overrides)
    return RequestRecord(**fields)


def tunnel(**overrides: Any) -> TunnelRecord:
    fields: dict[str, Any] = dict(
        client_ip="::1",
        client_port=50001,
        family="ipv6",
        target="/ws",
        host="example.test",
        upstream_addr="127.0.0.1:18080",
        start_time=1_795_593_301.0,
        duration=12.5,
        bytes_from_client=100,
        bytes_to_client=250,
        close_reason="client_closed",
    )
    fields.update(overrides)
    return TunnelRecord(**fields)


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_is_an_observer_with_its_own_registry() -> None:
    first = Metrics()
    second = Metrics()  # same names again: fine, as neither touches the global registry
    observer: Observer = first
    assert observer is first
    assert first.registry is not REGISTRY
    assert first.registry is not second.registry
    assert REGISTRY.get_sample_value("dsproxy_requests_total", {"code": "200"}) is None


def requests_total(metrics: Metrics, code: str, family: str) -> float | None:
    return value(metrics, "dsproxy_requests_total", code=code, family=family, route="default")


def test_requests_by_code_and_family(metrics: Metrics) -> None:
    for _ in range(3):
        metrics.request_done(request())
    metrics.request_done(request(status=502, family="ipv6", client_ip="::1"))
    assert requests_total(metrics, "200", "ipv4") == 3
    assert requests_total(metrics, "502", "ipv6") == 1
    assert requests_total(metrics, "200", "ipv6") is None


def test_status_label_is_bounded(metrics: Metrics) -> None:
    metrics.request_done(request(status=0))
    metrics.request_done(request(status=1234))
    metrics.request_done(request(status=42))
    assert requests_total(metrics, "0", "ipv4") == 1
    assert requests_total(metrics, "other", "ipv4") == 2


def test_duration_histogram_and_bytes(metrics: Metrics) -> None:
    metrics.request_done(request(duration=0.0005, bytes_received=10, bytes_sent=1000))
    metrics.request_done(request(duration=2.0, bytes_received=0, bytes_sent=24))
    assert value(metrics, "dsproxy_request_duration_seconds_count") == 2
    assert value(metrics, "dsproxy_request_duration_seconds_sum") == pytest.approx(2.0005)
    assert value(metrics, "dsproxy_request_duration_seconds_bucket", le="0.001") == 1
    assert value(metrics, "dsproxy_request_duration_seconds_bucket", le="2.5") == 2
    assert value(metrics, "dsproxy_request_duration_seconds_bucket", le="60.0") == 2
    assert value(metrics, "dsproxy_bytes_received_total") == 10
    assert value(metrics, "dsproxy_bytes_sent_total") == 1024


def test_connections(metrics: Metrics) -> None:
    metrics.connection_opened("ipv4")
    metrics.connection_opened("ipv4")
    metrics.connection_opened("ipv6")
    metrics.connection_closed("ipv4")
    assert value(metrics, "dsproxy_connections_active", family="ipv4") == 1
    assert value(metrics, "dsproxy_connections_active", family="ipv6") == 1
    assert value(metrics, "dsproxy_connections_total", family="ipv4") == 2
    assert value(metrics, "dsproxy_connections_total", family="ipv6") == 1


def test_websocket_sessions(metrics: Metrics) -> None:
    metrics.websocket_opened()
    metrics.websocket_opened()
    metrics.websocket_closed(tunnel())
    assert value(metrics, "dsproxy_websocket_sessions_active") == 1
    assert value(metrics, "dsproxy_websocket_sessions_total") == 2
    assert value(metrics, "dsproxy_websocket_session_duration_seconds_count") == 1
    assert value(metrics, "dsproxy_bytes_received_total") == 100
    assert value(metrics, "dsproxy_bytes_sent_total") == 250


@pytest.mark.parametrize("kind", UPSTREAM_ERROR_KINDS)
def test_upstream_error_kinds_start_at_zero(metrics: Metrics, kind: str) -> None:
    assert value(metrics, "dsproxy_upstream_errors_total", kind=kind) == 0
    metrics.upstream_error(kind)
    assert value(metrics, "dsproxy_upstream_errors_total", kind=kind) == 1


@pytest.mark.parametrize("kind", CLIENT_ERROR_KINDS)
def test_client_error_kinds_start_at_zero(metrics: Metrics, kind: str) -> None:
    assert value(metrics, "dsproxy_client_errors_total", kind=kind) == 0
    metrics.client_error(kind)
    assert value(metrics, "dsproxy_client_errors_total", kind=kind) == 1


def test_unknown_kinds_and_families_are_other(metrics: Metrics) -> None:
    metrics.upstream_error("surprise")
    metrics.upstream_error("another surprise")
    metrics.client_error("weird")
    metrics.connection_opened("ipx")  # type: ignore[arg-type]
    assert value(metrics, "dsproxy_upstream_errors_total", kind="other") == 2
    assert value(metrics, "dsproxy_upstream_errors_total", kind="surprise") is None
    assert value(metrics, "dsproxy_client_errors_total", kind="other") == 1
    assert value(metrics, "dsproxy_connections_total", family="other") == 1


def test_upstream_pool(metrics: Metrics) -> None:
    metrics.upstream_acquired(True)
    metrics.upstream_acquired(True)
    metrics.upstream_acquired(False)
    metrics.upstream_connected(0.003)
    metrics.pool_idle(7)
    metrics.pool_idle(5)
    assert value(metrics, "dsproxy_upstream_requests_total", reused="true") == 2
    assert value(metrics, "dsproxy_upstream_requests_total", reused="false") == 1
    assert value(metrics, "dsproxy_upstream_connect_duration_seconds_count") == 1
    assert value(metrics, "dsproxy_upstream_connect_duration_seconds_bucket", le="0.005") == 1
    assert value(metrics, "dsproxy_upstream_pool_idle") == 5


def test_never_raises(metrics: Metrics) -> None:
    metrics.request_done(request(duration=None))  # a broken record
    metrics.websocket_closed(tunnel(duration="soon"))
    metrics.upstream_connected(None)  # type: ignore[arg-type]
    metrics.pool_idle("many")  # type: ignore[arg-type]
    metrics.request_done(request())  # and it still counts afterwards
    assert requests_total(metrics, "200", "ipv4") == 2


def test_scrape_registry_is_the_own_one_in_single_process_mode(metrics: Metrics) -> None:
    assert metrics_registry_for_scrape(metrics.registry) is metrics.registry
    mark_process_dead(12345)  # no directory: a no-op


WORKER_SCRIPT = textwrap.dedent(
    """
    import os
    from prometheus_client import generate_latest
    from dsproxy.observe.metrics import Metrics, metrics_registry_for_scrape
    from dsproxy.http.codec.base import RequestHead
    from dsproxy.observe.records import RequestRecord

    m = Metrics()
    head = RequestHead(b"GET", b"/", b"1.1", [(b"Host", b"h")], True, None, False, None, False)
    for _ in range(3):
        m.request_done(RequestRecord(client_ip="10.0.0.1", client_port=1, family="ipv4",
                                     head=head, status=200, bytes_received=0, bytes_sent=5,
                                     start_time=0.0, duration=0.01, upstream_addr=None,
                                     upstream_duration=None, error=None))
    m.connection_opened("ipv4")
    m.pool_idle(2)
    m.flush()  # a worker flushes every second and when it stops
    scraped = metrics_registry_for_scrape(m.registry)
    assert scraped is not m.registry
    print(os.getpid())
    """
)


def test_multiprocess_mode_sums_over_processes(tmp_path: Path) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    pids = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", WORKER_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        pids.append(int(done.stdout.strip()))

    def scraped(name: str, **labels: str) -> float | None:
        return multiprocess_registry(str(tmp_path)).get_sample_value(name, labels)

    assert scraped("dsproxy_requests_total", code="200", family="ipv4", route="default") == 6
    assert scraped("dsproxy_request_duration_seconds_count") == 6
    assert scraped("dsproxy_bytes_sent_total") == 30
    assert scraped("dsproxy_connections_active", family="ipv4") == 2
    assert scraped("dsproxy_upstream_pool_idle") == 4
    mark_process_dead(pids[0], path=str(tmp_path))
    # live gauges forget the dead worker; counters keep its share
    assert scraped("dsproxy_connections_active", family="ipv4") == 1
    assert scraped("dsproxy_upstream_pool_idle") == 2
    assert scraped("dsproxy_requests_total", code="200", family="ipv4", route="default") == 6


def test_batched_histogram_exports_what_observe_would() -> None:
    """Batching changes when values land, never which: same samples as observe()."""
    amounts = [0.0, 0.0004, 0.001, 0.0010001, 0.0025, 0.3, 1.0, 59.9, 60.0, 61.0, 1e9]
    plain_reg, batched_reg = CollectorRegistry(), CollectorRegistry()
    buckets = REQUEST_DURATION_BUCKETS_SECONDS
    plain = Histogram("d", "d", buckets=buckets, registry=plain_reg)
    batched = BatchedHistogram(Histogram("d", "d", buckets=buckets, registry=batched_reg), buckets)
    assert batched.batched  # this client_python keeps per-bucket values we can add to
    for amount in amounts:
        plain.observe(amount)
        batched.observe(amount)
    assert batched_reg.get_sample_value("d_count") == 0  # not flushed yet
    batched.flush()
    batched.flush()  # nothing pending: adds nothing

    def samples(reg: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for metric in reg.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    assert samples(batched_reg) == samples(plain_reg)
    assert samples(plain_reg)[("d_count", "")] == len(amounts)


def test_batched_histogram_falls_back_to_observe() -> None:
    """A client_python without the per-bucket values: every observation goes through."""

    class Opaque:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    opaque = Opaque()
    hist = BatchedHistogram(opaque, (0.1, 1.0))  # type: ignore[arg-type]
    assert not hist.batched
    hist.observe(0.5)
    hist.flush()
    assert opaque.seen == [0.5]
