"""Loading a config file, checking it, applying flags over it, reloading it."""

from __future__ import annotations

import difflib
import importlib.util
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dsproxy.config.model import (
    AdminConfig,
    Config,
    Http2Config,
    LogConfig,
    ServerConfig,
    ShutdownConfig,
    TlsConfig,
    UpstreamConfig,
    WebSocketConfig,
)
from dsproxy.config.routes import ROUTE_KEYS, build_routes
from dsproxy.config.values import (
    _DIGITS,
    _parse_access_log,
    _parse_admin_listen,
    _parse_bool,
    _parse_count,
    _parse_duration,
    _parse_host_header,
    _parse_ipv6_prefix,
    _parse_listen,
    _parse_listen_list,
    _parse_log_level,
    _parse_parser,
    _parse_path,
    _parse_positive,
    _parse_rate,
    _parse_timeout,
    _parse_tls_version,
    _parse_trusted_proxies,
    _parse_upstream_url,
    _parse_workers,
    _show,
)
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort


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
            "max_connections_per_ip": _Key("max_connections_per_ip", _parse_count),
            "rate_limit": _Key("rate_limit", _parse_rate),
            "rate_limit_burst": _Key("rate_limit_burst", _parse_count),
            "ipv6_client_prefix": _Key("ipv6_client_prefix", _parse_ipv6_prefix),
            "tls_listen": _Key("tls_listen", _parse_listen_list),
            "h2c": _Key("h2c", _parse_bool),
            "proxy_protocol": _Key("proxy_protocol", _parse_bool),
            "proxy_protocol_from": _Key("proxy_protocol_from", _parse_trusted_proxies),
            "forwarded": _Key("forwarded", _parse_bool),
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
    "tls": (
        TlsConfig,
        {
            "cert": _Key("cert", _parse_path),
            "key": _Key("key", _parse_path),
            "min_version": _Key("min_version", _parse_tls_version),
        },
    ),
    "http2": (
        Http2Config,
        {
            "max_concurrent_streams": _Key("max_concurrent_streams", _parse_positive),
            "max_header_list_bytes": _Key("max_header_list_bytes", _parse_positive),
            "websocket": _Key("websocket", _parse_bool),
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
# The keys of a [[routes]] table (config/routes.py), as "routes.key".
KNOWN_ROUTE_KEYS: tuple[str, ...] = tuple(f"routes.{key}" for key in ROUTE_KEYS)


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
        if section == "routes":
            continue  # after [upstream] and [websocket], whose values routes inherit
        if section not in _SCHEMA:
            _report(problems, _unknown("", section, [*_SCHEMA, "routes"], "section"))
            continue
        sections[section] = _build_section(section, table, problems)
    config = Config(**sections, source=source)
    if "routes" in document:
        routes = build_routes(
            document["routes"],
            config.upstream,
            config.websocket.idle_timeout,
            lambda error: _report(problems, error),
        )
        config = replace(config, routes=routes)
    return config


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
    # Every listen address, as (key, address): cleartext, TLS, admin. No two may share a port.
    tls_listen = config.server.tls_listen
    bound = [("server.listen", a) for a in listen] + [("server.tls_listen", a) for a in tls_listen]
    if config.admin.listen is not None:
        bound.append(("admin.listen", config.admin.listen))
    for index, (key, address) in enumerate(bound):
        for other_key, other in bound[:index]:
            if _overlaps(other, address, config.server.ipv6only):
                where = "" if other_key == key else f"{other_key} "
                message = f"{address} overlaps {where}{other} (same port)"
                _report(problems, ConfigError(key, message))
    if tls_listen:
        for name in ("cert", "key"):
            if getattr(config.tls, name) is None:
                _report(
                    problems,
                    ConfigError(
                        f"tls.{name}",
                        f"is required when server.tls_listen is set (or give --tls-{name} FILE)",
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
    if config.server.proxy_protocol and not config.server.proxy_protocol_from:
        _report(
            problems,
            ConfigError(
                "server.proxy_protocol_from",
                "must list the load balancers' networks when server.proxy_protocol is true"
                ' (every other peer is closed), like ["10.0.0.0/8"]',
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
    tls_listen: list[str] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Config:
    """``config`` with the command-line flags that were given (not None) taking precedence.

    Values are checked by the same functions as the file's keys, and errors name
    the same keys (``--listen`` -> ``server.listen``).
    """
    server, upstream_config = config.server, config.upstream
    admin_config, log, tls = config.admin, config.log, config.tls
    if listen is not None:
        server = replace(server, listen=_parse_listen("server.listen", listen))
    if tls_listen is not None:
        server = replace(server, tls_listen=_parse_listen("server.tls_listen", tls_listen))
    if tls_cert is not None:
        tls = replace(tls, cert=_parse_path("tls.cert", tls_cert))
    if tls_key is not None:
        tls = replace(tls, key=_parse_path("tls.key", tls_key))
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
        ("tls_listen", tuple(tls_listen) if tls_listen is not None else None),
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
    ):
        if value is not None:
            given[key] = value
    return replace(
        config,
        server=server,
        upstream=upstream_config,
        admin=admin_config,
        log=log,
        tls=tls,
        overrides=tuple(sorted(given.items())),
    )


def reload_config(current: Config) -> Config:
    """What a SIGHUP loads: the file again, with the start-up flags applied on top."""
    if current.source is None:
        raise ConfigError("(file)", "started without -c: there is no file to re-read")
    # Repeatable flags (--listen, --tls-listen) are kept as tuples, the others as text.
    flags: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in current.overrides
    }
    config = apply_overrides(load_config(current.source), **flags)
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
