"""Config loading: every key's valid and invalid values, unknown keys, TOML and file
errors, cross-key validation, and flag overrides (flag > file > default).

Files are written to ``tmp_path``; nothing here opens a socket or resolves a name.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

import dsproxy.config as config_module
from dsproxy.config import (
    KNOWN_KEYS,
    AdminConfig,
    Config,
    LogConfig,
    ServerConfig,
    UpstreamConfig,
    UpstreamServer,
    apply_overrides,
    check_file,
    load_config,
    validate,
)
from dsproxy.errors import ConfigError
from dsproxy.net.addr import HostPort

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
GATEWAY = UpstreamServer("gateway-server.ezci.svc.cluster.local", 18080)
UPSTREAM_TOML = '[upstream]\nurl = "http://127.0.0.1:18080"\n'
RUNNABLE = Config(upstream=UpstreamConfig(servers=(UpstreamServer("127.0.0.1", 18080),)))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def one_key(section: str, key: str, toml_value: str) -> str:
    return f"[{section}]\n{key} = {toml_value}\n"


def field_value(config: Config, section: str, name: str) -> object:
    return getattr(getattr(config, section), name)


# -- defaults ------------------------------------------------------------------------------


def test_no_file_gives_the_defaults_without_an_upstream() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.upstream.servers == ()
    assert config.source is None


def test_defaults_match_the_design_table() -> None:
    config = load_config(None)
    assert config.server.listen == (HostPort("::", 16980),)
    assert config.server.workers == 1
    # Next to the proxy's port; 9100 is node_exporter's on most Kubernetes nodes.
    assert config.admin.listen == HostPort("127.0.0.1", 16981)
    assert config.log == LogConfig(level="info", access="combined")


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path) == Config(source=path)


def test_empty_section_gives_the_section_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "[server]\n[log]\n").server == ServerConfig()


def test_source_is_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM_TOML)
    assert load_config(path).source == path


# -- every key: valid values ---------------------------------------------------------------

DURATIONS = [
    ("server", "keepalive_timeout"),
    ("upstream", "keepalive_timeout"),
    ("upstream", "resolve_interval"),
    ("upstream", "readiness_interval"),
    ("websocket", "idle_timeout"),
    ("shutdown", "delay"),
    ("shutdown", "grace"),
]
# Deadlines without a "0 = never" meaning: 0 would fail every request at once.
TIMEOUTS = [
    ("server", "header_timeout"),
    ("server", "body_timeout"),
    ("upstream", "connect_timeout"),
    ("upstream", "read_timeout"),
    ("upstream", "send_timeout"),
    ("upstream", "readiness_window"),
]
DURATION_FORMS = '"5s", "100ms", "1m"'
COUNTS = [("server", "max_body_bytes", 0), ("upstream", "keepalive", 0)]
POSITIVE_COUNTS = [
    ("http2", "max_concurrent_streams", 1),
    ("http2", "max_header_list_bytes", 1),
    ("server", "max_connections", 1),
    ("server", "max_header_bytes", 1),
    ("upstream", "keepalive_requests", 1),
]

# (section, key, TOML value, dataclass field, expected)
VALID: list[tuple[str, str, str, str, object]] = [
    ("server", "listen", '["[::]:16980"]', "listen", (HostPort("::", 16980),)),
    ("server", "listen", '["0.0.0.0:80"]', "listen", (HostPort("0.0.0.0", 80),)),
    ("server", "listen", '["[::1]:0"]', "listen", (HostPort("::1", 0),)),
    ("server", "listen", '"127.0.0.1:8080"', "listen", (HostPort("127.0.0.1", 8080),)),
    (
        "server",
        "listen",
        '["0.0.0.0:80", "[::1]:80"]',
        "listen",
        (HostPort("0.0.0.0", 80), HostPort("::1", 80)),
    ),
    ("server", "listen", '[" [::]:1 "]', "listen", (HostPort("::", 1),)),
    ("server", "ipv6only", "true", "ipv6only", True),
    ("server", "ipv6only", "false", "ipv6only", False),
    ("server", "workers", "1", "workers", 1),
    ("server", "workers", "16", "workers", 16),
    ("server", "parser", '"auto"', "parser", "auto"),
    ("server", "parser", '"h11"', "parser", "h11"),
    ("server", "parser", '"httptools"', "parser", "httptools"),
    ("server", "trusted_proxies", "[]", "trusted_proxies", ()),
    ("server", "max_connections_per_ip", "20", "max_connections_per_ip", 20),
    ("server", "max_connections_per_ip", "0", "max_connections_per_ip", 0),
    ("server", "rate_limit", "0.5", "rate_limit", 0.5),
    ("server", "rate_limit", "100", "rate_limit", 100.0),
    ("server", "rate_limit_burst", "50", "rate_limit_burst", 50),
    ("server", "ipv6_client_prefix", "48", "ipv6_client_prefix", 48),
    ("server", "ipv6_client_prefix", "128", "ipv6_client_prefix", 128),
    (
        "server",
        "trusted_proxies",
        '["10.0.0.0/8", "fd00::/8"]',
        "trusted_proxies",
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
    ),
    # strict=False: host bits are dropped; a bare address is a /32 or /128.
    (
        "server",
        "trusted_proxies",
        '["10.1.2.3/8", "::1"]',
        "trusted_proxies",
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
    ),
    (
        "upstream",
        "url",
        '"http://gateway-server.ezci.svc.cluster.local:18080"',
        "servers",
        (GATEWAY,),
    ),
    ("upstream", "url", '"http://10.0.0.1:18080"', "servers", (UpstreamServer("10.0.0.1", 18080),)),
    ("upstream", "url", '"http://[::1]:18080"', "servers", (UpstreamServer("::1", 18080),)),
    ("upstream", "url", '"http://[::1]"', "servers", (UpstreamServer("::1", 80),)),
    ("upstream", "url", '"http://gateway"', "servers", (UpstreamServer("gateway", 80),)),
    ("upstream", "url", '"http://gateway:8080/"', "servers", (UpstreamServer("gateway", 8080),)),
    ("upstream", "url", '"HTTP://gateway:8080"', "servers", (UpstreamServer("gateway", 8080),)),
    ("upstream", "url", '"http://gw.example.:1"', "servers", (UpstreamServer("gw.example.", 1),)),
    ("upstream", "url", '"http://my_svc.ns:1"', "servers", (UpstreamServer("my_svc.ns", 1),)),
    (
        "upstream",
        "url",
        '["http://10.0.0.1:80", "http://[fd00::1]:80"]',
        "servers",
        (UpstreamServer("10.0.0.1", 80), UpstreamServer("fd00::1", 80)),
    ),
    ("server", "tls_listen", "[]", "tls_listen", ()),
    ("server", "tls_listen", '["[::]:16443"]', "tls_listen", (HostPort("::", 16443),)),
    ("server", "tls_listen", '"127.0.0.1:443"', "tls_listen", (HostPort("127.0.0.1", 443),)),
    *[("server", key, value, key, value == "true")
      for key in ("h2c", "proxy_protocol", "forwarded") for value in ("true", "false")],
    ("server", "proxy_protocol_from", '["10.0.0.0/8", "fd00::/8"]', "proxy_protocol_from",
     (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))),
    ("tls", "cert", '"/etc/dsproxy/tls/tls.crt"', "cert", Path("/etc/dsproxy/tls/tls.crt")),
    ("tls", "key", '"tls.key"', "key", Path("tls.key")),
    ("tls", "min_version", '"1.2"', "min_version", "1.2"),
    ("tls", "min_version", '"1.3"', "min_version", "1.3"),
    ("tls", "min_version", "1.3", "min_version", "1.3"),
    ("http2", "websocket", "false", "websocket", False),
    ("upstream", "host_header", '"preserve"', "host_header", "preserve"),
    ("upstream", "host_header", '"upstream"', "host_header", "upstream"),
    ("admin", "listen", '"127.0.0.1:9100"', "listen", HostPort("127.0.0.1", 9100)),
    ("admin", "listen", '"[::1]:9100"', "listen", HostPort("::1", 9100)),
    ("admin", "listen", '"0.0.0.0:0"', "listen", HostPort("0.0.0.0", 0)),
    ("admin", "listen", '"off"', "listen", None),
    *[("log", "level", f'"{level}"', "level", level) for level in config_module.LOG_LEVELS],
    ("log", "level", '"DEBUG"', "level", "debug"),
    *[("log", "access", f'"{fmt}"', "access", fmt) for fmt in config_module.ACCESS_LOG_FORMATS],
    *[(s, k, value, k, expected) for s, k in DURATIONS for value, expected in [
        ("0", 0.0), ("7", 7.0), ("1.5", 1.5), ("1e3", 1000.0), ('"5s"', 5.0),
        ('"100ms"', 0.1), ('"1m"', 60.0), ('"1h30m"', 5400.0), ('"1m 30s"', 90.0),
        ('"2.5s"', 2.5), ('"1d"', 86400.0), ('"7"', 7.0)]],
    *[(s, k, value, k, expected) for s, k in TIMEOUTS for value, expected in [
        ("0.001", 0.001), ("7", 7.0), ("2.5", 2.5), ('"5s"', 5.0), ('"100ms"', 0.1),
        ('"1m"', 60.0)]],
    *[(s, k, str(low), k, low) for s, k, low in COUNTS + POSITIVE_COUNTS],
    *[(s, k, "123456", k, 123456) for s, k, _ in COUNTS + POSITIVE_COUNTS],
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "key", "toml_value", "name", "expected"),
    VALID,
    ids=[f"{s}.{k}={v}" for s, k, v, _, _ in VALID],
)
def test_valid_value(
    tmp_path: Path, section: str, key: str, toml_value: str, name: str, expected: object
) -> None:
    config = load(tmp_path, one_key(section, key, toml_value))
    value = field_value(config, section, name)
    assert value == expected
    assert type(value) is type(expected)


def test_durations_are_floats(tmp_path: Path) -> None:
    config = load(tmp_path, one_key("server", "header_timeout", "3"))
    assert isinstance(config.server.header_timeout, float)


@pytest.mark.parametrize(("cpus", "expected"), [(4, 4), (1, 1), (None, 1)])
def test_workers_auto_is_the_cpu_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int | None, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert load(tmp_path, one_key("server", "workers", '"auto"')).server.workers == expected


def test_a_key_only_changes_its_own_field(tmp_path: Path) -> None:
    config = load(tmp_path, one_key("server", "max_body_bytes", "1024"))
    assert config.server == replace(ServerConfig(), max_body_bytes=1024)
    assert replace(config, server=ServerConfig(), source=None) == Config()


# -- every key: invalid values -------------------------------------------------------------

# (section, key, TOML value, the message after "section.key: ")
INVALID: list[tuple[str, str, str, str]] = [
    ("server", "listen", "[]", "must list at least one address"),
    ("server", "listen", '["16980"]', "is not of the form"),
    ("server", "listen", '[":16980"]', "is not of the form"),
    ("server", "listen", '["::1:80"]', "IPv6 addresses must be written in brackets"),
    ("server", "listen", '["[::1]"]', "is not of the form [v6addr]:port"),
    ("server", "listen", '["[1.2.3.4]:80"]', "is not an IPv6 address"),
    ("server", "listen", '["localhost:80"]', "'localhost' is not an IPv4 address"),
    ("server", "listen", '["1.2.3:80"]', "is not an IPv4 address"),
    ("server", "listen", '["0.0.0.0:65536"]', "port '65536' is not a number from 0 to 65535"),
    ("server", "listen", '["0.0.0.0:-1"]', "is not a number"),
    ("server", "listen", '["0.0.0.0:80", "0.0.0.0:80"]', "lists 0.0.0.0:80 twice"),
    ("server", "listen", "16980", "must be a listen address or a list of them, got 16980"),
    ("server", "listen", '["[::]:1", 2]', "must be a listen address or a list of them"),
    ("server", "ipv6only", '"yes"', "must be true or false, got 'yes'"),
    ("server", "ipv6only", "1", "must be true or false, got 1"),
    ("server", "workers", "0", 'must be an integer >= 1 or "auto", got 0'),
    ("server", "workers", "-2", 'must be an integer >= 1 or "auto", got -2'),
    ("server", "workers", '"4"', 'must be an integer >= 1 or "auto", got \'4\''),
    ("server", "workers", "2.0", 'must be an integer >= 1 or "auto", got 2.0'),
    ("server", "workers", "true", 'must be an integer >= 1 or "auto", got true'),
    ("server", "workers", '"AUTO"', 'must be an integer >= 1 or "auto"'),
    ("server", "parser", '"llhttp"', "must be one of auto, h11, httptools, got 'llhttp'"),
    ("server", "parser", "1", "must be one of auto, h11, httptools, got 1"),
    ("server", "trusted_proxies", '["10.0.0.0/33"]', "'10.0.0.0/33' is not an IP network"),
    ("server", "trusted_proxies", '["proxy.local"]', "'proxy.local' is not an IP network"),
    ("server", "trusted_proxies", "[10]", "must be a CIDR or a list of them, got [10]"),
    ("server", "max_connections_per_ip", "-1", "must be an integer >= 0, got -1"),
    ("server", "rate_limit", "-1", "must be a number of requests per second >= 0, got -1"),
    ("server", "rate_limit", '"10/s"', "must be a number of requests per second >= 0"),
    ("server", "rate_limit_burst", "1.5", "must be an integer >= 0, got 1.5"),
    ("server", "ipv6_client_prefix", "0", "must be an IPv6 prefix length from 1 to 128, got 0"),
    ("server", "ipv6_client_prefix", "129", "must be an IPv6 prefix length from 1 to 128"),
    ("server", "tls_listen", '["443"]', "is not of the form"),
    ("server", "tls_listen", '"::443"', "must be written in brackets, like [::]:443"),
    ("server", "h2c", '"yes"', "must be true or false, got 'yes'"),
    ("server", "proxy_protocol", "1", "must be true or false, got 1"),
    ("server", "proxy_protocol_from", '["lb.local"]', "'lb.local' is not an IP network"),
    ("server", "forwarded", '"rfc7239"', "must be true or false"),
    ("tls", "cert", '""', "must be a file path, got ''"),
    ("tls", "key", "[]", "must be a file path, got []"),
    ("tls", "min_version", '"1.1"', "must be one of 1.2, 1.3, got '1.1'"),
    ("tls", "min_version", "1.0", "must be one of 1.2, 1.3, got '1'"),
    ("http2", "websocket", '"on"', "must be true or false, got 'on'"),
    ("upstream", "url", "[]", "must list at least one URL"),
    ("upstream", "url", '""', "must be a URL like http://host:port, got ''"),
    ("upstream", "url", '"gateway:18080"', "must be a URL like http://host:port"),
    ("upstream", "url", '"https://gateway:443"', "only http:// upstreams are supported, not https"),
    ("upstream", "url", '"ws://gateway:80"', "only http:// upstreams are supported"),
    ("upstream", "url", '"http://gateway:80/api"', "a path is not supported"),
    ("upstream", "url", '"http://gateway:80?a=1"', "query and fragment are not supported"),
    ("upstream", "url", '"http://user@gateway:80"', "user info"),
    ("upstream", "url", '"http://"', "no host"),
    ("upstream", "url", '"http://:80"', "is not of the form"),
    ("upstream", "url", '"http://gateway:"', "port '' is not a number"),
    ("upstream", "url", '"http://gateway:0"', "port 0 cannot be connected to"),
    ("upstream", "url", '"http://gateway:99999"', "is not a number from 0 to 65535"),
    ("upstream", "url", '"http://::1:80"', "must be written in brackets"),
    ("upstream", "url", '"http://[::1"', "is not of the form [v6addr]:port"),
    ("upstream", "url", '"http://[gateway]:80"', "is not an IPv6 address"),
    ("upstream", "url", '"http://999.1.1.1:80"', "'999.1.1.1' is not an IPv4 address"),
    ("upstream", "url", '"http://gate way:80"', "'gate way' is not a valid host name"),
    ("upstream", "url", '"http://-gw:80"', "is not a valid host name"),
    ("upstream", "url", '"http://gw..local:80"', "is not a valid host name"),
    ("upstream", "url", f'"http://{"a" * 64}:80"', "is not a valid host name"),
    ("upstream", "url", '["http://a:1", "http://a:1"]', "lists http://a:1 twice"),
    ("upstream", "url", "18080", "must be a URL or a list of them, got 18080"),
    ("upstream", "url", '["http://a:1", "ftp://b"]', "only http:// upstreams are supported"),
    ("upstream", "host_header", '"client"', "must be one of preserve, upstream, got 'client'"),
    ("admin", "listen", '"on"', "'on' is not of the form"),
    ("admin", "listen", '"localhost:9100"', "'localhost' is not an IPv4 address"),
    ("admin", "listen", "false", 'must be an address like 127.0.0.1:16981 or "off", got false'),
    ("admin", "listen", "9100", 'must be an address like 127.0.0.1:16981 or "off", got 9100'),
    ("admin", "listen", '"::16981"', "must be written in brackets, like [::]:16981"),
    ("server", "listen", '"::16980"', "must be written in brackets, like [::]:16980"),
    ("server", "listen", '"::1:8080"', "must be written in brackets, like [::1]:8080"),
    ("log", "level", '"verbose"', "must be one of debug, info, warning, error, critical"),
    ("log", "level", "10", "must be one of debug, info, warning, error, critical, got 10"),
    ("log", "access", '"common"', "must be one of combined, json, off, got 'common'"),
    ("log", "access", "false", "must be one of combined, json, off, got false"),
    *[(s, k, value, f"must be a number of seconds >= 0 or a duration like {DURATION_FORMS}, "
                    f"got {shown}")
      for s, k in DURATIONS + TIMEOUTS
      for value, shown in [('"abc"', "'abc'"), ("-1", "-1"), ("-0.5", "-0.5"), ("true", "true"),
                           ("inf", "inf"), ("nan", "nan"), ('"10x"', "'10x'"), ("[1]", "[1]"),
                           ('"-1s"', "'-1s'"), ('"s"', "'s'"), ('"5 sec"', "'5 sec'"),
                           ('""', "''")]],
    *[(s, k, '"0s"', "must be more than 0 seconds (0 would time out at once), got 0")
      for s, k in TIMEOUTS],
    *[(s, k, "0", "must be more than 0 seconds (0 would time out at once), got 0")
      for s, k in TIMEOUTS],
    *[(s, k, "-1", "must be an integer >= 0, got -1") for s, k, _ in COUNTS],
    *[(s, k, "0", "must be an integer >= 1, got 0") for s, k, _ in POSITIVE_COUNTS],
    *[(s, k, value, f"must be an integer >= {low}, got {shown}")
      for s, k, low in COUNTS + POSITIVE_COUNTS
      for value, shown in [("1.5", "1.5"), ('"100"', "'100'"), ("false", "false")]],
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "key", "toml_value", "message"),
    INVALID,
    ids=[f"{s}.{k}={v}" for s, k, v, _ in INVALID],
)
def test_invalid_value(
    tmp_path: Path, section: str, key: str, toml_value: str, message: str
) -> None:
    error = load_error(tmp_path, one_key(section, key, toml_value))
    assert error.key == f"{section}.{key}"
    assert message in error.message
    assert str(error) == f"{error.key}: {error.message}"


def test_the_documented_message_shape(tmp_path: Path) -> None:
    error = load_error(tmp_path, one_key("server", "header_timeout", '"abc"'))
    assert str(error) == (
        "server.header_timeout: must be a number of seconds >= 0 or a duration like "
        f"{DURATION_FORMS}, got 'abc'"
    )


def test_every_known_key_is_covered_by_the_tables() -> None:
    tested = {f"{s}.{k}" for s, k, *_ in VALID} & {f"{s}.{k}" for s, k, *_ in INVALID}
    assert tested == set(KNOWN_KEYS)


def test_the_first_error_in_the_file_is_reported(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[server]\nworkers = 0\nparser = "x"\n')
    assert error.key == "server.workers"


# -- unknown sections and keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[server]\nheader_timout = 1\n", "server.header_timout",
         "did you mean server.header_timeout?"),
        ("[server]\nzzz = 1\n", "server.zzz", "unknown key (known: server.listen, "),
        ("[upstream]\nurls = []\n", "upstream.urls", "did you mean upstream.url?"),
        ("[upstream]\nservers = []\n", "upstream.servers", "unknown key"),
        ("[log]\nformat = \"json\"\n", "log.format", "unknown key"),
        ("[websockets]\nidle_timeout = 1\n", "websockets",
         "unknown section; did you mean websocket?"),
        ("[frontend]\n", "frontend", "unknown section (known: server, upstream, tls, http2, "),
        ("listen = [\"[::]:80\"]\n", "listen", "unknown section"),
        ("source = \"x\"\n", "source", "unknown section"),
        ("[server.tls]\ncert = \"x\"\n", "server.tls", "unknown key"),
    ],
)  # fmt: skip
def test_unknown_names_are_errors(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = load_error(tmp_path, text)
    assert error.key == key
    assert message in error.message


@pytest.mark.parametrize(
    ("text", "key"),
    [("server = 1\n", "server"), ('log = "info"\n', "log"), ("[[admin]]\n", "admin")],
)
def test_a_section_must_be_a_table(tmp_path: Path, text: str, key: str) -> None:
    error = load_error(tmp_path, text)
    assert error.key == key
    assert "must be a table" in error.message


# -- TOML and file errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[server]\nworkers = \n", "line 2"),
        ("[server\n", "line 1"),
        ("[server]\n[server]\n", "line 2"),
        ("[server]\nworkers = 1\nworkers = 2\n", "line 3"),
        ("[server]\nlisten = [\"[::]:1\"\n", "end of document"),
        ("[upstream]\nurl = 'http://a:1\n", "Expected"),
        ("workers = 1 2\n", "line 1"),
    ],
)  # fmt: skip
def test_toml_syntax_errors_name_the_line(tmp_path: Path, text: str, where: str) -> None:
    error = load_error(tmp_path, text)
    assert error.key == "(toml)"
    assert where in error.message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.key == "(file)"
    assert info.value.message == "cannot read it: No such file or directory"


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.key == "(file)"
    assert "cannot read it" in info.value.message


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[server]\nworkers = 1 # \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "(file)"
    assert "is not UTF-8 text" in info.value.message


# -- the example file ----------------------------------------------------------------------


def test_the_example_file_loads_and_passes_validation() -> None:
    config = check_file(EXAMPLE)
    assert config.server.listen == (HostPort("::", 16980),)
    assert config.upstream.servers == (GATEWAY,)
    assert config.source == EXAMPLE


def test_the_example_file_shows_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config == Config(upstream=UpstreamConfig(servers=(GATEWAY,)), source=EXAMPLE)


# Keys without a default: the example shows them commented out.
NO_DEFAULT = {"tls.cert", "tls.key"}


def test_the_example_file_lists_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    document = tomllib.loads(text)
    keys = {f"{section}.{key}" for section, table in document.items() for key in table}
    assert keys | NO_DEFAULT == set(KNOWN_KEYS)
    assert not keys & NO_DEFAULT
    for key in NO_DEFAULT:
        assert f"\n# {key.split('.')[1]} = " in text, key


# -- validate: rules across keys -----------------------------------------------------------


def test_an_upstream_is_required() -> None:
    with pytest.raises(ConfigError) as info:
        validate(Config())
    assert str(info.value) == ("upstream.url: is required (give it in the file or with --upstream)")


def test_a_runnable_config_passes() -> None:
    validate(RUNNABLE)


def test_listen_must_not_be_empty() -> None:
    config = replace(RUNNABLE, server=ServerConfig(listen=()))
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert info.value.key == "server.listen"


@pytest.mark.parametrize(
    ("listen", "ipv6only", "clash"),
    [
        (["[::]:80", "0.0.0.0:80"], False, True),  # [::] dual-stack already has IPv4 :80
        (["[::]:80", "0.0.0.0:80"], True, False),
        (["0.0.0.0:80", "127.0.0.1:80"], False, True),
        (["[::]:80", "[::1]:80"], True, True),
        (["127.0.0.1:80", "[::1]:80"], False, False),
        (["127.0.0.1:80", "127.0.0.2:80"], False, False),
        (["[::]:80", "[::]:81"], False, False),
        (["[::]:0", "0.0.0.0:0"], False, False),  # port 0: the OS picks different ports
    ],
)
def test_listen_addresses_must_not_overlap(listen: list[str], ipv6only: bool, clash: bool) -> None:
    config = apply_overrides(RUNNABLE, listen=listen, admin="off")
    config = replace(config, server=replace(config.server, ipv6only=ipv6only))
    if clash:
        with pytest.raises(ConfigError) as info:
            validate(config)
        assert info.value.key == "server.listen"
        assert "overlaps" in info.value.message
    else:
        validate(config)


@pytest.mark.parametrize(
    ("admin", "clash"),
    [
        ("127.0.0.1:16980", True),
        ("0.0.0.0:16980", True),
        ("[::1]:16980", True),
        ("127.0.0.1:9100", False),
        ("127.0.0.1:0", False),
        ("off", False),
    ],
)
def test_admin_must_not_overlap_the_proxy(admin: str, clash: bool) -> None:
    config = apply_overrides(RUNNABLE, admin=admin)  # listens on [::]:16980
    if clash:
        with pytest.raises(ConfigError) as info:
            validate(config)
        assert info.value.key == "admin.listen"
    else:
        validate(config)


def test_tls_listen_needs_a_cert_and_a_key() -> None:
    config = apply_overrides(RUNNABLE, tls_listen=["[::]:16443"])
    problems: list[ConfigError] = []
    validate(config, problems)
    assert [(p.key, p.message) for p in problems] == [
        ("tls.cert", "is required when server.tls_listen is set (or give --tls-cert FILE)"),
        ("tls.key", "is required when server.tls_listen is set (or give --tls-key FILE)"),
    ]
    validate(apply_overrides(config, tls_cert="c.pem", tls_key="k.pem"))
    validate(apply_overrides(RUNNABLE, tls_cert="c.pem"))  # without TLS listeners: unused


@pytest.mark.parametrize(
    ("listen", "tls_listen", "admin", "key", "message"),
    [
        (
            "[::]:443",
            "[::]:443",
            "off",
            "server.tls_listen",
            "[::]:443 overlaps server.listen [::]:443",
        ),
        ("[::]:80", "0.0.0.0:80", "off", "server.tls_listen", "overlaps server.listen [::]:80"),
        ("[::]:80", "[::]:443", "127.0.0.1:443", "admin.listen", "overlaps server.tls_listen"),
        ("[::]:80", "[::]:443", "127.0.0.1:9000", None, ""),
        ("127.0.0.1:443", "[::1]:443", "off", None, ""),  # one address of each family
    ],
)
def test_tls_listen_must_not_overlap(
    listen: str, tls_listen: str, admin: str, key: str | None, message: str
) -> None:
    config = apply_overrides(
        RUNNABLE, listen=[listen], tls_listen=[tls_listen], admin=admin, tls_cert="c", tls_key="k"
    )
    if key is None:
        validate(config)
        return
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert (info.value.key, message in info.value.message) == (key, True), info.value


def test_httptools_must_be_installed_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    config = apply_overrides(RUNNABLE, parser="httptools")
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert info.value.key == "server.parser"
    assert "httptools is not installed" in info.value.message
    validate(apply_overrides(RUNNABLE, parser="auto"))  # auto falls back to h11


def test_check_file_validates(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 2\n")
    with pytest.raises(ConfigError) as info:
        check_file(path)
    assert info.value.key == "upstream.url"
    assert check_file(write(tmp_path, UPSTREAM_TOML)).upstream == RUNNABLE.upstream


# -- overrides: flag > file > default ------------------------------------------------------


def test_no_flags_change_nothing(tmp_path: Path) -> None:
    config = load(tmp_path, UPSTREAM_TOML + '[log]\nlevel = "warning"\n')
    assert apply_overrides(config) == config


def test_flag_beats_file_beats_default(tmp_path: Path) -> None:
    file_config = load(
        tmp_path,
        '[server]\nlisten = ["127.0.0.1:1"]\nworkers = 3\n'
        '[upstream]\nurl = "http://file:1"\nkeepalive = 7\n'
        '[log]\naccess = "json"\n',
    )
    config = apply_overrides(
        file_config, listen=["[::1]:2", "127.0.0.1:3"], upstream="http://flag:2", log_level="debug"
    )
    assert config.server.listen == (HostPort("::1", 2), HostPort("127.0.0.1", 3))  # flag
    assert config.upstream.servers == (UpstreamServer("flag", 2),)  # flag
    assert config.log.level == "debug"  # flag over default
    assert config.server.workers == 3  # file
    assert config.upstream.keepalive == 7  # file
    assert config.log.access == "json"  # file
    assert config.server.parser == "auto"  # default
    assert config.admin == AdminConfig()  # default
    assert config.source == file_config.source


# (flag name, flag value, section, field, expected)
OVERRIDES: list[tuple[str, object, str, str, object]] = [
    ("listen", ["0.0.0.0:8080"], "server", "listen", (HostPort("0.0.0.0", 8080),)),
    ("upstream", "http://[::1]:9", "upstream", "servers", (UpstreamServer("::1", 9),)),
    ("admin", "off", "admin", "listen", None),
    ("admin", "[::1]:9200", "admin", "listen", HostPort("::1", 9200)),
    ("workers", "4", "server", "workers", 4),
    ("parser", "h11", "server", "parser", "h11"),
    ("access_log", "off", "log", "access", "off"),
    ("log_level", "ERROR", "log", "level", "error"),
    ("tls_listen", ["[::]:16443"], "server", "tls_listen", (HostPort("::", 16443),)),
    ("tls_cert", "/etc/tls/tls.crt", "tls", "cert", Path("/etc/tls/tls.crt")),
    ("tls_key", "tls.key", "tls", "key", Path("tls.key")),
]


@pytest.mark.parametrize(
    ("flag", "value", "section", "name", "expected"),
    OVERRIDES,
    ids=[f"{flag}={value}" for flag, value, *_ in OVERRIDES],
)
def test_each_flag_overrides_its_key(
    flag: str, value: object, section: str, name: str, expected: object
) -> None:
    config = apply_overrides(RUNNABLE, **{flag: value})  # type: ignore[arg-type]
    assert field_value(config, section, name) == expected


def test_workers_flag_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert apply_overrides(RUNNABLE, workers="auto").server.workers == 6


# Flags fail with the file's key names and the same words as the file would.
BAD_FLAGS: list[tuple[str, object, str, str]] = [
    ("listen", ["nowhere"], "server.listen", "is not of the form"),
    ("listen", [], "server.listen", "must list at least one address"),
    ("listen", ["[::]:1", "[::]:1"], "server.listen", "twice"),
    ("upstream", "https://gw:443", "upstream.url", "only http:// upstreams are supported"),
    ("upstream", "gw:80", "upstream.url", "must be a URL like http://host:port"),
    ("admin", "on", "admin.listen", "is not of the form"),
    ("workers", "0", "server.workers", 'must be an integer >= 1 or "auto", got 0'),
    ("workers", "-1", "server.workers", "got '-1'"),
    ("workers", "two", "server.workers", "got 'two'"),
    ("workers", "1.5", "server.workers", "got '1.5'"),
    ("workers", "", "server.workers", "got ''"),
    ("parser", "fast", "server.parser", "must be one of auto, h11, httptools, got 'fast'"),
    ("access_log", "common", "log.access", "must be one of combined, json, off"),
    ("log_level", "loud", "log.level", "must be one of debug, info, warning, error, critical"),
    ("tls_listen", ["16443"], "server.tls_listen", "is not of the form"),
    ("tls_listen", ["::16443"], "server.tls_listen", "must be written in brackets"),
    ("tls_cert", " ", "tls.cert", "must be a file path"),
    ("tls_key", "", "tls.key", "must be a file path"),
]


@pytest.mark.parametrize(
    ("flag", "value", "key", "message"),
    BAD_FLAGS,
    ids=[f"{flag}={value}" for flag, value, *_ in BAD_FLAGS],
)
def test_bad_flag_values(flag: str, value: object, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RUNNABLE, **{flag: value})  # type: ignore[arg-type]
    assert info.value.key == key
    assert message in info.value.message


@pytest.mark.parametrize(
    ("flag", "toml_value", "flag_value"),
    [
        ("parser", '"fast"', "fast"),
        ("workers", "0", "0"),
        ("admin", '"on"', "on"),
        ("upstream", '"ftp://x"', "ftp://x"),
    ],
)
def test_flag_and_file_errors_read_the_same(
    tmp_path: Path, flag: str, toml_value: str, flag_value: str
) -> None:
    section, key = {
        "parser": ("server", "parser"),
        "workers": ("server", "workers"),
        "admin": ("admin", "listen"),
        "upstream": ("upstream", "url"),
    }[flag]
    file_error = load_error(tmp_path, one_key(section, key, toml_value))
    with pytest.raises(ConfigError) as info:
        apply_overrides(RUNNABLE, **{flag: flag_value})  # type: ignore[arg-type]
    assert str(info.value) == str(file_error)


def test_overrides_give_a_new_frozen_config() -> None:
    config = apply_overrides(RUNNABLE, workers="2")
    assert RUNNABLE.server.workers == 1
    assert config.server.workers == 2


def test_reload_keeps_command_line_flags(tmp_path: Path) -> None:
    from dsproxy.config import reload_config

    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:8080"]\n[log]\nlevel = "info"\n')
    started = apply_overrides(
        load_config(path), upstream="http://127.0.0.1:9000", log_level="debug"
    )
    path.write_text('[server]\nlisten = ["127.0.0.1:8081"]\n[log]\nlevel = "warning"\n')
    reloaded = reload_config(started)
    assert reloaded.server.listen[0].port == 8081  # the file's change is taken
    assert reloaded.log.level == "debug"  # the flag still wins
    assert reloaded.upstream.servers[0].port == 9000  # the flag-only upstream survives


def test_reload_keeps_the_tls_flags(tmp_path: Path) -> None:
    from dsproxy.config import reload_config

    path = tmp_path / "c.toml"
    path.write_text(UPSTREAM_TOML + '[tls]\ncert = "file.crt"\nmin_version = "1.2"\n')
    started = apply_overrides(
        load_config(path), tls_listen=["[::]:8443", "127.0.0.1:9443"], tls_key="flag.key"
    )
    path.write_text(
        UPSTREAM_TOML + '[tls]\ncert = "new.crt"\nkey = "file.key"\nmin_version = "1.3"\n'
    )
    reloaded = reload_config(started)
    assert reloaded.server.tls_listen == (HostPort("::", 8443), HostPort("127.0.0.1", 9443))
    assert reloaded.tls.cert == Path("new.crt")  # the file's change is taken
    assert reloaded.tls.key == Path("flag.key")  # the flag still wins
    assert reloaded.tls.min_version == "1.3"


# -- every problem at once (dsproxy check) --------------------------------------------------


def test_problems_in_file_reports_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = ["::16980"]\nworkers = 0\nheader_timeout = "5x"\n'
        '[upstream]\nurl = "ftp://gw"\nread_timeout = "1m"\n'
        "[admin]\nlisten = 5\n[bogus]\n",
    )
    config, problems = config_module.problems_in_file(path)
    assert config is None
    assert [p.key for p in problems] == [
        "server.listen",
        "server.workers",
        "server.header_timeout",
        "upstream.url",
        "admin.listen",
        "bogus",
    ]
    # A key already reported is not reported again by the cross-key rules
    # (the bad upstream.url is not also "required").
    assert not any("is required" in p.message for p in problems)


def test_problems_in_file_includes_cross_key_rules(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nbogus = 1\n[admin]\nlisten = "[::]:16980"\n')
    _, problems = config_module.problems_in_file(path)
    assert [(p.key, p.message.split(" ")[0]) for p in problems] == [
        ("server.bogus", "unknown"),
        ("upstream.url", "is"),
        ("admin.listen", "[::]:16980"),
    ]


def test_problems_in_a_good_file(tmp_path: Path) -> None:
    config, problems = config_module.problems_in_file(write(tmp_path, UPSTREAM_TOML))
    assert problems == []
    assert config is not None


def test_load_config_still_raises_the_first_problem(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[server]\nworkers = 0\nheader_timeout = 'x'\n")
    assert error.key == "server.workers"


def test_readiness_window_must_cover_the_interval(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM_TOML + 'readiness_interval = "10s"\nreadiness_window = "5s"\n')
    with pytest.raises(ConfigError) as info:
        check_file(path)
    assert info.value.key == "upstream.readiness_window"
    assert "at least upstream.readiness_interval (10s)" in info.value.message
    ok = write(tmp_path, UPSTREAM_TOML + 'readiness_interval = "2s"\nreadiness_window = "6s"\n')
    assert check_file(ok).upstream.readiness_window == 6.0


def test_proxy_protocol_needs_the_networks_allowed_to_send_it(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM_TOML + "[server]\nproxy_protocol = true\n")
    with pytest.raises(ConfigError) as info:
        check_file(path)
    assert info.value.key == "server.proxy_protocol_from"
    assert "when server.proxy_protocol is true" in info.value.message
    ok = write(
        tmp_path,
        UPSTREAM_TOML + '[server]\nproxy_protocol = true\nproxy_protocol_from = ["10.0.0.0/8"]\n',
    )
    assert check_file(ok).server.proxy_protocol
    off = write(tmp_path, UPSTREAM_TOML + "[server]\nproxy_protocol = false\n")
    check_file(off)  # the list matters only when the header is required


def test_readiness_rule_is_off_by_default() -> None:
    assert UpstreamConfig().readiness_interval == 0


def test_the_example_files_commented_route_loads_when_uncommented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    example = text[text.index("# [[routes]]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    document = tomllib.loads(text) | tomllib.loads(uncommented)
    (route,) = config_module.config_from_mapping(document).routes
    assert route.name == "ws"
    assert route.prefix == "/ws"
    assert route.upstream.read_timeout == 3600.0
