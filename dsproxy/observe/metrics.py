"""Prometheus metrics: an ``Observer`` that counts what the I/O layer reports.

Every metric lives in a registry owned by ``Metrics`` (never the global one),
so tests read values with ``registry.get_sample_value``.

Hot path: a request costs a few plain additions. client_python takes a lock
on every ``inc``/``set``/``observe``, so the per-request counters (requests by
code and family, body bytes, pooled or fresh upstream connections), the
request duration histogram (``BatchedHistogram``) and the pool gauge are kept
as plain numbers and moved into the client_python objects by ``flush()``.
Every collection of the registry flushes first (a collector registered before
the metrics does it), so a scrape of this process is exact; the worker also
flushes every second, which is what the supervisor's multiprocess scrape sees
(at most a second behind). Labelled children are resolved once and kept in
dicts. Label values are bounded: ``code`` is the status as a string (``"0"``
when nothing could be sent, ``"other"`` outside 100..599), ``family`` is
ipv4 | ipv6, and an unknown error kind is counted as ``"other"``.

Several workers (``server.workers > 1``): the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh, empty directory in the environment of
every worker *before it starts*. client_python reads that variable when it is
first imported and from then on keeps every value in per-process mmap files in
that directory. The supervisor (which serves the admin listener) scrapes a
registry holding a ``MultiProcessCollector`` over the directory, so one scrape
sees the whole process tree: counters and histograms are summed over all
processes that ever lived (dead workers included, so totals never go
backwards), and the ``*_active`` / pool gauges use ``livesum``, the sum over
live processes. When a worker exits, the supervisor calls
``mark_process_dead(pid)`` so its live gauge files are dropped.
"""

from __future__ import annotations

import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric

from dsproxy.net.addr import Family
from dsproxy.observe.records import (
    CLIENT_ERROR_KINDS,
    UPSTREAM_ERROR_KINDS,
    RequestRecord,
    TunnelRecord,
)
from dsproxy.observe.tlsmetrics import TlsMetrics

log = logging.getLogger("dsproxy.observe.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A proxied request takes from well under a millisecond (loopback, pooled) to
# the upstream read timeout (60 s by default).
REQUEST_DURATION_BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# TCP connect (+ Happy Eyeballs) to the upstream: sub-millisecond in a cluster,
# bounded by upstream.connect_timeout (5 s by default).
CONNECT_DURATION_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# WebSocket sessions last from a second to hours (websocket.idle_timeout is 1 h).
WEBSOCKET_DURATION_BUCKETS_SECONDS = (
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip

FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
OTHER = "other"

_Child = TypeVar("_Child", Counter, Gauge)


def multiprocess_enabled() -> bool:
    """True when client_python runs in multiprocess mode (the env var is set)."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that collects the values of every process writing to ``path``.

    ``path`` defaults to ``$PROMETHEUS_MULTIPROC_DIR``; raises ValueError when
    neither names a directory.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def metrics_registry_for_scrape(registry: CollectorRegistry) -> CollectorRegistry:
    """The registry the admin listener should serve.

    In multiprocess mode a process's own registry only holds its own values,
    so scrape the shared directory instead; otherwise serve ``registry``.
    """
    if multiprocess_enabled():
        return multiprocess_registry()
    return registry


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Forget the live gauges of an exited worker (multiprocess mode only)."""
    from prometheus_client import multiprocess

    path = path or os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return
    multiprocess.mark_process_dead(pid, path=path)  # type: ignore[no-untyped-call]


def _code_label(status: int) -> str:
    if 100 <= status <= 599 or status == 0:
        return str(status)
    return OTHER


def _family_label(family: str) -> str:
    return family if family in FAMILIES else OTHER


class BatchedHistogram:
    """Observations counted per bucket in plain numbers, added to a Histogram by ``flush``.

    client_python's ``observe`` takes a lock twice (sum and bucket); a request
    should not pay that. client_python has no public call that adds many
    observations at once, so ``flush`` adds the counts to the values its
    Histogram keeps per bucket (``_buckets``, not cumulative) and for the sum
    (``_sum``), in single and multiprocess mode alike. Should a client_python
    release keep them elsewhere, every observation goes straight to
    ``observe`` instead: slower, never wrong.
    """

    def __init__(self, histogram: Histogram, buckets: tuple[float, ...]) -> None:
        self.histogram = histogram
        bounds = [*buckets] if buckets[-1] == math.inf else [*buckets, math.inf]
        self._bounds = bounds
        values = getattr(histogram, "_buckets", None)
        total = getattr(histogram, "_sum", None)
        self.batched = (
            isinstance(values, list)
            and len(values) == len(bounds)
            and all(hasattr(v, "inc") for v in values)
            and hasattr(total, "inc")
        )
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._pending = 0

    def observe(self, amount: float) -> None:
        if not self.batched:
            self.histogram.observe(amount)
            return
        # The first bucket whose upper bound is >= amount, as client_python picks it.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending += 1

    def flush(self) -> None:
        if not self._pending:
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._pending = 0
        self.histogram._sum.inc(total)
        buckets = self.histogram._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)


class _FlushFirst:
    """A collector without metrics of its own: collecting it flushes ``Metrics``.

    Registered before every metric, so the registry's ``collect()`` (scrapes,
    ``get_sample_value``) runs it first and then reads up-to-date values.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self._metrics.flush()
        return []


class Metrics:
    """The Prometheus observer. Never raises: a failure is logged once and dropped."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        reg.register(_FlushFirst(self))
        multiprocess = multiprocess_enabled()
        if not multiprocess and registry is None:
            # process_* (CPU, RSS, open fds); per-pid series make no sense when summed.
            ProcessCollector(registry=reg)

        self.requests_total = Counter(
            "dsproxy_requests_total",
            "Requests answered, by status sent to the client, client address family and route.",
            ["code", "family", "route"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "dsproxy_request_duration_seconds",
            "Time from a complete request head to the end of the response.",
            buckets=REQUEST_DURATION_BUCKETS_SECONDS,
            registry=reg,
        )
        self.connections_active = Gauge(
            "dsproxy_connections_active",
            "Open client connections (WebSocket tunnels included).",
            ["family"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.connections_total = Counter(
            "dsproxy_connections_total",
            "Client connections accepted.",
            ["family"],
            registry=reg,
        )
        self.websocket_sessions_active = Gauge(
            "dsproxy_websocket_sessions_active",
            "WebSocket tunnels currently open.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.websocket_sessions_total = Counter(
            "dsproxy_websocket_sessions_total",
            "WebSocket tunnels opened (101 Switching Protocols forwarded).",
            registry=reg,
        )
        self.websocket_duration = Histogram(
            "dsproxy_websocket_session_duration_seconds",
            "Lifetime of finished WebSocket tunnels.",
            buckets=WEBSOCKET_DURATION_BUCKETS_SECONDS,
            registry=reg,
        )
        self.upstream_errors_total = Counter(
            "dsproxy_upstream_errors_total",
            "Upstream failures, by kind (connect, timeout, reset, protocol).",
            ["kind"],
            registry=reg,
        )
        self.client_errors_total = Counter(
            "dsproxy_client_errors_total",
            "Requests refused because of the client, by kind.",
            ["kind"],
            registry=reg,
        )
        self.upstream_connect_duration = Histogram(
            "dsproxy_upstream_connect_duration_seconds",
            "Time to open a new upstream connection.",
            buckets=CONNECT_DURATION_BUCKETS_SECONDS,
            registry=reg,
        )
        self.upstream_requests_total = Counter(
            "dsproxy_upstream_requests_total",
            "Upstream connections lent to a request; reused=true when it came from the pool.",
            ["reused"],
            registry=reg,
        )
        self.upstream_pool_idle = Gauge(
            "dsproxy_upstream_pool_idle",
            "Idle keep-alive upstream connections in the pool.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.bytes_received_total = Counter(
            "dsproxy_bytes_received_total",
            "Body bytes read from clients (request bodies and WebSocket traffic).",
            registry=reg,
        )
        self.bytes_sent_total = Counter(
            "dsproxy_bytes_sent_total",
            "Body bytes written to clients (response bodies and WebSocket traffic).",
            registry=reg,
        )

        # Pre-resolved children. Every bounded label value exists from the
        # start (so rate() sees the zero); request codes are added on first use.
        self._requests: dict[tuple[int, str, str], Counter] = {}
        self._conn_active: dict[str, Gauge] = {
            f: self.connections_active.labels(f) for f in FAMILIES
        }
        self._conn_total: dict[str, Counter] = {
            f: self.connections_total.labels(f) for f in FAMILIES
        }
        self._upstream_errors = {
            k: self.upstream_errors_total.labels(k) for k in UPSTREAM_ERROR_KINDS
        }
        self._client_errors = {k: self.client_errors_total.labels(k) for k in CLIENT_ERROR_KINDS}
        self._reused = self.upstream_requests_total.labels("true")
        self._fresh = self.upstream_requests_total.labels("false")
        self._failed = False
        # Not yet flushed (see the module docstring).
        self._pending_requests: dict[tuple[int, str, str], int] = {}
        self._pending_bytes_received = 0
        self._pending_bytes_sent = 0
        self._pending_reused = 0
        self._pending_fresh = 0
        self._pending_pool_idle: int | None = None
        self._durations = BatchedHistogram(self.request_duration, REQUEST_DURATION_BUCKETS_SECONDS)
        self.tls = TlsMetrics(reg)

    # -- helpers ---------------------------------------------------------------
    def _fault(self, exc: Exception) -> None:
        if not self._failed:  # once: an observer bug must not flood the log
            self._failed = True
            log.warning("metrics update failed (further failures not logged): %r", exc)

    @staticmethod
    def _resolve(cache: dict[str, _Child], key: str, labelled: Callable[[str], _Child]) -> _Child:
        child = cache.get(key)
        if child is None:
            child = cache[key] = labelled(OTHER)
        return child

    # -- Observer --------------------------------------------------------------
    def connection_opened(self, family: Family) -> None:
        try:
            self._resolve(self._conn_total, family, self.connections_total.labels).inc()
            self._resolve(self._conn_active, family, self.connections_active.labels).inc()
        except Exception as exc:
            self._fault(exc)

    def connection_closed(self, family: Family) -> None:
        try:
            self._resolve(self._conn_active, family, self.connections_active.labels).dec()
        except Exception as exc:
            self._fault(exc)

    def request_done(self, record: RequestRecord) -> None:
        try:
            key = (record.status, record.family, record.route)
            pending = self._pending_requests
            pending[key] = pending.get(key, 0) + 1
            self._durations.observe(record.duration)
            if record.bytes_received > 0:
                self._pending_bytes_received += record.bytes_received
            if record.bytes_sent > 0:
                self._pending_bytes_sent += record.bytes_sent
        except Exception as exc:
            self._fault(exc)

    def flush(self) -> None:
        """Move the hot-path counts into the client_python metrics."""
        try:
            self._durations.flush()
            pending = self._pending_requests
            if pending:
                self._pending_requests = {}
                for key, count in pending.items():
                    child = self._requests.get(key)
                    if child is None:
                        status, family, route = key
                        child = self._requests[key] = self.requests_total.labels(
                            _code_label(status), _family_label(family), route
                        )
                    child.inc(count)
            if self._pending_bytes_received:
                count, self._pending_bytes_received = self._pending_bytes_received, 0
                self.bytes_received_total.inc(count)
            if self._pending_bytes_sent:
                count, self._pending_bytes_sent = self._pending_bytes_sent, 0
                self.bytes_sent_total.inc(count)
            if self._pending_reused:
                count, self._pending_reused = self._pending_reused, 0
                self._reused.inc(count)
            if self._pending_fresh:
                count, self._pending_fresh = self._pending_fresh, 0
                self._fresh.inc(count)
            if self._pending_pool_idle is not None:
                count, self._pending_pool_idle = self._pending_pool_idle, None
                self.upstream_pool_idle.set(count)
        except Exception as exc:
            self._fault(exc)

    def client_error(self, kind: str) -> None:
        try:
            self._resolve(self._client_errors, kind, self.client_errors_total.labels).inc()
        except Exception as exc:
            self._fault(exc)

    def upstream_error(self, kind: str) -> None:
        try:
            self._resolve(self._upstream_errors, kind, self.upstream_errors_total.labels).inc()
        except Exception as exc:
            self._fault(exc)

    def upstream_connected(self, seconds: float) -> None:
        try:
            self.upstream_connect_duration.observe(seconds)
        except Exception as exc:
            self._fault(exc)

    def upstream_acquired(self, reused: bool) -> None:
        if reused:
            self._pending_reused += 1
        else:
            self._pending_fresh += 1

    def pool_idle(self, count: int) -> None:
        self._pending_pool_idle = count

    def websocket_opened(self) -> None:
        try:
            self.websocket_sessions_active.inc()
            self.websocket_sessions_total.inc()
        except Exception as exc:
            self._fault(exc)

    def websocket_closed(self, record: TunnelRecord) -> None:
        try:
            self.websocket_sessions_active.dec()
            self.websocket_duration.observe(record.duration)
            if record.bytes_from_client > 0:
                self.bytes_received_total.inc(record.bytes_from_client)
            if record.bytes_to_client > 0:
                self.bytes_sent_total.inc(record.bytes_to_client)
        except Exception as exc:
            self._fault(exc)

    def tls_handshake_failed(self, reason: str) -> None:
        self.tls.handshake_failed(reason)  # never raises, as every method here

    def tls_certificate_loaded(self, not_after: float) -> None:
        self.tls.certificate_loaded(not_after)
