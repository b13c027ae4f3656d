"""The ``dsproxy`` command line (README "Command line"; scripts and tests rely on it).

::

    dsproxy run   [-c FILE] [--listen ADDR]... [--upstream URL] [--admin ADDR|off]
                  [--workers N|auto] [--parser auto|h11|httptools]
                  [--access-log combined|json|off] [--log-level LEVEL]
                  [--tls-listen ADDR]... [--tls-cert FILE] [--tls-key FILE]
    dsproxy check -c FILE [--resolve]
    dsproxy demo  [--listen ADDR]
    dsproxy probe URL [--ws PATH] [--timeout SECONDS] [--cacert FILE | --insecure]

Flags default to None ("not given") so they override only what was typed; the
values are checked by ``dsproxy.config`` with the file's rules and key names.
This is the only module that turns errors into exit codes: 0 ok, 2 bad input
(argparse's convention; ``check`` prints every problem, one a line, as
``FILE: key: what is wrong``); ``run``, ``demo`` and ``probe`` return their own codes.
The modules behind ``run``/``demo``/``probe`` are imported only when used, so
``check`` and ``--help`` stay fast and work without them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from dsproxy import __version__
from dsproxy.config import (
    ACCESS_LOG_FORMATS,
    LOG_LEVELS,
    PARSER_NAMES,
    Config,
    RouteConfig,
    apply_overrides,
    duration_seconds,
    load_config,
    parse_listen_address,
    problems_in_file,
    validate,
)
from dsproxy.errors import ConfigError
from dsproxy.http.codec import httptools_available
from dsproxy.net.addr import HostPort

EXIT_USAGE = 2  # bad command line or bad configuration
DEFAULT_PROBE_TIMEOUT_SECONDS = 5.0
# `check --resolve`: how long one upstream name may take to resolve.
RESOLVE_TIMEOUT_SECONDS = 10.0


def _listen_address(text: str) -> HostPort:
    try:
        return parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    """``5``, ``2.5`` or, as in the config file, ``"5s"``, ``"500ms"``."""
    seconds = duration_seconds(text)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f'must be a number of seconds > 0 (or like "5s", "500ms"), got {text!r}'
        )
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; every flag defaults to None (= not given)."""
    parser = argparse.ArgumentParser(
        prog="dsproxy",
        description="Dual-stack (IPv4 + IPv6) HTTP/1.1 and WebSocket reverse proxy.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version, build and codec, and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the proxy",
        description="Run the proxy. Flags override the file; the file overrides defaults.",
    )
    run.add_argument("-c", "--config", type=Path, metavar="FILE", help="TOML config file")
    run.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="[v6addr]:port or v4addr:port; repeat for several (replaces server.listen)",
    )
    run.add_argument("--upstream", metavar="URL", help="http://host:port (upstream.url)")
    run.add_argument("--admin", metavar="ADDR|off", help="admin listener (admin.listen)")
    run.add_argument("--workers", metavar="N|auto", help="processes (server.workers)")
    run.add_argument("--parser", metavar="|".join(PARSER_NAMES), help="server.parser")
    run.add_argument("--access-log", metavar="|".join(ACCESS_LOG_FORMATS), help="log.access")
    run.add_argument("--log-level", metavar="LEVEL", help=f"{', '.join(LOG_LEVELS)} (log.level)")
    run.add_argument(
        "--tls-listen",
        action="append",
        metavar="ADDR",
        help="TLS listen address, like --listen; repeat for several (server.tls_listen)",
    )
    run.add_argument("--tls-cert", metavar="FILE", help="PEM certificate, then chain (tls.cert)")
    run.add_argument("--tls-key", metavar="FILE", help="PEM private key (tls.key)")
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check",
        help="validate a config file",
        description='Validate a config file: exit 0 ("FILE: ok") or 2 with every problem, '
        'one a line ("FILE: key: problem").',
    )
    check.add_argument(
        "-c", "--config", type=Path, metavar="FILE", required=True, help="TOML config file"
    )
    check.add_argument(
        "--resolve",
        action="store_true",
        help="also resolve the upstream names (DNS), as the proxy will",
    )
    check.add_argument("-v", "--verbose", action="store_true", help="also show the route table")
    check.set_defaults(handler=_check)

    demo = commands.add_parser(
        "demo",
        help="demo gateway (HTTP + WebSocket echo) behind the proxy",
        description="Start a demo gateway (HTTP + WebSocket echo) behind a proxy.",
    )
    demo.add_argument(
        "--listen", type=_listen_address, metavar="ADDR", help="where the proxy listens"
    )
    demo.set_defaults(handler=_demo)

    probe = commands.add_parser(
        "probe",
        help="reach URL over IPv4 and IPv6 separately",
        description="Reach URL over IPv4 and IPv6 separately (HTTP, and a WebSocket ping).",
    )
    probe.add_argument("url", metavar="URL", help="http[s]://host:port/path")
    probe.add_argument("--ws", metavar="PATH", help="also open a WebSocket on PATH and ping")
    probe.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_PROBE_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"per step (default {DEFAULT_PROBE_TIMEOUT_SECONDS:g})",
    )
    trust = probe.add_mutually_exclusive_group()
    trust.add_argument(
        "--cacert", type=Path, metavar="FILE", help="https: trust the CAs in FILE (PEM)"
    )
    trust.add_argument(
        "-k", "--insecure", action="store_true", help="https: do not verify the certificate"
    )
    probe.set_defaults(handler=_probe)
    return parser


def _run(args: argparse.Namespace) -> int:
    path: Path | None = args.config
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        # Name the file: "dsproxy: missing.toml: cannot read it: No such file or directory".
        print(f"dsproxy: {path}: {_file_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = apply_overrides(
            loaded,
            listen=args.listen,
            upstream=args.upstream,
            admin=args.admin,
            workers=args.workers,
            parser=args.parser,
            access_log=args.access_log,
            log_level=args.log_level,
            tls_listen=args.tls_listen,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        validate(config)
        if config.server.tls_listen:
            from dsproxy.proxy.tlsfront import load_tls

            load_tls(config)  # a certificate that cannot be loaded stops us here, exit 2
    except ConfigError as exc:
        print(f"dsproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from dsproxy.app.supervisor import run

    return run(config)


def _file_message(exc: ConfigError) -> str:
    """``key: problem``, without the ``(file)`` pseudo-key (the file is named already)."""
    return exc.message if exc.key == "(file)" else str(exc)


def _check(args: argparse.Namespace) -> int:
    path: Path = args.config
    config, problems = problems_in_file(path)
    if config is not None and config.server.tls_listen:
        problems = _tls_problems(path, config)
    if not problems and config is not None and args.resolve:
        problems = asyncio.run(_resolve_problems(config))
    if problems:
        for problem in problems:
            print(f"{path}: {_file_message(problem)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    if args.verbose and config is not None:
        print("\n".join(route_table(config)))
    return 0


def route_table(config: Config) -> list[str]:
    """The routes as matched: longest prefix first, the default ([upstream]) last."""
    rows = [("prefix", "name", "upstream", "read/send/connect timeout", "ws idle", "rules")]
    entries = sorted(config.routes, key=lambda r: len(r.prefix), reverse=True)
    for prefix, name, upstream, ws_idle, rules in [
        *[
            (r.prefix, r.name, r.upstream, r.websocket_idle_timeout, _rules_text(r))
            for r in entries
        ],
        ("/ (default)", "default", config.upstream, config.websocket.idle_timeout, "-"),
    ]:
        rows.append(
            (
                prefix,
                name,
                " ".join(server.url for server in upstream.servers),
                f"{upstream.read_timeout:g}s/{upstream.send_timeout:g}s"
                f"/{upstream.connect_timeout:g}s",
                f"{ws_idle:g}s",
                rules,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _rules_text(route: RouteConfig) -> str:
    parts = []
    for what, sets, removes in (
        ("request", route.request_headers_set, route.request_headers_remove),
        ("response", route.response_headers_set, route.response_headers_remove),
    ):
        if sets:
            parts.append(f"{what} set " + ",".join(name for name, _ in sets))
        if removes:
            parts.append(f"{what} remove " + ",".join(removes))
    return "; ".join(parts) or "-"


def _tls_problems(path: Path, config: Config) -> list[ConfigError]:
    """Load the TLS certificate as the proxy will; print what it serves (and warnings)."""
    from dsproxy.proxy.tlsfront import load_tls

    try:
        info = load_tls(config).certificate
    except ConfigError as exc:
        return [exc]
    print(f"{path}: tls.cert: {info.describe()}")
    for warning in info.warnings():  # served anyway: clients decide (docs/configuration.md)
        print(f"{path}: tls.cert: warning: {warning}", file=sys.stderr)
    return []


async def _resolve_problems(config: Config) -> list[ConfigError]:
    """Resolve every upstream name as the proxy will; one problem per name that fails."""
    from dsproxy.net import resolver

    async def lookup(host: str, port: int) -> list[tuple[int, str]]:
        return await resolver.system_lookup(host, port)  # looked up late: tests swap it

    names = resolver.Resolver(0, lookup=lookup)
    problems: list[ConfigError] = []
    groups = [("upstream.url", config.upstream)]
    groups += [(f"routes[{i}].url", r.upstream) for i, r in enumerate(config.routes, start=1)]
    for key, server in [(key, server) for key, upstream in groups for server in upstream.servers]:
        try:
            addresses = await asyncio.wait_for(names.resolve(server), RESOLVE_TIMEOUT_SECONDS)
        except TimeoutError:
            problems.append(
                ConfigError(
                    key,
                    f"{server.url}: resolving {server.host} took more than "
                    f"{RESOLVE_TIMEOUT_SECONDS:g}s",
                )
            )
        except OSError as exc:
            problems.append(ConfigError(key, f"{server.url}: {exc}"))
        else:
            print(f"upstream {server.url} -> {', '.join(addresses)}")
    return problems


def _demo(args: argparse.Namespace) -> int:
    from dsproxy.tools.demo import main as demo_main

    listen: HostPort | None = args.listen
    return demo_main(listen)


def _probe(args: argparse.Namespace) -> int:
    from dsproxy.tools.probe import main as probe_main

    url: str = args.url
    ws_path: str | None = args.ws
    timeout: float = args.timeout
    return probe_main(url, ws_path, timeout, cacert=args.cacert, insecure=args.insecure)


def build_kind() -> str:
    """``compiled`` when the hot path runs as mypyc-compiled modules, else ``pure``."""
    import dsproxy.proxy.connection as hot

    return "compiled" if hot.__file__.endswith((".so", ".pyd")) else "pure"


class _VersionAction(argparse.Action):
    """``--version`` on three lines (argparse's own action would fold them into one)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``dsproxy --version``: the version, the build, and the codec ``auto`` picks."""
    codec = "httptools" if httptools_available() else "h11"
    return f"dsproxy {__version__}\nbuild: {build_kind()}\ncodec: {codec} (parser = auto)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("dsproxy: a command is required (run, check, demo, probe)", file=sys.stderr)
        return EXIT_USAGE
    code: int = args.handler(args)
    return code
