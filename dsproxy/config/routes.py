"""``[[routes]]``: path-prefix routes, each with its own upstream group.

A route is a ``[[routes]]`` table with a ``prefix`` and a ``url``; it may set
any ``[upstream]`` key but the readiness ones (they are the default upstream's),
and ``name``, ``websocket_idle_timeout`` and the header rules. Keys it does not
set come from ``[upstream]`` and ``[websocket]``, as nginx's ``location``
blocks inherit ``proxy_*`` settings from the server. Errors name the key as
``routes[N].key``, N counting the tables from 1 (docs/configuration.md, "Routes").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dsproxy.config.model import HOP_BY_HOP, RouteConfig, UpstreamConfig
from dsproxy.config.values import (
    _parse_count,
    _parse_duration,
    _parse_host_header,
    _parse_positive,
    _parse_timeout,
    _parse_upstream_url,
    _show,
)
from dsproxy.errors import ConfigError

# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field values are visible characters, spaces and tabs.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Names a header rule may never touch: they frame the message or end at this hop.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_RESERVED_NAME = "default"  # the [upstream] route's label

# [upstream] keys a route may set -> (UpstreamConfig field, parser).
_UPSTREAM_KEYS: dict[str, tuple[str, Callable[[str, object], Any]]] = {
    "url": ("servers", _parse_upstream_url),
    "host_header": ("host_header", _parse_host_header),
    "connect_timeout": ("connect_timeout", _parse_timeout),
    "read_timeout": ("read_timeout", _parse_timeout),
    "send_timeout": ("send_timeout", _parse_timeout),
    "keepalive": ("keepalive", _parse_count),
    "keepalive_timeout": ("keepalive_timeout", _parse_duration),
    "keepalive_requests": ("keepalive_requests", _parse_positive),
    "resolve_interval": ("resolve_interval", _parse_duration),
}
_ROUTE_ONLY = (
    "prefix",
    "name",
    "websocket_idle_timeout",
    "request_headers_set",
    "request_headers_remove",
    "response_headers_set",
    "response_headers_remove",
)
ROUTE_KEYS: tuple[str, ...] = (*_ROUTE_ONLY[:1], "url", *_ROUTE_ONLY[1:],
                               *[k for k in _UPSTREAM_KEYS if k != "url"])  # fmt: skip


def parse_prefix(key: str, value: object) -> str:
    """A route prefix, normalised: ``/api/`` and ``/api`` are both ``/api``."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(
            key, f'must be a path starting with "/", like "/api/", got {_show(value)}'
        )
    if any(c in value for c in "?#") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise ConfigError(
            key, f"must be a plain path (no query, fragment or spaces), got {value!r}"
        )
    if "%" in value:
        raise ConfigError(
            key, f"must be written decoded (routes match the decoded path), got {value!r}"
        )
    segments = value.strip("/").split("/")
    if "//" in value or any(s in (".", "..") for s in segments):
        raise ConfigError(
            key, f"must be a normalised path (no //, . or .. segments), got {value!r}"
        )
    prefix = value.rstrip("/")
    if not prefix:
        raise ConfigError(
            key, 'cannot be "/": every path would match it; set [upstream] for that instead'
        )
    return prefix


def _parse_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,64}", value):
        raise ConfigError(
            key, f"must be 1-64 characters of letters, digits and _.:/-, got {_show(value)}"
        )
    if value == _RESERVED_NAME:
        raise ConfigError(key, '"default" is the [upstream] route\'s name; pick another')
    return value


def _header_name(key: str, name: object, *, refuse: frozenset[str]) -> str:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigError(key, f"{_show(name)} is not a header name")
    lower = name.lower()
    if lower in HOP_BY_HOP or lower in _FRAMING:
        raise ConfigError(
            key, f"{name} is hop-by-hop or frames the body: the proxy decides it, not a rule"
        )
    if lower in refuse:
        raise ConfigError(key, f"{name} cannot be removed (an HTTP/1.1 request needs it)")
    return name


def _parse_header_table(key: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(key, f'must be a table like {{ "X-Env" = "prod" }}, got {_show(value)}')
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, text in value.items():
        name = _header_name(key, name, refuse=frozenset())
        if name.lower() in seen:
            raise ConfigError(key, f"sets {name} twice")
        seen.add(name.lower())
        if not isinstance(text, str) or not _FIELD_VALUE.fullmatch(text):
            raise ConfigError(
                key, f"{name}: the value must be text without control characters, got {_show(text)}"
            )
        out.append((name, text.strip(" \t")))
    return tuple(out)


def _parse_header_names(refuse: frozenset[str]) -> Callable[[str, object], tuple[str, ...]]:
    def parse(key: str, value: object) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(key, f"must be a list of header names, got {_show(value)}")
        return tuple(_header_name(key, item, refuse=refuse) for item in items)

    return parse


_ROUTE_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "prefix": parse_prefix,
    "name": _parse_name,
    "websocket_idle_timeout": _parse_duration,
    "request_headers_set": _parse_header_table,
    "request_headers_remove": _parse_header_names(frozenset({"host"})),
    "response_headers_set": _parse_header_table,
    "response_headers_remove": _parse_header_names(frozenset()),
}


def _one_route(
    index: int,
    table: object,
    upstream: UpstreamConfig,
    websocket_idle_timeout: float,
    report: Callable[[ConfigError], None],
) -> RouteConfig | None:
    where = f"routes[{index}]"
    if not isinstance(table, dict):
        report(ConfigError(where, f"must be a table ([[routes]]), got {_show(table)}"))
        return None
    upstream_values: dict[str, Any] = {}
    values: dict[str, Any] = {}
    failed = False
    for name, value in table.items():
        key = f"{where}.{name}"
        try:
            if name in _UPSTREAM_KEYS:
                field, parse = _UPSTREAM_KEYS[name]
                upstream_values[field] = parse(key, value)
            elif name in _ROUTE_PARSERS:
                values[name] = _ROUTE_PARSERS[name](key, value)
            elif name.startswith("readiness_"):
                raise ConfigError(key, "readiness is set on [upstream] only (the default route)")
            else:
                close = difflib.get_close_matches(name, ROUTE_KEYS, n=1)
                hint = f"; did you mean {where}.{close[0]}?" if close else ""
                raise ConfigError(key, f"unknown key{hint}")
        except ConfigError as exc:
            report(exc)
            failed = True
    for required, what in (("prefix", '"/api/"'), ("url", '"http://host:port"')):
        if required not in table:
            report(ConfigError(f"{where}.{required}", f"is required (like {what})"))
            failed = True
    if failed:
        return None
    label = str(values["name"] if "name" in values else table["prefix"])  # default: the prefix
    return RouteConfig(
        prefix=values["prefix"],
        name=label,
        upstream=replace(upstream, **upstream_values),
        websocket_idle_timeout=values.get("websocket_idle_timeout", websocket_idle_timeout),
        request_headers_set=values.get("request_headers_set", ()),
        request_headers_remove=values.get("request_headers_remove", ()),
        response_headers_set=values.get("response_headers_set", ()),
        response_headers_remove=values.get("response_headers_remove", ()),
    )


def build_routes(
    tables: object,
    upstream: UpstreamConfig,
    websocket_idle_timeout: float,
    report: Callable[[ConfigError], None],
) -> tuple[RouteConfig, ...]:
    """The ``[[routes]]`` array as ``RouteConfig``s; every problem goes to ``report``."""
    if not isinstance(tables, list):
        report(
            ConfigError("routes", f"must be an array of tables ([[routes]]), got {_show(tables)}")
        )
        return ()
    routes: list[RouteConfig] = []
    by_prefix: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for index, table in enumerate(tables, start=1):
        route = _one_route(index, table, upstream, websocket_idle_timeout, report)
        if route is None:
            continue
        first = by_prefix.get(route.prefix)
        if first is not None:
            report(
                ConfigError(
                    f"routes[{index}].prefix",
                    f"{route.prefix!r} is the same as routes[{first}]'s prefix "
                    f"({route.prefix}/ and {route.prefix} match the same paths)",
                )
            )
            continue
        named = by_name.get(route.name)
        if named is not None:
            report(
                ConfigError(
                    f"routes[{index}].name", f"{route.name!r} is routes[{named}]'s name too"
                )
            )
            continue
        by_prefix[route.prefix] = index
        by_name[route.name] = index
        routes.append(route)
    return tuple(routes)
