"""Typed value parsers shared by config keys and command-line flags.

Each is ``(key, value) -> typed value`` and raises ``ConfigError(key, message)``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dsproxy.config.model import (
    ACCESS_LOG_FORMATS,
    HOST_HEADER_MODES,
    LOG_LEVELS,
    PARSER_NAMES,
    TLS_VERSIONS,
    AccessLogFormat,
    HostHeaderMode,
    IPNetwork,
    LogLevel,
    ParserName,
    TlsVersion,
    UpstreamServer,
)
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort, parse_hostport

UPSTREAM_DEFAULT_PORT = 80  # RFC 9110 §4.2.1: the default port of the http scheme
MAX_HOSTNAME_CHARS = 253  # RFC 1035 §2.3.4, without the trailing dot

_S = TypeVar("_S", bound=str)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # "_" for SRV-style k8s names
_DIGITS = re.compile(r"[0-9]+")


def _show(value: object) -> str:
    """``value`` as a user wrote it in TOML (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _choice(key: str, value: object, choices: tuple[_S, ...]) -> _S:
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigError(key, f"must be one of {', '.join(choices)}, got {_show(value)}")


def _parse_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_show(value)}")
    return value


# nginx's time units (ngx_parse_time), without the month and year ones nobody means.
_DURATION_UNITS_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)")
_DURATION = re.compile(
    r"\s*(?:(?:[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d)\s*)+|[0-9]+(?:\.[0-9]+)?\s*)"
)


def duration_seconds(text: str) -> float | None:
    """``"5s"``, ``"100ms"``, ``"1m"``, ``"1h30m"`` (or a bare ``"5"``) in seconds; else None."""
    if not _DURATION.fullmatch(text):
        return None
    parts = _DURATION_PART.findall(text)
    if not parts:
        return float(text)
    return sum(float(number) * _DURATION_UNITS_SECONDS[unit] for number, unit in parts)


def _parse_duration(key: str, value: object) -> float:
    """Seconds >= 0: an int or float (bool is an int in Python, not here), or a string
    with units as nginx writes them: "5s", "100ms", "1m", "1h30m"."""
    seconds = duration_seconds(value) if isinstance(value, str) else None
    if seconds is not None:
        return seconds
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(
            key,
            f'must be a number of seconds >= 0 or a duration like "5s", "100ms", "1m", '
            f"got {_show(value)}",
        )
    return float(value)


def _parse_timeout(key: str, value: object) -> float:
    """A deadline with no "0 = never" meaning: 0 would fail every request at once."""
    seconds = _parse_duration(key, value)
    if seconds == 0:
        raise ConfigError(key, "must be more than 0 seconds (0 would time out at once), got 0")
    return seconds


def _int_at_least(minimum: int) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(key, f"must be an integer >= {minimum}, got {_show(value)}")
        return value

    return parse


_parse_count = _int_at_least(0)
_parse_positive = _int_at_least(1)


def _parse_rate(key: str, value: object) -> float:
    """Requests per second >= 0 (0 = off); fractions allowed ("one every 2 s" = 0.5)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(key, f"must be a number of requests per second >= 0, got {_show(value)}")
    return float(value)


def _parse_frame_rate(key: str, value: object) -> float:
    """Frames (or stream resets) per second > 0, fractions allowed."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(key, f"must be a number per second > 0, got {_show(value)}")
    return float(value)


# RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE is at most 2^31-1; below the RFC's
# default of 65535 an upload would crawl.
MIN_WINDOW_BYTES = 65535
MAX_WINDOW_BYTES = 2**31 - 1


def _parse_window(key: str, value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_WINDOW_BYTES <= value <= MAX_WINDOW_BYTES
    ):
        bounds = f"from {MIN_WINDOW_BYTES} to {MAX_WINDOW_BYTES}"
        raise ConfigError(key, f"must be an integer {bounds}, got {_show(value)}")
    return value


def _parse_ipv6_prefix(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ConfigError(key, f"must be an IPv6 prefix length from 1 to 128, got {_show(value)}")
    return value


def _parse_workers(key: str, value: object) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f'must be an integer >= 1 or "auto", got {_show(value)}')
    return value


def _parse_parser(key: str, value: object) -> ParserName:
    return _choice(key, value, PARSER_NAMES)


def _parse_host_header(key: str, value: object) -> HostHeaderMode:
    return _choice(key, value, HOST_HEADER_MODES)


def _parse_log_level(key: str, value: object) -> LogLevel:
    # Case-insensitive: `--log-level DEBUG` is what people type.
    return _choice(key, value.lower() if isinstance(value, str) else value, LOG_LEVELS)


def _parse_access_log(key: str, value: object) -> AccessLogFormat:
    return _choice(key, value, ACCESS_LOG_FORMATS)


def _parse_tls_version(key: str, value: object) -> TlsVersion:
    # min_version = 1.2 (a TOML float) is what people type; it means "1.2".
    if isinstance(value, float) and not isinstance(value, bool):
        value = f"{value:g}"
    return _choice(key, value, TLS_VERSIONS)


def _parse_path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a file path, got {_show(value)}")
    return Path(value.strip())


def bracket_hint(text: str) -> str | None:
    """For an unbracketed IPv6 listen address (``::16980``), the form meant: ``[::]:16980``."""
    text = text.strip()
    if text.startswith("[") or text.count(":") < 2:
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    for candidate in (host, host + ":"):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return f"[{candidate}]:{port}"
    return None


def parse_listen_address(text: str) -> HostPort:
    """``parse_hostport`` with a usable suggestion for an unbracketed IPv6 address."""
    try:
        return parse_hostport(text)
    except ValueError as exc:
        hint = bracket_hint(text)
        if hint is not None:
            raise ValueError(
                f"{text.strip()!r}: IPv6 addresses must be written in brackets, like {hint}"
            ) from None
        raise ValueError(str(exc)) from None


def _parse_address(key: str, value: object) -> HostPort:
    """``[v6addr]:port`` or ``v4addr:port``: literal addresses only, port 0-65535."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be an address like [::]:16980, got {_show(value)}")
    try:
        return parse_listen_address(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _string_list(key: str, value: object, what: str) -> list[str]:
    """A TOML array of strings; a lone string counts as a list of one."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(key, f"must be a {what} or a list of them, got {_show(value)}")
    return items


def _parse_listen(key: str, value: object) -> tuple[HostPort, ...]:
    addresses = tuple(
        _parse_address(key, item) for item in _string_list(key, value, "listen address")
    )
    if not addresses:
        raise ConfigError(key, "must list at least one address, like [::]:16980")
    _refuse_duplicates(key, [str(address) for address in addresses])
    return addresses


def _parse_listen_list(key: str, value: object) -> tuple[HostPort, ...]:
    """Like ``_parse_listen``, but an empty list is allowed (no listener of this kind)."""
    if value == []:
        return ()
    return _parse_listen(key, value)


def _parse_trusted_proxies(key: str, value: object) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in _string_list(key, value, "CIDR"):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                key, f"{item!r} is not an IP network (like 10.0.0.0/8 or fd00::/8)"
            ) from None
    return tuple(networks)


def _parse_admin_listen(key: str, value: object) -> HostPort | None:
    if value == "off":
        return None
    if not isinstance(value, str):
        raise ConfigError(
            key, f'must be an address like 127.0.0.1:16981 or "off", got {_show(value)}'
        )
    return _parse_address(key, value)


def _check_hostname(key: str, url: str, host: str) -> None:
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if all(_DIGITS.fullmatch(label) for label in labels):
        # All-numeric: the user meant an IPv4 address, so it must be one.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise ConfigError(key, f"{url!r}: {host!r} is not an IPv4 address") from None
        return
    if len(name) > MAX_HOSTNAME_CHARS or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(key, f"{url!r}: {host!r} is not a valid host name")


def _parse_upstream_server(key: str, value: object) -> UpstreamServer:
    """``http://host[:port][/]``; host is an IPv4 address, ``[IPv6]`` or a DNS name."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a URL like http://host:port, got {_show(value)}")
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        raise ConfigError(key, f"must be a URL like http://host:port, got {value!r}")
    if scheme.lower() != "http":
        raise ConfigError(
            key, f"{value!r}: only http:// upstreams are supported, not {scheme.lower()}://"
        )
    authority, _, path = rest.partition("/")
    if path:
        raise ConfigError(key, f"{value!r}: a path is not supported, give only http://host:port")
    if any(mark in authority for mark in "@?#"):
        raise ConfigError(
            key, f"{value!r}: user info, query and fragment are not supported in an upstream URL"
        )
    if not authority:
        raise ConfigError(key, f"{value!r}: no host")
    if authority.endswith("]") or not (authority.startswith("[") or ":" in authority):
        authority = f"{authority}:{UPSTREAM_DEFAULT_PORT}"
    try:
        address = parse_hostport(authority, allow_names=True)
    except ValueError as exc:
        raise ConfigError(key, f"{value!r}: {exc}") from None
    if address.port == 0:
        raise ConfigError(key, f"{value!r}: port 0 cannot be connected to")
    if not address.is_ipv6:
        _check_hostname(key, value, address.host)
    return UpstreamServer(address.host, address.port)


def _parse_upstream_url(key: str, value: object) -> tuple[UpstreamServer, ...]:
    servers = tuple(_parse_upstream_server(key, item) for item in _string_list(key, value, "URL"))
    if not servers:
        raise ConfigError(key, "must list at least one URL, like http://127.0.0.1:18080")
    _refuse_duplicates(key, [server.url for server in servers])
    return servers


def _refuse_duplicates(key: str, items: list[str]) -> None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ConfigError(key, f"lists {item} twice")
        seen.add(item)
