"""Pure tests of dsproxy.proxy.limits: client keys, connection counts, token buckets."""

from __future__ import annotations

import pytest

from dsproxy.proxy.limits import SWEEP_EVERY_REQUESTS, ClientLimits, client_key


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", 64, "2001:db8:1:2::/64"),  # same /64: same client
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1/128"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("fe80::1%eth0", 64, "fe80::/64"),
    ],
)
def test_client_key(ip: str, prefix: int, key: str) -> None:
    assert client_key(ip, prefix) == key


def limits(**settings: int | float) -> ClientLimits:
    base: dict[str, int | float] = dict(max_connections=0, rate=0.0, burst=0, ipv6_prefix=64)
    base.update(settings)
    return ClientLimits(**base)  # type: ignore[arg-type]


def test_connections_counted_per_client_and_released() -> None:
    lim = limits(max_connections=2)
    assert lim.active
    a, b = lim.key("2001:db8::1"), lim.key("2001:db8::2")  # one /64
    assert a == b
    assert lim.connection_opened(a)
    assert lim.connection_opened(b)
    assert not lim.connection_opened(a)  # the third from the same /64
    assert lim.connection_opened("192.0.2.1")  # another client is not affected
    lim.connection_closed(a)
    assert lim.connection_opened(b)
    assert lim.open_connections(a) == 2


def test_no_limit_counts_nothing_away() -> None:
    lim = limits()
    assert not lim.active
    assert all(lim.allow_request("k", t * 0.001) for t in range(1000))
    assert lim.tracked_clients == 0


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    lim = limits(rate=2.0, burst=3)
    now = 100.0
    assert [lim.allow_request("c", now) for _ in range(4)] == [True, True, True, False]
    assert not lim.allow_request("c", now + 0.4)  # 0.8 tokens
    assert lim.allow_request("c", now + 0.5 + 0.01)  # 1 token again after 0.5 s
    assert lim.allow_request("other", now)  # buckets are per client


def test_burst_zero_means_one_seconds_worth() -> None:
    lim = limits(rate=5.0, burst=0)
    assert sum(lim.allow_request("c", 1.0) for _ in range(10)) == 5


def test_fractional_rate() -> None:
    lim = limits(rate=0.5, burst=1)
    assert lim.allow_request("c", 0.0)
    assert not lim.allow_request("c", 1.0)
    assert lim.allow_request("c", 2.01)


def test_quiet_clients_are_forgotten() -> None:
    lim = limits(rate=10.0, burst=10)
    for i in range(SWEEP_EVERY_REQUESTS - 1):
        lim.allow_request(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert lim.tracked_clients == SWEEP_EVERY_REQUESTS - 1
    lim.allow_request("busy", 5.0)  # the sweep runs: everyone else refilled long ago
    assert lim.tracked_clients == 1


def test_reconfigure_keeps_open_counts() -> None:
    lim = limits(max_connections=1)
    assert lim.connection_opened("k")
    lim.configure(max_connections=5, rate=1.0, burst=1, ipv6_prefix=64)
    assert lim.open_connections("k") == 1
    lim.configure(max_connections=1, rate=0.0, burst=0, ipv6_prefix=64)
    assert not lim.connection_opened("k")
