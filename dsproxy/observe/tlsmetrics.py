"""The TLS listeners' metrics, kept by ``Metrics`` (``observe/metrics.py``).

* ``dsproxy_tls_handshake_errors_total{reason}``: handshakes that failed, by one of
  the fixed reasons of ``net.tls.HANDSHAKE_FAILURE_REASONS`` (an unknown one counts as
  ``other``). Every reason exists from the start at 0, so ``rate()`` sees the zero.
* ``dsproxy_tls_certificate_expiry_timestamp_seconds``: the served certificate's
  notAfter, set at start and after every reload. It only appears once a certificate
  is loaded: a proxy without TLS listeners has no such sample (never a 0 that an
  "expires soon" alert would read as 1970). With several workers the scrape shows the
  earliest among live workers (``livemin``), so a worker still on an older
  certificate is not hidden.

Handshake failures are rare next to requests, so these go straight to client_python.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from dsproxy.net.tls import HANDSHAKE_FAILURE_REASONS

log = logging.getLogger("dsproxy.observe.metrics")

OTHER = "other"


class TlsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.handshake_errors_total = Counter(
            "dsproxy_tls_handshake_errors_total",
            "TLS handshakes that failed, by reason "
            "(version, cipher, certificate, http, eof, timeout, other).",
            ["reason"],
            registry=registry,
        )
        self._reasons = {
            r: self.handshake_errors_total.labels(r) for r in HANDSHAKE_FAILURE_REASONS
        }
        self.certificate_expiry: Gauge | None = None  # made when a certificate is loaded

    def handshake_failed(self, reason: str) -> None:
        try:
            self._reasons.get(reason, self._reasons[OTHER]).inc()
        except Exception as exc:  # an observer never raises
            log.warning("TLS handshake metric update failed: %r", exc)

    def certificate_loaded(self, not_after: float) -> None:
        try:
            gauge = self.certificate_expiry
            if gauge is None:
                gauge = self.certificate_expiry = Gauge(
                    "dsproxy_tls_certificate_expiry_timestamp_seconds",
                    "When the served TLS certificate expires (its notAfter, Unix time).",
                    multiprocess_mode="livemin",
                    registry=self.registry,
                )
            gauge.set(not_after)
        except Exception as exc:
            log.warning("TLS certificate metric update failed: %r", exc)
