"""Resolver: periodic re-resolution, last-good cache on failure, RFC 8305 ordering.

No DNS and no sockets: the lookup is a fake, and the resolver's clock is a
fake too (only the ``time`` name inside dsproxy.net.resolver is replaced).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import pytest

import dsproxy.net.resolver as resolver_module
from dsproxy.config import UpstreamServer
from dsproxy.net.resolver import Resolver, interleave_families

V4 = socket.AF_INET
V6 = socket.AF_INET6
GATEWAY = UpstreamServer("gateway.test", 18080)


@dataclass
class FakeClock:
    now: float = 1000.0

    def monotonic(self) -> float:
        return self.now


@dataclass
class FakeDns:
    """Answers from ``answers[host]``; an OSError there is raised instead."""

    answers: dict[str, list[tuple[int, str]] | OSError] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def lookup(self, host: str, port: int) -> list[tuple[int, str]]:
        self.calls.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, OSError):
            raise answer
        return list(answer)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(resolver_module, "time", fake)
    return fake


def resolve(resolver: Resolver, server: UpstreamServer = GATEWAY) -> list[str]:
    return asyncio.run(resolver.resolve(server))


def test_cached_until_the_interval_then_resolved_again(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": [(V4, "10.0.0.1")]})
    resolver = Resolver(30.0, lookup=dns.lookup)
    assert resolve(resolver) == ["10.0.0.1"]
    dns.answers["gateway.test"] = [(V4, "10.0.0.2")]
    clock.now += 29.9
    assert resolve(resolver) == ["10.0.0.1"]
    assert len(dns.calls) == 1
    clock.now += 0.2
    assert resolve(resolver) == ["10.0.0.2"]
    assert dns.calls == [("gateway.test", 18080)] * 2


def test_interval_zero_resolves_once_like_nginx(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": [(V4, "10.0.0.1")]})
    resolver = Resolver(0.0, lookup=dns.lookup)
    assert resolve(resolver) == ["10.0.0.1"]
    dns.answers["gateway.test"] = [(V4, "10.0.0.2")]
    clock.now += 3600
    assert resolve(resolver) == ["10.0.0.1"]
    assert len(dns.calls) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "2001:db8::7"])
def test_ip_literals_are_never_looked_up(clock: FakeClock, host: str) -> None:
    dns = FakeDns()
    resolver = Resolver(30.0, lookup=dns.lookup)
    assert resolve(resolver, UpstreamServer(host, 80)) == [host]
    assert dns.calls == []


def test_failure_keeps_last_good_addresses_and_logs_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dns = FakeDns({"gateway.test": [(V6, "fd00::1"), (V4, "10.0.0.1")]})
    resolver = Resolver(1.0, lookup=dns.lookup)
    assert resolve(resolver) == ["fd00::1", "10.0.0.1"]
    dns.answers["gateway.test"] = OSError("Temporary failure in name resolution")
    caplog.set_level(logging.INFO, logger="dsproxy.net.resolver")
    for _ in range(5):
        clock.now += 1.5
        assert resolve(resolver) == ["fd00::1", "10.0.0.1"]
    assert len(dns.calls) == 6  # it kept trying
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "gateway.test" in failures[0].getMessage()
    assert "Temporary failure" in failures[0].getMessage()

    # Recovery is logged, and a later outage is logged again.
    dns.answers["gateway.test"] = [(V4, "10.0.0.3")]
    clock.now += 1.5
    assert resolve(resolver) == ["10.0.0.3"]
    assert any("10.0.0.3" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    dns.answers["gateway.test"] = OSError("SERVFAIL")
    clock.now += 1.5
    assert resolve(resolver) == ["10.0.0.3"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_empty_answer_counts_as_failure(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": [(V4, "10.0.0.1")]})
    resolver = Resolver(1.0, lookup=dns.lookup)
    resolve(resolver)
    dns.answers["gateway.test"] = []
    clock.now += 2
    assert resolve(resolver) == ["10.0.0.1"]


def test_failure_without_any_good_answer_raises(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": OSError("NXDOMAIN")})
    resolver = Resolver(1.0, lookup=dns.lookup)
    with pytest.raises(OSError, match=r"cannot resolve gateway\.test: NXDOMAIN"):
        resolve(resolver)


def test_failing_name_is_retried_sooner_than_a_long_interval(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": [(V4, "10.0.0.1")]})
    resolver = Resolver(300.0, lookup=dns.lookup)
    resolve(resolver)
    dns.answers["gateway.test"] = OSError("timeout")
    clock.now += 301
    resolve(resolver)
    dns.answers["gateway.test"] = [(V4, "10.0.0.9")]
    clock.now += 5.1  # failures are retried after at most 5 s, not after the interval
    assert resolve(resolver) == ["10.0.0.9"]


def test_names_and_ports_are_cached_separately(clock: FakeClock) -> None:
    dns = FakeDns({"a.test": [(V4, "10.0.0.1")], "b.test": [(V4, "10.0.0.2")]})
    resolver = Resolver(30.0, lookup=dns.lookup)
    assert resolve(resolver, UpstreamServer("a.test", 1)) == ["10.0.0.1"]
    assert resolve(resolver, UpstreamServer("b.test", 1)) == ["10.0.0.2"]
    assert resolve(resolver, UpstreamServer("a.test", 2)) == ["10.0.0.1"]
    assert len(dns.calls) == 3


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([], []),
        ([(V4, "10.0.0.1")], ["10.0.0.1"]),
        # RFC 8305 §4: alternate families, starting with the first answer's family.
        (
            [(V6, "fd00::1"), (V6, "fd00::2"), (V4, "10.0.0.1"), (V4, "10.0.0.2")],
            ["fd00::1", "10.0.0.1", "fd00::2", "10.0.0.2"],
        ),
        (
            [(V4, "10.0.0.1"), (V4, "10.0.0.2"), (V6, "fd00::1")],
            ["10.0.0.1", "fd00::1", "10.0.0.2"],
        ),
        (
            [(V6, "fd00::1"), (V4, "10.0.0.1"), (V4, "10.0.0.2"), (V4, "10.0.0.3")],
            ["fd00::1", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
        ),
        # getaddrinfo repeats an address (once per socket type / protocol): keep the first.
        (
            [(V4, "10.0.0.1"), (V4, "10.0.0.1"), (V6, "fd00::1"), (V6, "fd00::1")],
            ["10.0.0.1", "fd00::1"],
        ),
    ],
)
def test_interleave_families(answer: list[tuple[int, str]], expected: list[str]) -> None:
    assert interleave_families(answer) == expected


def test_resolve_returns_interleaved_order(clock: FakeClock) -> None:
    dns = FakeDns({"gateway.test": [(V6, "fd00::1"), (V6, "fd00::2"), (V4, "10.0.0.1")]})
    resolver = Resolver(30.0, lookup=dns.lookup)
    assert resolve(resolver) == ["fd00::1", "10.0.0.1", "fd00::2"]
