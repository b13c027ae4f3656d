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

from dsproxy.config.load import (
    KNOWN_KEYS as KNOWN_KEYS,
)
from dsproxy.config.load import (
    KNOWN_ROUTE_KEYS as KNOWN_ROUTE_KEYS,
)
from dsproxy.config.load import (
    apply_overrides as apply_overrides,
)
from dsproxy.config.load import (
    check_file as check_file,
)
from dsproxy.config.load import (
    config_from_mapping as config_from_mapping,
)
from dsproxy.config.load import (
    load_config as load_config,
)
from dsproxy.config.load import (
    problems_in_file as problems_in_file,
)
from dsproxy.config.load import (
    reload_config as reload_config,
)
from dsproxy.config.load import (
    validate as validate,
)
from dsproxy.config.model import (
    ACCESS_LOG_FORMATS as ACCESS_LOG_FORMATS,
)
from dsproxy.config.model import (
    HOP_BY_HOP as HOP_BY_HOP,
)
from dsproxy.config.model import (
    HOST_HEADER_MODES as HOST_HEADER_MODES,
)
from dsproxy.config.model import (
    LOG_LEVELS as LOG_LEVELS,
)
from dsproxy.config.model import (
    PARSER_NAMES as PARSER_NAMES,
)
from dsproxy.config.model import (
    TLS_VERSIONS as TLS_VERSIONS,
)
from dsproxy.config.model import (
    AccessLogFormat as AccessLogFormat,
)
from dsproxy.config.model import (
    AdminConfig as AdminConfig,
)
from dsproxy.config.model import (
    Config as Config,
)
from dsproxy.config.model import (
    HostHeaderMode as HostHeaderMode,
)
from dsproxy.config.model import (
    Http2Config as Http2Config,
)
from dsproxy.config.model import (
    IPNetwork as IPNetwork,
)
from dsproxy.config.model import (
    LogConfig as LogConfig,
)
from dsproxy.config.model import (
    LogLevel as LogLevel,
)
from dsproxy.config.model import (
    ParserName as ParserName,
)
from dsproxy.config.model import (
    RouteConfig as RouteConfig,
)
from dsproxy.config.model import (
    ServerConfig as ServerConfig,
)
from dsproxy.config.model import (
    ShutdownConfig as ShutdownConfig,
)
from dsproxy.config.model import (
    TlsConfig as TlsConfig,
)
from dsproxy.config.model import (
    TlsVersion as TlsVersion,
)
from dsproxy.config.model import (
    UpstreamConfig as UpstreamConfig,
)
from dsproxy.config.model import (
    UpstreamServer as UpstreamServer,
)
from dsproxy.config.model import (
    WebSocketConfig as WebSocketConfig,
)
from dsproxy.config.values import (
    MAX_HOSTNAME_CHARS as MAX_HOSTNAME_CHARS,
)
from dsproxy.config.values import (
    UPSTREAM_DEFAULT_PORT as UPSTREAM_DEFAULT_PORT,
)
from dsproxy.config.values import (
    bracket_hint as bracket_hint,
)
from dsproxy.config.values import (
    duration_seconds as duration_seconds,
)
from dsproxy.config.values import (
    parse_listen_address as parse_listen_address,
)
