"""Configuration: TOML file + command-line overrides -> one frozen ``Config``.

Precedence: a flag given on the command line > the file > the dataclass default.

Rules, in one place:

* Every key is parsed by one function ``(key, value) -> typed value`` that raises
  ``ConfigError(key, message)``; the file loader and the flag overrides share them,
  so ``--listen x`` and ``listen = ["x"]`` fail with the same words.
* Unknown sections and keys are errors (a typo must not silently run with a default).
* Durations are seconds (int or float, never bool) or text with units as nginx writes
  them (``"5s"``, ``"100ms"``, ``"1m"``, ``"1h30m"``); sizes and counts are ints.
* ``load_config`` checks each key on its own; ``validate`` checks what needs several
  keys or the machine (an upstream is given, listen addresses do not collide, the
  chosen parser is installed). ``check_file`` = both: what a SIGHUP reload runs.
  ``problems_in_file`` runs the same checks but collects every problem instead of
  stopping at the first: what ``dsproxy check`` prints.

No sockets here: nothing is resolved or bound while loading. Every key, its default
and its meaning are documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort, parse_hostport

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One upstream from ``upstream.url``: ``http://host:port`` (host may be a DNS name)."""

    host: str  # no brackets: "127.0.0.1", "::1", "gateway-server.ezci.svc.cluster.local"
    port: int

    @property
    def authority(self) -> str:
        """``host:port`` as it goes in a Host header (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[HostPort, ...] = (HostPort("::", 16980),)
    ipv6only: bool = False
    workers: int = 1  # "auto" is resolved to os.cpu_count() at load
    parser: Literal["auto", "h11", "httptools"] = "auto"
    max_connections: int = 10000
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 0  # 0 = unlimited
    trusted_proxies: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    servers: tuple[UpstreamServer, ...] = ()  # from upstream.url (string or list); required
    host_header: Literal["preserve", "upstream"] = "preserve"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 64
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 10000
    resolve_interval: float = 30.0
    # Opt-in readiness rule: every readiness_interval seconds each upstream address is
    # connected to; /readyz fails while none answered within readiness_window. 0 = off.
    readiness_interval: float = 0.0
    readiness_window: float = 30.0


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    idle_timeout: float = 3600.0  # 0 = never


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # Next to the proxy's 16980; not 9100, which node_exporter holds on most nodes.
    listen: HostPort | None = HostPort("127.0.0.1", 16981)  # None = "off"


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    delay: float = 5.0
    grace: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access: Literal["combined", "json", "off"] = "combined"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file it was loaded from (for SIGHUP reload)
    # Command-line flags given at start, as apply_overrides keywords: a reload
    # re-reads the file and applies them again, so flags keep beating the file.
    overrides: tuple[tuple[str, str | tuple[str, ...]], ...] = ()


# -- loading ------------------------------------------------------------------------------

ParserName = Literal["auto", "h11", "httptools"]
HostHeaderMode = Literal["preserve", "upstream"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
AccessLogFormat = Literal["combined", "json", "off"]

PARSER_NAMES: tuple[ParserName, ...] = ("auto", "h11", "httptools")
HOST_HEADER_MODES: tuple[HostHeaderMode, ...] = ("preserve", "upstream")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error", "critical")
ACCESS_LOG_FORMATS: tuple[AccessLogFormat, ...] = ("combined", "json", "off")

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


@dataclass(frozen=True, slots=True)
class _Key:
    field: str  # the dataclass field it sets (upstream.url sets ``servers``)
    parse: Callable[[str, object], Any]


# TOML section -> (dataclass, {key: _Key}); the order is docs/configuration.md's.
_SCHEMA: dict[str, tuple[type[Any], dict[str, _Key]]] = {
    "server": (
        ServerConfig,
        {
            "listen": _Key("listen", _parse_listen),
            "ipv6only": _Key("ipv6only", _parse_bool),
            "workers": _Key("workers", _parse_workers),
            "parser": _Key("parser", _parse_parser),
            "max_connections": _Key("max_connections", _parse_positive),
            "header_timeout": _Key("header_timeout", _parse_timeout),
            "body_timeout": _Key("body_timeout", _parse_timeout),
            "keepalive_timeout": _Key("keepalive_timeout", _parse_duration),
            "max_header_bytes": _Key("max_header_bytes", _parse_positive),
            "max_body_bytes": _Key("max_body_bytes", _parse_count),
            "trusted_proxies": _Key("trusted_proxies", _parse_trusted_proxies),
        },
    ),
    "upstream": (
        UpstreamConfig,
        {
            "url": _Key("servers", _parse_upstream_url),
            "host_header": _Key("host_header", _parse_host_header),
            "connect_timeout": _Key("connect_timeout", _parse_timeout),
            "read_timeout": _Key("read_timeout", _parse_timeout),
            "send_timeout": _Key("send_timeout", _parse_timeout),
            "keepalive": _Key("keepalive", _parse_count),
            "keepalive_timeout": _Key("keepalive_timeout", _parse_duration),
            "keepalive_requests": _Key("keepalive_requests", _parse_positive),
            "resolve_interval": _Key("resolve_interval", _parse_duration),
            "readiness_interval": _Key("readiness_interval", _parse_duration),
            "readiness_window": _Key("readiness_window", _parse_timeout),
        },
    ),
    "websocket": (WebSocketConfig, {"idle_timeout": _Key("idle_timeout", _parse_duration)}),
    "admin": (AdminConfig, {"listen": _Key("listen", _parse_admin_listen)}),
    "shutdown": (
        ShutdownConfig,
        {"delay": _Key("delay", _parse_duration), "grace": _Key("grace", _parse_duration)},
    ),
    "log": (
        LogConfig,
        {"level": _Key("level", _parse_log_level), "access": _Key("access", _parse_access_log)},
    ),
}

KNOWN_KEYS: tuple[str, ...] = tuple(
    f"{section}.{key}" for section, (_, keys) in _SCHEMA.items() for key in keys
)


def _unknown(section: str, name: str, known: list[str], what: str) -> ConfigError:
    """Suggest the closest known name (compared without the shared ``section.``)."""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(name, known, n=1)
    hint = (
        f"; did you mean {prefix}{close[0]}?"
        if close
        else f" (known: {', '.join(prefix + k for k in known)})"
    )
    return ConfigError(prefix + name, f"unknown {what}{hint}")


def _build_section(section: str, table: object, problems: list[ConfigError] | None) -> Any:
    cls, keys = _SCHEMA[section]
    if not isinstance(table, dict):
        _report(
            problems, ConfigError(section, f"must be a table ([{section}]), got {_show(table)}")
        )
        return cls()
    values: dict[str, Any] = {}
    for name, value in table.items():
        dotted = f"{section}.{name}"
        spec = keys.get(name)
        try:
            if spec is None:
                raise _unknown(section, name, list(keys), "key")
            values[spec.field] = spec.parse(dotted, value)
        except ConfigError as exc:
            _report(problems, exc)
    return cls(**values)


def _report(problems: list[ConfigError] | None, error: ConfigError) -> None:
    """Collect ``error`` when collecting (``dsproxy check``), else raise it."""
    if problems is None:
        raise error
    problems.append(error)


def config_from_mapping(
    document: Mapping[str, object],
    source: Path | None = None,
    problems: list[ConfigError] | None = None,
) -> Config:
    """Build a ``Config`` from a parsed TOML document (keys checked one by one).

    Raises the first ``ConfigError``; with a ``problems`` list, appends every one to it
    instead and leaves the keys in error at their defaults.
    """
    sections: dict[str, Any] = {}
    for section, table in document.items():
        if section not in _SCHEMA:
            _report(problems, _unknown("", section, list(_SCHEMA), "section"))
            continue
        sections[section] = _build_section(section, table, problems)
    return Config(**sections, source=source)


def load_config(path: Path | None, problems: list[ConfigError] | None = None) -> Config:
    """Read ``path`` (TOML) into a ``Config``; ``None`` gives the defaults (no upstream).

    Raises ``ConfigError`` naming the key, for the first thing that is wrong (or, with
    ``problems``, collects every key's error there). An unreadable file or broken TOML
    always raises. Cross-key rules are ``validate``'s.
    """
    if path is None:
        return Config()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("(file)", f"is not UTF-8 text (byte {exc.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(toml)", str(exc)) from None
    return config_from_mapping(document, source=path, problems=problems)


def _overlaps(a: HostPort, b: HostPort, ipv6only: bool) -> bool:
    """Would binding ``a`` and then ``b`` fail with EADDRINUSE (port 0 never does)?"""
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host:
        return True
    wildcard_v4, wildcard_v6 = "0.0.0.0", "::"
    if a.is_ipv6 == b.is_ipv6:
        return wildcard_v6 in (a.host, b.host) or wildcard_v4 in (a.host, b.host)
    # One of each family: only a dual-stack [::] takes the IPv4 port too.
    return not ipv6only and wildcard_v6 in (a.host, b.host)


def validate(config: Config, problems: list[ConfigError] | None = None) -> None:
    """Rules that need several keys (or the machine) before ``config`` can run.

    Raises ``ConfigError`` naming the key to change (or, with ``problems``, collects
    every one there).
    """
    if not config.upstream.servers:
        _report(
            problems,
            ConfigError("upstream.url", "is required (give it in the file or with --upstream)"),
        )
    listen = config.server.listen
    if not listen:
        _report(
            problems,
            ConfigError("server.listen", "must list at least one address, like [::]:16980"),
        )
    for index, address in enumerate(listen):
        for other in listen[:index]:
            if _overlaps(other, address, config.server.ipv6only):
                _report(
                    problems,
                    ConfigError("server.listen", f"{address} overlaps {other} (same port)"),
                )
    admin = config.admin.listen
    if admin is not None:
        for address in listen:
            if _overlaps(address, admin, config.server.ipv6only):
                _report(
                    problems,
                    ConfigError(
                        "admin.listen", f"{admin} overlaps server.listen {address} (same port)"
                    ),
                )
    upstream = config.upstream
    if upstream.readiness_interval > 0 and upstream.readiness_window < upstream.readiness_interval:
        _report(
            problems,
            ConfigError(
                "upstream.readiness_window",
                f"must be at least upstream.readiness_interval ({upstream.readiness_interval:g}s),"
                f" got {upstream.readiness_window:g}s",
            ),
        )
    if config.server.parser == "httptools" and importlib.util.find_spec("httptools") is None:
        _report(
            problems,
            ConfigError(
                "server.parser",
                'httptools is not installed (pip install "dsproxy[speedups]", or use auto)',
            ),
        )


def apply_overrides(
    config: Config,
    *,
    listen: list[str] | None = None,
    upstream: str | None = None,
    admin: str | None = None,
    workers: str | None = None,
    parser: str | None = None,
    access_log: str | None = None,
    log_level: str | None = None,
) -> Config:
    """``config`` with the command-line flags that were given (not None) taking precedence.

    Values are checked by the same functions as the file's keys, and errors name
    the same keys (``--listen`` -> ``server.listen``).
    """
    server, upstream_config = config.server, config.upstream
    admin_config, log = config.admin, config.log
    if listen is not None:
        server = replace(server, listen=_parse_listen("server.listen", listen))
    if workers is not None:
        # A flag is text; "4" means the TOML integer 4.
        count: object = int(workers) if _DIGITS.fullmatch(workers) else workers
        server = replace(server, workers=_parse_workers("server.workers", count))
    if parser is not None:
        server = replace(server, parser=_parse_parser("server.parser", parser))
    if upstream is not None:
        upstream_config = replace(
            upstream_config, servers=_parse_upstream_url("upstream.url", upstream)
        )
    if admin is not None:
        admin_config = replace(admin_config, listen=_parse_admin_listen("admin.listen", admin))
    if access_log is not None:
        log = replace(log, access=_parse_access_log("log.access", access_log))
    if log_level is not None:
        log = replace(log, level=_parse_log_level("log.level", log_level))
    given: dict[str, str | tuple[str, ...]] = dict(config.overrides)
    for key, value in (
        ("listen", tuple(listen) if listen is not None else None),
        ("upstream", upstream),
        ("admin", admin),
        ("workers", workers),
        ("parser", parser),
        ("access_log", access_log),
        ("log_level", log_level),
    ):
        if value is not None:
            given[key] = value
    return replace(
        config,
        server=server,
        upstream=upstream_config,
        admin=admin_config,
        log=log,
        overrides=tuple(sorted(given.items())),
    )


def reload_config(current: Config) -> Config:
    """What a SIGHUP loads: the file again, with the start-up flags applied on top."""
    if current.source is None:
        raise ConfigError("(file)", "started without -c: there is no file to re-read")
    flags = dict(current.overrides)
    listen = flags.pop("listen", None)
    config = apply_overrides(
        load_config(current.source),
        listen=list(listen) if isinstance(listen, tuple) else None,
        **{k: v for k, v in flags.items() if isinstance(v, str)},
    )
    validate(config)
    return config


def check_file(path: Path) -> Config:
    """``load_config`` + ``validate``: what a SIGHUP reload runs (first error raised)."""
    config = load_config(path)
    validate(config)
    return config


def problems_in_file(path: Path) -> tuple[Config | None, list[ConfigError]]:
    """Every problem in ``path``, for ``dsproxy check``: (the config, []) when it is good.

    A key that is wrong is reported once: the cross-key rules skip keys already
    reported (a bad ``upstream.url`` is not also "required").
    """
    problems: list[ConfigError] = []
    try:
        config = load_config(path, problems)
    except ConfigError as exc:  # unreadable, or not TOML: nothing more to say
        return None, [exc]
    reported = {problem.key for problem in problems}
    cross: list[ConfigError] = []
    validate(config, cross)
    problems.extend(problem for problem in cross if problem.key not in reported)
    return (None if problems else config), problems
