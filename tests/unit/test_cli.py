"""The command line: ``check`` exit codes and messages, ``run`` flag handling, and the
dispatch to ``run``/``demo``/``probe`` (their modules are replaced by fakes in
``sys.modules``, so nothing listens and nothing is reached).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dsproxy
from dsproxy.cli import build_kind, main
from dsproxy.config import Config, UpstreamServer
from dsproxy.net.addr import HostPort
from tests.tlsutil import TlsFiles, make_tls_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
UPSTREAM_TOML = '[upstream]\nurl = "http://127.0.0.1:18080"\n'


@dataclass
class Calls:
    """What a fake ``run``/``demo``/``probe`` was called with, and what it returns."""

    result: int = 0
    args: list[tuple[object, ...]] = field(default_factory=list)

    def record(self, *args: object, **options: object) -> int:
        self.args.append(args + ((options,) if options else ()))
        return self.result


def fake_module(
    monkeypatch: pytest.MonkeyPatch, name: str, attribute: str, function: Callable[..., int]
) -> None:
    module = types.ModuleType(name)
    monkeypatch.setattr(module, attribute, function, raising=False)
    monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def run_calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls = Calls()
    fake_module(monkeypatch, "dsproxy.app.supervisor", "run", calls.record)
    return calls


@pytest.fixture
def demo_calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls = Calls()
    fake_module(monkeypatch, "dsproxy.tools.demo", "main", calls.record)
    return calls


@pytest.fixture
def probe_calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls = Calls()
    fake_module(monkeypatch, "dsproxy.tools.probe", "main", calls.record)
    return calls


PLAIN = {"cacert": None, "insecure": False}  # probe without --cacert / --insecure


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def ran_with(calls: Calls) -> Config:
    (args,) = calls.args
    (config,) = args
    assert isinstance(config, Config)
    return config


# -- check ---------------------------------------------------------------------------------


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, UPSTREAM_TOML)
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok\n"
    assert err == ""


def test_check_verbose_shows_the_route_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        UPSTREAM_TOML
        + '[[routes]]\nprefix = "/api/"\nurl = "http://10.0.0.2:80"\nname = "api"\n'
        + 'response_headers_remove = ["Server"]\n'
        + '[[routes]]\nprefix = "/api/v2"\nurl = "http://[fd00::3]:81"\nread_timeout = "1h"\n',
    )
    assert main(["check", "-c", str(path), "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: ok"
    assert lines[1].split() == ["prefix", "name", "upstream", "read/send/connect", "timeout",
                                "ws", "idle", "rules"]  # fmt: skip
    assert lines[2].split() == ["/api/v2", "/api/v2", "http://[fd00::3]:81", "3600s/60s/5s",
                                "3600s", "-"]  # fmt: skip
    assert lines[3].split() == ["/api", "api", "http://10.0.0.2:80", "60s/60s/5s", "3600s",
                                "response", "remove", "Server"]  # fmt: skip
    assert lines[4].split()[:3] == ["/", "(default)", "default"]
    assert len(lines) == 5


def test_check_reports_duplicate_route_prefixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    route = '[[routes]]\nprefix = "{}"\nurl = "http://10.0.0.2:80"\n'
    path = write(tmp_path, UPSTREAM_TOML + route.format("/api") + route.format("/api/"))
    assert main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{path}: routes[2].prefix: '/api' is the same as routes[1]'s prefix"
        " (/api/ and /api match the same paths)\n"
    )


def test_check_the_example_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == f"{EXAMPLE}: ok\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "upstream.url: is required (give it in the file or with --upstream)"),
        ("[server]\nworkers = 2\n", "upstream.url: is required"),
        (
            UPSTREAM_TOML + '[server]\nheader_timeout = "abc"\n',
            "server.header_timeout: must be a number of seconds >= 0 or a duration like",
        ),
        (UPSTREAM_TOML + "[server]\nlisten = []\n", "server.listen: must list at least one"),
        ('[upstream]\nurl = "https://gw"\n', "upstream.url: 'https://gw': only http://"),
        (UPSTREAM_TOML + "[admin]\nlisten = 9100\n", "admin.listen: must be an address"),
        (UPSTREAM_TOML + "[server]\nbogus = 1\n", "server.bogus: unknown key"),
        (UPSTREAM_TOML + "[tsl]\n", "tsl: unknown section; did you mean tls?"),
        ("[server\n", "(toml): "),
        ("a = = 1\n", "(toml): "),
        (UPSTREAM_TOML + '[admin]\nlisten = "[::]:16980"\n', "admin.listen: [::]:16980 overlaps"),
    ],
)
def test_check_reports_file_key_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: {problem}")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_check_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: cannot read it: No such file or directory\n"


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage", b"\x00\x01\x02", b'[server]\nlisten = ["\xc3\x28"]\n', b"[" * 5000],
)
def test_check_never_shows_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"{path}: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_check_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"{tmp_path}: cannot read it")


def test_check_reports_every_problem_one_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = ["::16980"]\nworkers = 0\n[upstream]\nurl = "ftp://gw"\n'
        "[admin]\nlisten = 5\n[log]\nlevel = 'loud'\n",
    )
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "server.listen",
        "server.workers",
        "upstream.url",
        "admin.listen",
        "log.level",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert "like [::]:16980" in lines[0]


def test_check_resolve_names_the_upstream_that_does_not_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from dsproxy.net import resolver

    looked_up: list[str] = []

    async def lookup(host: str, port: int) -> list[tuple[int, str]]:
        looked_up.append(host)
        if host == "gateway.ok":
            return [(socket.AF_INET, "10.0.0.7")]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(resolver, "system_lookup", lookup)
    path = write(tmp_path, '[upstream]\nurl = ["http://gateway.ok:1", "http://gateway.bad:2"]\n')
    # Without --resolve nothing is looked up.
    assert main(["check", "-c", str(path)]) == 0
    assert looked_up == []
    capsys.readouterr()
    assert main(["check", "-c", str(path), "--resolve"]) == 2
    out, err = capsys.readouterr()
    assert looked_up == ["gateway.ok", "gateway.bad"]
    assert "http://gateway.ok:1 -> 10.0.0.7" in out
    assert err.splitlines() == [
        f"{path}: upstream.url: http://gateway.bad:2: cannot resolve gateway.bad: "
        "[Errno -2] Name or service not known"
    ]


def test_check_resolve_with_addresses_and_localhost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # localhost comes from /etc/hosts: nothing leaves the machine.
    path = write(tmp_path, '[upstream]\nurl = ["http://127.0.0.1:1", "http://localhost:2"]\n')
    assert main(["check", "-c", str(path), "--resolve"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:1 -> 127.0.0.1" in out
    assert out.endswith(f"{path}: ok\n")


def test_check_requires_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 2
    assert "-c/--config" in capsys.readouterr().err


# -- run -----------------------------------------------------------------------------------


def test_run_names_a_missing_file(
    tmp_path: Path, run_calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.toml"
    assert main(["run", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"dsproxy: {path}: cannot read it: No such file or directory\n"
    )
    assert run_calls.args == []


@pytest.mark.parametrize(
    ("command", "suggestion"),
    [
        (["run", "--upstream", "http://127.0.0.1:1", "--listen", "::16980"], "[::]:16980"),
        (["run", "--upstream", "http://127.0.0.1:1", "--admin", "::1:16981"], "[::1]:16981"),
        (["demo", "--listen", "::16980"], "[::]:16980"),
    ],
)
def test_unbracketed_ipv6_gets_the_bracketed_form(
    run_calls: Calls,
    demo_calls: Calls,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    suggestion: str,
) -> None:
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"must be written in brackets, like {suggestion}" in err
    assert "[:]" not in err
    assert run_calls.args == demo_calls.args == []


def test_run_with_flags_only(run_calls: Calls) -> None:
    run_calls.result = 7
    code = main(["run", "--listen", "127.0.0.1:8080", "--upstream", "http://[::1]:18080"])
    assert code == 7
    config = ran_with(run_calls)
    assert config.server.listen == (HostPort("127.0.0.1", 8080),)
    assert config.upstream.servers == (UpstreamServer("::1", 18080),)
    assert config.source is None


def test_run_with_a_file(tmp_path: Path, run_calls: Calls) -> None:
    path = write(tmp_path, UPSTREAM_TOML + "[server]\nworkers = 3\n")
    assert main(["run", "-c", str(path)]) == 0
    config = ran_with(run_calls)
    assert config.server.workers == 3
    assert config.source == path


def test_run_flags_override_the_file(tmp_path: Path, run_calls: Calls) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = ["127.0.0.1:1"]\nworkers = 3\nparser = "h11"\n'
        '[upstream]\nurl = "http://file:1"\n[admin]\nlisten = "127.0.0.1:2"\n'
        '[log]\nlevel = "error"\naccess = "json"\n',
    )
    argv = [
        "run", "-c", str(path),
        "--listen", "[::1]:10", "--listen", "127.0.0.1:11",
        "--upstream", "http://flag:2",
        "--admin", "off",
        "--workers", "2",
        "--parser", "auto",
        "--access-log", "off",
        "--log-level", "debug",
    ]  # fmt: skip
    assert main(argv) == 0
    config = ran_with(run_calls)
    assert config.server.listen == (HostPort("::1", 10), HostPort("127.0.0.1", 11))
    assert config.upstream.servers == (UpstreamServer("flag", 2),)
    assert config.admin.listen is None
    assert config.server.workers == 2
    assert config.server.parser == "auto"
    assert config.log.access == "off"
    assert config.log.level == "debug"
    assert config.source == path


def test_run_without_flags_keeps_the_file(tmp_path: Path, run_calls: Calls) -> None:
    path = write(tmp_path, UPSTREAM_TOML + '[log]\nlevel = "warning"\n')
    assert main(["run", "-c", str(path), "--workers", "1"]) == 0
    assert ran_with(run_calls).log.level == "warning"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "dsproxy: upstream.url: is required (give it in the file or with --upstream)"),
        (["run", "--upstream", "https://gw"], "dsproxy: upstream.url: 'https://gw': only http://"),
        (
            ["run", "--upstream", "http://gw:1", "--listen", "gw:80"],
            "dsproxy: server.listen: 'gw' is not an IPv4 address",
        ),
        (["run", "--upstream", "http://gw:1", "--workers", "0"], "dsproxy: server.workers: "),
        (["run", "--upstream", "http://gw:1", "--workers", "many"], "dsproxy: server.workers: "),
        (["run", "--upstream", "http://gw:1", "--parser", "x"], "dsproxy: server.parser: "),
        (["run", "--upstream", "http://gw:1", "--admin", "on"], "dsproxy: admin.listen: "),
        (["run", "--upstream", "http://gw:1", "--access-log", "x"], "dsproxy: log.access: "),
        (["run", "--upstream", "http://gw:1", "--log-level", "x"], "dsproxy: log.level: "),
        (
            ["run", "--upstream", "http://gw:1", "--admin", "127.0.0.1:16980"],
            "dsproxy: admin.listen: 127.0.0.1:16980 overlaps",
        ),
    ],
)
def test_run_config_errors_exit_2(
    run_calls: Calls, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert run_calls.args == []


def test_run_file_errors_exit_2(
    tmp_path: Path, run_calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[server]\nworkers = 0\n")
    assert main(["run", "-c", str(path), "--upstream", "http://gw:1"]) == 2
    # A key in the file: the file and the key are named, as `dsproxy check` names them.
    assert capsys.readouterr().err.startswith(f"dsproxy: {path}: server.workers: ")
    assert main(["run", "-c", str(tmp_path / "absent.toml")]) == 2
    assert capsys.readouterr().err.startswith(f"dsproxy: {tmp_path / 'absent.toml'}: cannot read")
    assert run_calls.args == []


def test_a_flag_fixes_what_the_file_lacks(tmp_path: Path, run_calls: Calls) -> None:
    path = write(tmp_path, "[server]\nworkers = 2\n")  # no upstream: check would refuse it
    assert main(["run", "-c", str(path), "--upstream", "http://gw:1"]) == 0
    assert ran_with(run_calls).upstream.servers == (UpstreamServer("gw", 1),)


# -- demo and probe ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "listen"),
    [
        (["demo"], None),
        (["demo", "--listen", "[::1]:8000"], HostPort("::1", 8000)),
        (["demo", "--listen", "127.0.0.1:0"], HostPort("127.0.0.1", 0)),
    ],
)
def test_demo_dispatch(demo_calls: Calls, argv: list[str], listen: HostPort | None) -> None:
    demo_calls.result = 3
    assert main(argv) == 3
    assert demo_calls.args == [(listen,)]


@pytest.mark.parametrize("listen", ["8000", "localhost:8000", "[::1]", "0.0.0.0:70000"])
def test_demo_bad_listen(
    demo_calls: Calls, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    assert main(["demo", "--listen", listen]) == 2
    err = capsys.readouterr().err
    assert "argument --listen: " in err
    assert "Traceback" not in err
    assert demo_calls.args == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["probe", "http://gw:80/"], ("http://gw:80/", None, 5.0, PLAIN)),
        (["probe", "http://gw:80/", "--ws", "/ws"], ("http://gw:80/", "/ws", 5.0, PLAIN)),
        (["probe", "--timeout", "1.5", "http://[::1]:1"], ("http://[::1]:1", None, 1.5, PLAIN)),
        (["probe", "--timeout", "500ms", "http://[::1]:1"], ("http://[::1]:1", None, 0.5, PLAIN)),
        (
            ["probe", "https://gw/", "--cacert", "ca.pem"],
            ("https://gw/", None, 5.0, {"cacert": Path("ca.pem"), "insecure": False}),
        ),
        (
            ["probe", "-k", "https://gw/"],
            ("https://gw/", None, 5.0, {"cacert": None, "insecure": True}),
        ),
    ],
)
def test_probe_dispatch(probe_calls: Calls, argv: list[str], expected: tuple[object, ...]) -> None:
    probe_calls.result = 1
    assert main(argv) == 1
    assert probe_calls.args == [expected]


def test_probe_cacert_and_insecure_exclude_each_other(
    probe_calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", "https://gw/", "-k", "--cacert", "ca.pem"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert probe_calls.args == []


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "inf", "nan", "0s", "5x"])
def test_probe_bad_timeout(
    probe_calls: Calls, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    assert main(["probe", "http://gw/", "--timeout", timeout]) == 2
    assert "argument --timeout: must be a number of seconds > 0" in capsys.readouterr().err
    assert probe_calls.args == []


def test_probe_needs_a_url(probe_calls: Calls, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe"]) == 2
    assert "URL" in capsys.readouterr().err


# -- TLS: check prints the certificate, run refuses a pair that does not load -----------------


def tls_toml(files: TlsFiles, key: Path | None = None) -> str:
    return (
        UPSTREAM_TOML
        + '[server]\ntls_listen = ["127.0.0.1:16443"]\n'
        + f'[tls]\ncert = "{files.cert}"\nkey = "{key or files.key}"\n'
    )


def test_check_prints_the_certificate(
    tmp_path: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, tls_toml(tls_files))
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    first, second = out.splitlines()
    assert first.startswith(f"{path}: tls.cert: subject ")
    assert "CN=localhost" in first
    assert "names DNS:localhost, IP:127.0.0.1, IP:::1; chain of 1; expires 3000-01-01" in first
    assert second == f"{path}: ok"
    assert err == ""


def test_check_a_key_that_does_not_match_exits_2_naming_tls(
    tmp_path: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_tls_files(tmp_path, prefix="other")
    path = write(tmp_path, tls_toml(tls_files, key=other.key))
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: tls.key: {other.key} does not match the certificate in tls.cert "
        f"({tls_files.cert})\n"
    )


def test_check_a_missing_certificate_file(
    tmp_path: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    tls_files.cert.unlink()
    path = write(tmp_path, tls_toml(tls_files))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"{path}: tls.cert: cannot read {tls_files.cert}: No such file or directory\n"


def test_check_an_expired_certificate_warns_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime

    files = make_tls_files(tmp_path, not_after=datetime.datetime(2021, 5, 6, tzinfo=datetime.UTC))
    path = write(tmp_path, tls_toml(files))
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "(EXPIRED " in out
    assert out.endswith(f"{path}: ok\n")
    assert err == (
        f"{path}: tls.cert: warning: the certificate in {files.cert} "
        "expired on 2021-05-06 00:00:00 UTC\n"
    )


def test_check_without_tls_listeners_leaves_the_files_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, UPSTREAM_TOML + '[tls]\ncert = "/nowhere.crt"\nkey = "/nowhere.key"\n')
    assert main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_run_tls_flags(tmp_path: Path, tls_files: TlsFiles, run_calls: Calls) -> None:
    argv = ["run", "--upstream", "http://127.0.0.1:1", "--tls-listen", "[::]:16443"]
    argv += ["--tls-listen", "127.0.0.1:8443", "--tls-cert", str(tls_files.cert)]
    argv += ["--tls-key", str(tls_files.key)]
    assert main(argv) == 0
    config = ran_with(run_calls)
    assert config.server.tls_listen == (HostPort("::", 16443), HostPort("127.0.0.1", 8443))
    assert (config.tls.cert, config.tls.key) == (tls_files.cert, tls_files.key)
    assert dict(config.overrides)["tls_listen"] == ("[::]:16443", "127.0.0.1:8443")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            [],
            "dsproxy: tls.cert: is required when server.tls_listen is set (or give --tls-cert",
        ),
        (["--tls-cert", "CERT", "--tls-key", "OTHER"], "dsproxy: tls.key: OTHER does not match"),
        (
            ["--tls-cert", "/absent.crt", "--tls-key", "KEY"],
            "dsproxy: tls.cert: cannot read /absent",
        ),
    ],
)
def test_run_refuses_a_pair_that_does_not_load(
    tmp_path: Path,
    tls_files: TlsFiles,
    run_calls: Calls,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    other = make_tls_files(tmp_path, prefix="other")
    names = {"CERT": str(tls_files.cert), "KEY": str(tls_files.key), "OTHER": str(other.key)}
    argv = ["run", "--upstream", "http://127.0.0.1:1", "--tls-listen", "127.0.0.1:0"]
    assert main(argv + [names.get(arg, arg) for arg in extra]) == 2
    err = capsys.readouterr().err
    for placeholder, value in names.items():
        message = message.replace(placeholder, value)
    assert err.startswith(message), err
    assert run_calls.args == []  # refused before anything started


# -- the top level -------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dsproxy {dsproxy.__version__}"
    import dsproxy.proxy.connection as hot

    compiled = hot.__file__ is not None and hot.__file__.endswith(".so")
    assert lines[1] == f"build: {'compiled' if compiled else 'pure'}"
    codec = "httptools" if importlib.util.find_spec("httptools") else "h11"
    assert lines[2] == f"codec: {codec} (parser = auto)"


def test_the_build_is_the_one_ci_asked_for() -> None:
    """``.ci/run`` sets DSPROXY_EXPECT_BUILD for each build it tests: prove it is that one."""
    expected = os.environ.get("DSPROXY_EXPECT_BUILD")
    if expected is None:
        pytest.skip("DSPROXY_EXPECT_BUILD is not set (CI sets it)")
    assert build_kind() == expected


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["check", "-h"], ["demo", "-h"], ["probe", "-h"]]
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("usage: dsproxy")


def test_run_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "-c FILE", "--listen ADDR", "--upstream URL", "--admin ADDR|off", "--workers N|auto",
        "--parser auto|h11|httptools", "--access-log combined|json|off", "--log-level LEVEL",
        "--tls-listen ADDR", "--tls-cert FILE", "--tls-key FILE",
    ):  # fmt: skip
        assert flag in out


@pytest.mark.parametrize(
    "argv", [[], ["serve"], ["run", "--bogus"], ["run", "extra"], ["check", "-c"], ["--listen"]]
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dsproxy")
    assert "Traceback" not in err
