"""dsproxy vs nginx benchmark runner (loopback only).

Starts the upstreams and the contenders on free loopback ports, runs the selected
suites, stops everything it started, and writes a markdown report to
``bench/results/<timestamp>.md`` (also printed). See ``bench/README.md``.

Contenders (each one worker, listening on ``[::]:P`` dual-stack, access log off):

* A  nginx with the seed config (README, "The nginx config it replaces"; map
     ``'' close``: one upstream connection per request)
* B  nginx tuned: ``upstream { keepalive 64; }`` and ``'' ""`` (keep-alive upstream)
* C  dsproxy ``--parser auto`` (httptools when installed)
* D  dsproxy ``--parser h11``
* E, F  ``bench/bareproxy.py`` with httptools / h11: the floor of a Python uvloop
     proxy (no header rules, timeouts or pool), small GET suite only
* G  dsproxy, the compiled build (mypyc), ``--parser auto``
* H  ``bench/h2floor.py``: the floor of a Python uvloop HTTP/2 server (the h2 library
     answering every request itself, no proxying), TLS suites only

Suites: ``http`` (wrk small GET), ``ws`` (WebSocket round trips), ``stream``
(1 GB upload and download, MB/s and peak RSS), ``idle`` (idle WebSocket sessions,
KiB per session), ``workers`` (dsproxy --workers 1 vs 2); and with TLS, where B, C, D
and G also listen with TLS (one self-signed certificate per run) and for HTTP/2 with
prior knowledge: ``h2`` (h2load, many streams per connection, over TLS and h2c),
``tls`` (full TLS handshakes per second; HTTP/1.1 over TLS against the same process's
cleartext rate), ``h2idle`` (KiB per idle HTTP/2 connection).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

sys.path.append(str(Path(__file__).resolve().parent.parent))
from bench.chart import Panel  # noqa: E402
from bench.chart import write as write_chart  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SUITES = ("http", "ws", "stream", "idle", "workers", "h2", "tls", "h2idle")
TLS_SUITES = ("h2", "tls", "h2idle")
ALL_CONTENDERS = ("A", "B", "C", "D", "E", "F", "G", "H")
LABELS = {
    "A": "A nginx seed ('' close)",
    "B": "B nginx tuned (keepalive 64)",
    "C": "C dsproxy --parser auto",
    "D": "D dsproxy --parser h11",
    "G": "G dsproxy compiled (mypyc), --parser auto",
    "E": "E bare Python proxy, httptools (floor)",
    "F": "F bare Python proxy, h11 (floor)",
    "H": "H bare h2 server, h2 library (floor)",
    "direct": "direct to upstream (ceiling)",
    "W1": "dsproxy auto --workers 1",
    "W2": "dsproxy auto --workers 2",
    "GW1": "dsproxy compiled --workers 1",
    "GW2": "dsproxy compiled --workers 2",
    "NW1": "nginx tuned, worker_processes 1",
    "NW2": "nginx tuned, worker_processes 2",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    kids = children_map()
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out


def traffic_pids(root: int) -> list[int]:
    """The processes that carry traffic: the leaves of the tree (nginx workers,
    dsproxy workers, or the single process when there is no supervisor)."""
    kids = children_map()
    tree = process_tree(root)
    return [p for p in tree if not kids.get(p)]


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def traffic(self) -> list[int]:
        return traffic_pids(self.pid)

    def rss_kib(self) -> int:
        return sum(status_kib(p, "VmRSS") for p in self.traffic())

    def hwm_kib(self) -> int:
        return sum(status_kib(p, "VmHWM") for p in self.traffic())

    def reset_hwm(self) -> None:
        for p in self.traffic():
            reset_hwm(p)

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in process_tree(self.pid))

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.alive():
            return
        tree = process_tree(self.pid)
        # SIGTERM; a second SIGTERM makes dsproxy skip its drain delay (shutdown.delay)
        for wait in (1.0, 5.0):
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=wait)
            if not self.alive():
                break
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=3)


def free_port() -> int:
    """A port free on both [::] and 0.0.0.0 (dual-stack bind succeeds)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        port: int = s.getsockname()[1]
    return port


def http_ok(port: int, host: str = "127.0.0.1", path: str = "/") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(256)
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="dsproxy-bench-"))
        self.tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        self.procs: list[Proc] = []
        self.notes: list[str] = []

    # ---- process management
    def spawn(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> Proc:
        logfile = self.tmp / f"{name}.log"
        fh = logfile.open("wb")
        popen = subprocess.Popen(
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env,
        )
        fh.close()
        proc = Proc(name, popen, logfile)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n"
                                   f"{proc.log_tail()}")
            if http_ok(port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} not ready on port {port}:\n{proc.log_tail()}")

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- nginx
    def nginx_conf(self, name: str, body: str, workers: int = 1) -> Path:
        d = self.tmp / name
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
            (d / sub).chmod(0o777)  # writable by the nginx worker user
        conf = d / "nginx.conf"
        conf.write_text(
            f"""worker_processes {workers};
worker_rlimit_nofile 65536;
error_log {d}/logs/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{body}
}}
"""
        )
        return conf

    def start_nginx(self, name: str, body: str, port: int, workers: int = 1) -> Proc:
        conf = self.nginx_conf(name, body, workers)
        d = conf.parent
        cmd = ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "logs/error.log"),
               "-g", f"daemon off; pid {d}/nginx.pid;"]
        proc = self.spawn(name, cmd)
        self.wait_ready(proc, port)
        return proc

    def start_upstream_nginx(self) -> tuple[Proc, int]:
        port = free_port()
        body = f"""  keepalive_requests 10000000;
  keepalive_timeout 300s;
  sendfile on;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /big.bin {{ root {self.tmp}; default_type application/octet-stream; }}
    location / {{ default_type text/plain; return 200 "ok"; }}
  }}"""
        return self.start_nginx("upstream-nginx", body, port), port

    def start_rawup(self) -> tuple[Proc, int]:
        port = free_port()
        proc = self.spawn("upstream-raw", [sys.executable, str(BENCH_DIR / "rawup.py"),
                                           "--port", str(port)])
        self.wait_ready(proc, port)
        return proc, port

    def start_contender(self, key: str, upstream_port: int, tag: str) -> tuple[Proc, int]:
        port = free_port()
        name = f"{key}-{tag}"
        if key == "A":
            body = f"""  client_max_body_size 0;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen [::]:{port} ipv6only=off backlog=4096;
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}"""
            return self.start_nginx(name, body, port), port
        if key in ("B", "NW1", "NW2"):
            body = f"""  client_max_body_size 0;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ""; }}
  server {{
    listen [::]:{port} ipv6only=off backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}"""
            workers = 2 if key == "NW2" else 1
            return self.start_nginx(name, body, port, workers), port
        if key in ("E", "F"):
            cmd = [sys.executable, str(BENCH_DIR / "bareproxy.py"), "--port", str(port),
                   "--upstream-port", str(upstream_port),
                   "--codec", "httptools" if key == "E" else "h11"]
            proc = self.spawn(name, cmd)
            self.wait_ready(proc, port)
            return proc, port
        if key in ("G", "GW1", "GW2"):
            # The compiled build lives in its own venv: run it from outside the checkout,
            # so `-m dsproxy` imports the installed (compiled) package, not the source.
            workers = 2 if key == "GW2" else 1
            cmd = dsproxy_cmd(port, upstream_port, "auto", workers,
                              python=self.args.compiled_python)
            proc = self.spawn(name, cmd, env=dict(os.environ), cwd=self.tmp)
            self.wait_ready(proc, port)
            return proc, port
        parser, workers = {"C": ("auto", 1), "D": ("h11", 1), "W1": ("auto", 1),
                           "W2": ("auto", 2)}[key]
        cmd = dsproxy_cmd(port, upstream_port, parser, workers)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = self.spawn(name, cmd, env=env)
        self.wait_ready(proc, port)
        return proc, port


def dsproxy_cmd(port: int, upstream_port: int, parser: str, workers: int,
                python: str = sys.executable) -> list[str]:
    return [python, "-m", "dsproxy", "run", "--listen", f"[::]:{port}",
            "--upstream", f"http://127.0.0.1:{upstream_port}", "--admin", "off",
            "--access-log", "off", "--parser", parser, "--workers", str(workers),
            "--log-level", "warning"]


def compiled_runnable(python: str) -> tuple[bool, str]:
    """Whether ``python`` runs a compiled dsproxy (``dsproxy --version`` says so)."""
    if not python:
        return False, "no compiled build given (--compiled-python, or bench/run.sh builds one)"
    try:
        r = subprocess.run([python, "-m", "dsproxy", "--version"], cwd="/", capture_output=True,
                           timeout=30, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python} -m dsproxy --version: {exc}"
    if "build: compiled" not in r.stdout:
        return False, f"{python} does not run a compiled dsproxy: {r.stdout or r.stderr!r}"
    return True, ""


def dsproxy_runnable() -> tuple[bool, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run([sys.executable, "-m", "dsproxy", "run", "--help"], cwd=REPO,
                           env=env, capture_output=True, timeout=30, text=True)
    except subprocess.TimeoutExpired:
        return False, "python -m dsproxy run --help timed out"
    if r.returncode != 0:
        return False, (r.stderr or r.stdout).strip().splitlines()[-1:][0] if (
            r.stderr or r.stdout).strip() else f"exit {r.returncode}"
    return True, ""


# --------------------------------------------------------------------------- clients

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: str
    cpu_us_per_req: float = 0.0


def run_wrk(url: str, duration: float, conns: int, threads: int,
            proc: Proc | None) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
           url]
    cpu0 = proc.cpu() if proc else 0.0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = proc.cpu() if proc else 0.0
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {r.stdout}\n{r.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errs = []
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs.append(f"non-2xx {m.group(1)}")
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        errs.append("socket " + m.group(1).strip())
    res = WrkResult(rps, reqs, parse_ms(lat["50"]), parse_ms(lat["99"]), "; ".join(errs))
    if proc and reqs:
        res.cpu_us_per_req = (cpu1 - cpu0) / reqs * 1e6
    return res


@dataclass
class WsResult:
    rate: float  # round trips / s
    proxy_us: float  # proxy CPU µs per round trip
    client_us: float
    upstream_us: float
    failed: int


def run_wsload_rt(port: int, duration: float, conns: int, procs: int,
                  proxy: Proc | None, upstream: Proc | None) -> WsResult:
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    cmds = [[sys.executable, str(BENCH_DIR / "wsload.py"), "rt", "--port", str(port),
             "--conns", str(n), "--duration", str(duration)] for n in per if n]
    cpu0 = proxy.cpu() if proxy else 0.0
    up0 = upstream.cpu() if upstream else 0.0
    client_cpu = 0.0
    ps = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c in cmds]
    rate = 0.0
    total = 0
    failed = 0
    for p in ps:
        try:
            out, err = p.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"wsload failed: {out}\n{err[-2000:]}")
        d = json.loads(lines[-1])
        rate += float(d["rate"])
        total += int(d["roundtrips"])
        failed += int(d["failed"])
        client_cpu += float(d.get("cpu_seconds", 0.0))
    cpu1 = proxy.cpu() if proxy else 0.0
    up1 = upstream.cpu() if upstream else 0.0
    if not total:
        return WsResult(rate, 0.0, 0.0, 0.0, failed)
    # proxy/upstream CPU includes handshakes and teardown (small next to the window)
    return WsResult(rate, (cpu1 - cpu0) / total * 1e6 if proxy else 0.0,
                    client_cpu / total * 1e6, (up1 - up0) / total * 1e6, failed)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if 100 <= status < 200:  # interim response: read the final one
        status, headers, rest2 = _read_head_from(sock, rest)
        return status, headers, rest2
    return status, headers, rest


def _read_head_from(sock: socket.socket, pending: bytes) -> tuple[int, dict[str, str], bytes]:
    class _Pre:
        def __init__(self) -> None:
            self.pending = pending

        def recv(self, n: int) -> bytes:
            if self.pending:
                out, self.pending = self.pending, b""
                return out
            return sock.recv(n)

    return _read_head(_Pre())  # type: ignore[arg-type]


def _read_chunked(sock: socket.socket, pending: bytes) -> int:
    """Payload bytes of a chunked body (RFC 9112 §7.1), counted without copying the data;
    -1 when the connection ends before the last chunk."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    data: bytes | memoryview = pending
    carry = b""  # an unfinished size line or CRLF
    left = 0  # data bytes of the current chunk still due
    need_crlf = False
    got = 0
    while True:
        pos = 0
        n = len(data)
        while pos < n:
            if left:
                take = min(left, n - pos)
                left -= take
                got += take
                pos += take
                if not left:
                    need_crlf = True
                continue
            end = bytes(data[pos : pos + 64]).find(b"\r\n")
            if end < 0:
                carry += bytes(data[pos:])
                break
            line = carry + bytes(data[pos : pos + end])
            carry = b""
            pos += end + 2
            if need_crlf:  # the CRLF that closes a chunk's data
                need_crlf = False
                continue
            size = int(line.split(b";")[0], 16)
            if size == 0:
                return got  # trailers (none from rawup) and the final CRLF are not waited for
            left = size
        if carry:
            # Rejoin the split line with what comes next.
            k = sock.recv_into(buf)
            if not k:
                return -1
            data = carry + bytes(view[:k])
            carry = b""
            continue
        k = sock.recv_into(buf)
        if not k:
            return -1
        data = view[:k]


def stream_transfer(port: int, direction: str, nbytes: int,
                    timeout: float) -> tuple[float, int, str]:
    """(MB/s, body bytes moved, status) for one upload or download through ``port``.

    A plain blocking-socket client: uploads send ``nbytes`` zeros in 1 MiB pieces with
    Content-Length (a generator, no file); downloads ``recv_into`` a reused buffer. It
    moves several GB/s on loopback, well above curl's ~1.2 GB/s."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        t0 = time.perf_counter()
        if direction == "upload":
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: bench\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % nbytes)
            piece = memoryview(bytes(1 << 20))
            left = nbytes
            while left:
                n = min(left, len(piece))
                sock.sendall(piece[:n])
                left -= n
            status, headers, body = _read_head(sock)
            want = int(headers.get("content-length", "0"))
            while len(body) < want:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            elapsed = time.perf_counter() - t0
            answer = body.decode(errors="replace").strip()
            code = str(status)
            if answer != str(nbytes):
                code += f" (upstream answered {' '.join(answer.split())[:60]!r})"
            return nbytes / elapsed / 1e6, nbytes if answer == str(nbytes) else 0, code
        if direction == "chunked":
            sock.sendall(b"GET /chunked?n=%d HTTP/1.1\r\nHost: bench\r\n\r\n" % nbytes)
            status, headers, body = _read_head(sock)
            if "chunked" not in headers.get("transfer-encoding", ""):
                return 0.0, 0, f"{status} (not chunked)"
            got = _read_chunked(sock, body)
            elapsed = time.perf_counter() - t0
            return got / elapsed / 1e6, got, str(status)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
        status, headers, body = _read_head(sock)
        want = int(headers.get("content-length", "-1"))
        got = len(body)
        buf = bytearray(1 << 20)
        while got < want:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - t0
        return got / elapsed / 1e6, got, str(status)


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)  # drawn into the report's SVG chart

    def panel(self, title: str, unit: str, rows: Sequence[tuple[str, float]]) -> None:
        self.panels.append(Panel(title, unit, list(rows)))

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
              notes: Sequence[str] = ()) -> None:
        lines = [f"## {title}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if notes:
            lines.append("")
            lines += [f"- {n}" for n in notes]
        self.sections.append("\n".join(lines))
        print("\n" + self.sections[-1] + "\n", file=sys.stderr, flush=True)


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}" if base else "-"


def cpu_busy(seconds: float) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def machine_info() -> list[str]:
    def cmd_out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "?"

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    versions = []
    for mod in ("uvloop", "httptools", "h11", "h2"):
        try:
            m = __import__(mod)
            versions.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            versions.append(f"{mod} (not installed)")
    return [
        f"CPUs (nproc): {os.cpu_count()}; CPU: {model}; RAM: {mem}",
        f"kernel: {platform.release()}; Python {platform.python_version()}; "
        + ", ".join(versions),
        f"{cmd_out(['nginx', '-v']).replace('nginx version: ', '')}; "
        f"wrk {cmd_out(['wrk', '-v']).split()[1]}; "
        f"h2load {cmd_out(['h2load', '--version']).split()[-1]}; "
        f"Python's {ssl.OPENSSL_VERSION}",
    ]


# --------------------------------------------------------------------------- suites


def interleave(keys: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    for r in range(rounds):
        for k in keys:
            yield r, k


def suite_http(b: Bench, rep: Report, cont: dict[str, tuple[Proc, int]]) -> None:
    a = b.args
    keys = list(cont)
    for k in keys:  # warm up (pools, caches)
        run_wrk(f"http://127.0.0.1:{cont[k][1]}/", 1, a.conns, 1, None)
    res: dict[str, list[WrkResult]] = {k: [] for k in keys}
    for r, k in interleave(keys, a.rounds):
        proc, port = cont[k]
        w = run_wrk(f"http://127.0.0.1:{port}/", a.duration, a.conns, 1, proc)
        res[k].append(w)
        log(f"http round {r + 1} {k}: {w.rps:.0f} req/s p50 {w.p50_ms:.2f} ms "
            f"p99 {w.p99_ms:.2f} ms cpu {w.cpu_us_per_req:.1f} us/req {w.errors}")
    v6: dict[str, WrkResult] = {}
    for k in keys:
        proc, port = cont[k]
        v6[k] = run_wrk(f"http://[::1]:{port}/", min(a.duration, 5), a.conns, 1, proc)
        log(f"http [::1] {k}: {v6[k].rps:.0f} req/s {v6[k].errors}")
    med = {k: statistics.median(x.rps for x in res[k]) for k in keys}
    base = med.get("B")
    rows = []
    for k in keys:
        errs = "; ".join(sorted({x.errors for x in res[k] + [v6[k]] if x.errors})) or "0"
        rows.append([
            LABELS[k], fmt(med[k]), ratio(med[k], base),
            fmt(statistics.median(x.p50_ms for x in res[k]), 2),
            fmt(statistics.median(x.p99_ms for x in res[k]), 2),
            fmt(statistics.median(x.cpu_us_per_req for x in res[k]), 1),
            fmt(v6[k].rps), errs,
        ])
    rep.panel("small GET, req/s (higher is better)", "req/s", [(LABELS[k], med[k]) for k in keys])
    rep.panel("small GET, p99 latency (lower is better)", "ms",
              [(LABELS[k], statistics.median(x.p99_ms for x in res[k])) for k in keys])
    rep.table(
        f"Small GET through the proxy (wrk -t1 -c{a.conns} -d{a.duration:g}s, "
        f"median of {a.rounds} interleaved rounds)",
        ["contender", "req/s", "vs B", "p50 ms", "p99 ms", "proxy CPU µs/req",
         "req/s via [::1]", "errors"],
        rows,
        ["upstream: nginx `return 200 \"ok\"` (1 worker); client, proxy and upstream share "
         "the machine's CPUs",
         "proxy CPU µs/req = (utime+stime of the proxy's processes) / requests; "
         "1e6 / that = req/s one core could do",
         "[::1] column: one run per contender against the same dual-stack socket over IPv6"],
    )


def suite_workers(b: Bench, rep: Report, upstream_port: int) -> None:
    """1 and 2 workers of each: nginx tuned, dsproxy, and the compiled build when present."""
    a = b.args
    keys = ["NW1", "NW2", "W1", "W2"]
    if a.compiled_python and compiled_runnable(a.compiled_python)[0]:
        keys += ["GW1", "GW2"]
    cont = {}
    try:
        for k in keys:
            cont[k] = b.start_contender(k, upstream_port, "workers")
        for k in cont:
            run_wrk(f"http://127.0.0.1:{cont[k][1]}/", 1, a.conns, 1, None)
        res: dict[str, list[WrkResult]] = {k: [] for k in cont}
        for r, k in interleave(list(cont), a.rounds):
            proc, port = cont[k]
            w = run_wrk(f"http://127.0.0.1:{port}/", a.duration, a.conns, a.wrk_threads, proc)
            res[k].append(w)
            log(f"workers round {r + 1} {k}: {w.rps:.0f} req/s {w.errors}")
        med = {k: statistics.median(x.rps for x in res[k]) for k in cont}
        rows = []
        for k in cont:
            same_nginx = med["NW2" if k.endswith("2") else "NW1"]
            one_worker = med[k[:-1] + "1"]
            rows.append([LABELS[k], fmt(med[k]), ratio(med[k], one_worker),
                         ratio(med[k], same_nginx),
                         fmt(statistics.median(x.p50_ms for x in res[k]), 2),
                         fmt(statistics.median(x.p99_ms for x in res[k]), 2),
                         "; ".join(sorted({x.errors for x in res[k] if x.errors})) or "0"])
        rep.table(
            f"Workers: 1 and 2 of each (wrk -t{a.wrk_threads} -c{a.conns} -d{a.duration:g}s, "
            f"median of {a.rounds})",
            ["contender", "req/s", "vs its 1 worker", "vs nginx, same workers", "p50 ms",
             "p99 ms", "errors"], rows,
            [f"the machine has {os.cpu_count()} CPUs shared by wrk, the upstream nginx and "
             "the proxy workers, so 2 workers cannot double"],
        )
    finally:
        for proc, _ in cont.values():
            b.stop(proc)


def suite_ws(b: Bench, rep: Report, cont: dict[str, tuple[Proc, int]], up_port: int,
             upstream: Proc) -> None:
    a = b.args
    targets: dict[str, tuple[Proc | None, int]] = {"direct": (None, up_port)}
    targets.update(cont)
    keys = list(targets)
    for k in keys:
        run_wsload_rt(targets[k][1], 1, a.ws_conns, a.ws_procs, None, None)
    res: dict[str, list[WsResult]] = {k: [] for k in keys}
    for r, k in interleave(keys, a.rounds):
        proc, port = targets[k]
        x = run_wsload_rt(port, a.duration, a.ws_conns, a.ws_procs, proc, upstream)
        res[k].append(x)
        log(f"ws round {r + 1} {k}: {x.rate:.0f} rt/s cpu proxy {x.proxy_us:.1f} "
            f"client {x.client_us:.1f} upstream {x.upstream_us:.1f} us/rt failed {x.failed}")
    med = {k: statistics.median(x.rate for x in res[k]) for k in keys}
    base = med.get("B")
    rows = []
    for k in keys:
        def m(attr: str, k: str = k) -> str:
            return fmt(statistics.median(getattr(x, attr) for x in res[k]), 1)

        rows.append([LABELS[k], fmt(med[k]), ratio(med[k], base) if k != "direct" else "-",
                     m("proxy_us") if k != "direct" else "-", m("client_us"),
                     m("upstream_us"), str(max(x.failed for x in res[k]))])
    rep.table(
        f"WebSocket round trips ({a.ws_conns} sessions, 16-byte masked frames, "
        f"{a.duration:g}s, median of {a.rounds})",
        ["contender", "round trips/s", "vs B", "proxy CPU µs/rt", "client CPU µs/rt",
         "upstream CPU µs/rt", "failed sessions"],
        rows,
        ["upstream: raw asyncio echo (101 then echo bytes); client: bench/wsload.py "
         f"({a.ws_procs} process(es), uvloop, no frame parsing)",
         "the ceiling row is client -> upstream with no proxy. When client + upstream + proxy "
         "CPU per round trip times the rate reaches the CPU count, the machine, not the "
         "proxy, is the limit: then compare the proxy CPU µs/rt column"],
    )


def suite_stream(b: Bench, rep: Report, down: dict[str, tuple[Proc, int]], down_up: int,
                 up: dict[str, tuple[Proc, int]], up_up: int) -> None:
    a = b.args
    rows = []
    down_rates: list[tuple[str, float]] = []
    up_rates: list[tuple[str, float]] = []
    timeout = max(120.0, a.stream_mb / 10)
    # warm up: the first read of the sparse file fills the page cache (slow, not measured)
    stream_transfer(down_up, "download", a.stream_mb * 1024 * 1024, timeout)
    for k in ["direct", *down]:
        results = []
        for direction in ("download", "upload", "chunked"):
            if k == "direct":
                proc: Proc | None = None
                port = down_up if direction == "download" else up_up
            else:
                proc, port = (down if direction == "download" else up)[k]
            if proc:
                proc.reset_hwm()
                base_rss = proc.rss_kib()
            speeds = []
            code = ""
            for _ in range(a.stream_rounds):
                mbs, nbytes, code = stream_transfer(port, direction,
                                                    a.stream_mb * 1024 * 1024, timeout)
                speeds.append(mbs)
                if nbytes != a.stream_mb * 1024 * 1024 or not code.startswith("200"):
                    code += f" ({nbytes} bytes)"
            hwm = proc.hwm_kib() if proc else 0
            results.append((statistics.median(speeds), hwm, base_rss if proc else 0, code))
            log(f"stream {direction} {k}: {statistics.median(speeds):.0f} MB/s "
                f"peak RSS {hwm / 1024:.1f} MiB code {code}")
        (dmbs, dhwm, _, dcode), (umbs, uhwm, _, ucode), (cmbs, chwm, _, ccode) = results
        ok = dcode == ucode == ccode == "200"
        status = "ok" if ok else f"down {dcode}; up {ucode}; chunked {ccode}"
        proxied = k != "direct"
        down_rates.append((LABELS[k], dmbs))
        up_rates.append((LABELS[k], umbs))
        rows.append([LABELS[k], fmt(dmbs), fmt(dhwm / 1024, 1) if proxied else "-",
                     fmt(umbs), fmt(uhwm / 1024, 1) if proxied else "-",
                     fmt(cmbs), fmt(chwm / 1024, 1) if proxied else "-", status])
    mb = a.stream_mb
    rep.panel(f"streamed download of {mb} MiB, MB/s (higher is better)", "MB/s", down_rates)
    rep.panel(f"streamed upload of {mb} MiB, MB/s (higher is better)", "MB/s", up_rates)
    rep.table(
        f"Streaming {mb} MiB through the proxy ({a.stream_rounds} run(s) each)",
        ["contender", "download MB/s", "peak RSS MiB (down)", "upload MB/s",
         "peak RSS MiB (up)", "chunked download MB/s", "peak RSS MiB (chunked)", "status"],
        rows,
        ["download: GET of a sparse file served by the upstream nginx (sendfile); upload: "
         "POST with Content-Length of zeros from a generator to the raw upstream, which "
         "discards the body and answers the byte count (checked); chunked download: GET of "
         "a chunked body from the raw upstream (256 KiB chunks; the client decodes the "
         "chunks it receives and checks the payload size); client: a blocking-socket "
         "loop in bench/run.py; MB = 10^6 bytes",
         "peak RSS = VmHWM of the proxy's traffic process(es) (nginx: the worker), reset "
         "before each transfer via /proc/PID/clear_refs",
         "nginx A/B keep nginx's default proxy_request_buffering / proxy_buffering on: "
         "the upload is spooled to a temp file before it is sent upstream; "
         "client_max_body_size 0 is added so the upload is accepted"],
    )


@dataclass
class IdleResult:
    opened: int
    failed: int
    alive: str  # still open when the client let go ("?" when it did not say)
    before_kib: int  # VmRSS of the server's traffic processes before and 2 s after
    after_kib: int

    @property
    def per_conn_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.opened if self.opened else 0.0


def hold_idle(proc: Proc, cmd: Sequence[str]) -> IdleResult:
    """Runs an idle client (``READY <open> <failed>``, then holds until a line on stdin,
    then ``DONE <alive>``) and reads the server's RSS before and 2 s after READY."""
    time.sleep(0.5)
    before = proc.rss_kib()
    p = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdin is not None
    assert p.stdout is not None
    try:
        line = read_line(p.stdout, 240)
        m = re.match(r"READY (\d+) (\d+)", line)
        if not m:
            raise RuntimeError(f"{Path(cmd[1]).name} idle: {line!r}")
        opened, failed = int(m.group(1)), int(m.group(2))
        time.sleep(2)
        after = proc.rss_kib()
        p.stdin.write("\n")
        p.stdin.flush()
        done = read_line(p.stdout, 60)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
        if p.poll() is None:
            p.kill()
            p.wait()
    alive = done.split()[1] if done.startswith("DONE") else "?"
    return IdleResult(opened, failed, alive, before, after)


def suite_idle(b: Bench, rep: Report, cont: dict[str, tuple[Proc, int]]) -> None:
    a = b.args
    rows = []
    per_session: list[tuple[str, float]] = []
    for k, (proc, port) in cont.items():
        cmd = [sys.executable, str(BENCH_DIR / "wsload.py"), "idle", "--port", str(port),
               "--sessions", str(a.idle_sessions), "--concurrency", "100", "--hold", "300"]
        x = hold_idle(proc, cmd)
        log(f"idle {k}: {x.opened} open, {x.failed} failed, {x.alive} alive at end, RSS "
            f"{x.before_kib / 1024:.1f} -> {x.after_kib / 1024:.1f} MiB, "
            f"{x.per_conn_kib:.1f} KiB/session")
        rows.append([LABELS[k], str(x.opened), str(x.failed), x.alive,
                     fmt(x.before_kib / 1024, 1), fmt(x.after_kib / 1024, 1),
                     fmt(x.per_conn_kib, 1)])
        per_session.append((LABELS[k], x.per_conn_kib))
    rep.panel("memory per idle WebSocket session, KiB (lower is better)", "KiB", per_session)
    rep.table(
        f"Idle WebSocket sessions ({a.idle_sessions} opened through each proxy)",
        ["contender", "open", "failed", "alive at end", "RSS before MiB", "RSS after MiB",
         "KiB / session"],
        rows,
        ["RSS = VmRSS of the proxy's traffic process(es), 2 s after the last session opened; "
         "each session is a client connection plus an upstream connection"],
    )


def read_line(stream: IO[str], timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise RuntimeError("timed out waiting for the load client")
        return stream.readline().strip()
    finally:
        sel.close()


# --------------------------------------------------------------------------- TLS, HTTP/2

TLS_LABELS = {
    "B": "B nginx tuned, ssl + http2",
    "C": "C dsproxy --parser auto",
    "D": "D dsproxy --parser h11",
    "G": "G dsproxy compiled (mypyc), --parser auto",
    "H": "H bare h2 server, h2 library (floor)",
}
DSPROXY_KEYS = ("C", "D", "G")


@dataclass
class TlsTarget:
    """A contender of the TLS suites and its listeners (port 0: it has no such listener)."""

    proc: Proc
    plain: int  # HTTP/1.1, cleartext
    tls: int  # TLS with ALPN h2 and http/1.1 (the floor: h2 only)
    h2c: int  # HTTP/2 with prior knowledge, cleartext
    # why an endpoint is not measured: "https" (HTTP/1.1 over TLS), "tls" (HTTP/2 over TLS),
    # "h2c" (HTTP/2 with prior knowledge)
    missing: dict[str, str] = field(default_factory=dict)


def make_cert(directory: Path, key_type: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1, and its key (PEM)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec"
              else ["-newkey", "rsa:2048"])
    cmd = ["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2", "-subj", "/CN=localhost",
           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
           "-keyout", str(key), "-out", str(cert)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl req failed: {r.stderr.strip()[-500:]}")
    key.chmod(0o644)  # read by the nginx master (root) and the Python servers alike
    return cert, key


def nginx_tls_body(upstream_port: int, pool: int, cert: Path, key: Path, plain: int,
                   tls: int, h2c: int) -> str:
    """Contender B's proxy config with three listeners: cleartext HTTP/1.1, TLS (ALPN h2 and
    http/1.1) and h2c with prior knowledge. The ``listen … http2`` parameter, not the
    ``http2 on`` directive of nginx 1.25.1: Debian 12's nginx 1.22 knows only the former,
    and later versions still take it (with a deprecation warning)."""
    location = """    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }"""

    def server(port: int, params: str) -> str:
        listen = f"    listen [::]:{port}{params} ipv6only=off backlog=4096;"
        return f"  server {{\n{listen}\n{location}\n  }}"

    return f"""  client_max_body_size 0;
  # h2load -D does not reconnect after nginx's GOAWAY at keepalive_requests (default 1000)
  keepalive_requests 10000000;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive {pool}; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ""; }}
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_protocols TLSv1.2 TLSv1.3;
{server(plain, "")}
{server(tls, " ssl http2")}
{server(h2c, " http2")}"""


def dsproxy_tls_toml(path: Path, upstream_port: int, pool: int, cert: Path, key: Path,
                     tls: int) -> Path:
    path.write_text(f"""[server]
tls_listen = ["[::]:{tls}"]
h2c = true

[upstream]
url = "http://127.0.0.1:{upstream_port}"
keepalive = {pool}

[tls]
cert = "{cert}"
key = "{key}"
""")
    return path


def h2_check(port: int, tls: bool, timeout: float = 5.0) -> str:
    """Empty when ``GET /`` over HTTP/2 (TLS with ALPN h2, or prior knowledge) gets a 200
    on ``port``, else what went wrong."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import ConnectionTerminated, ResponseReceived, StreamEnded, StreamReset
    from h2.exceptions import ProtocolError

    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    with contextlib.ExitStack() as stack:
        stack.callback(raw.close)
        sock = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            try:
                sock = ctx.wrap_socket(raw, server_hostname="localhost")
            except (OSError, ssl.SSLError) as exc:
                return f"TLS handshake on port {port}: {exc}"
            stack.callback(sock.close)
            if sock.selected_alpn_protocol() != "h2":
                return f"ALPN on port {port} chose {sock.selected_alpn_protocol()!r}, not h2"
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https" if tls else b"http"),
                              (b":authority", b"localhost"), (b":path", b"/")],
                          end_stream=True)
        status = b""
        try:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(65536)
                if not data:
                    return f"port {port} closed the connection before a response"
                for event in conn.receive_data(data):
                    if isinstance(event, ResponseReceived):
                        status = dict(event.headers).get(b":status", b"")
                    elif isinstance(event, StreamEnded):
                        return "" if status == b"200" else f"status {status.decode()}"
                    elif isinstance(event, StreamReset | ConnectionTerminated):
                        return f"port {port}: {event}"
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, ProtocolError) as exc:
            return f"port {port}: {exc}"
    return f"port {port}: no response"  # unreachable: the loop returns


def https_check(port: int, timeout: float = 5.0) -> str:
    """Empty when ``GET /`` over HTTP/1.1 over TLS (ALPN http/1.1) gets a 200 on ``port``,
    else what went wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            head = sock.recv(256)
    except (OSError, ssl.SSLError) as exc:
        return f"HTTP/1.1 over TLS on port {port}: {exc}"
    if not head.startswith(b"HTTP/1.1 200"):
        return f"HTTP/1.1 over TLS on port {port}: {head[:40]!r}"
    return ""


def start_tls_contender(b: Bench, key: str, upstream_port: int, cert: Path, keyfile: Path,
                        pool: int) -> TlsTarget:
    """Starts contender ``key`` with TLS and h2c listeners; checks HTTP/2 on each of them
    and records the ones that do not answer in ``missing`` (not measured)."""
    plain, tls, h2c = free_port(), free_port(), free_port()
    name = f"{key}-tls"
    if key == "B":
        body = nginx_tls_body(upstream_port, pool, cert, keyfile, plain, tls, h2c)
        target = TlsTarget(b.start_nginx(name, body, plain), plain, tls, h2c)
    elif key == "H":
        cmd = [sys.executable, str(BENCH_DIR / "h2floor.py"), "--tls-port", str(tls),
               "--h2c-port", str(h2c), "--cert", str(cert), "--key", str(keyfile)]
        proc = b.spawn(name, cmd)
        deadline = time.monotonic() + 30
        while (why := h2_check(h2c, tls=False, timeout=2)) and time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n"
                                   f"{proc.log_tail()}")
            time.sleep(0.1)
        if why:
            raise RuntimeError(f"{name} not ready: {why}\n{proc.log_tail()}")
        target = TlsTarget(proc, 0, tls, h2c)
    else:
        parser = "h11" if key == "D" else "auto"
        conf = dsproxy_tls_toml(b.tmp / f"{name}.toml", upstream_port, pool, cert, keyfile, tls)
        if key == "G":  # the installed compiled package, run from outside the checkout
            cmd = [*dsproxy_cmd(plain, upstream_port, parser, 1,
                                python=b.args.compiled_python), "-c", str(conf)]
            proc = b.spawn(name, cmd, env=dict(os.environ), cwd=b.tmp)
        else:
            cmd = [*dsproxy_cmd(plain, upstream_port, parser, 1), "-c", str(conf)]
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
            proc = b.spawn(name, cmd, env=env)
        b.wait_ready(proc, plain)
        # dsproxy's h2c is on its cleartext listener, beside HTTP/1.1
        target = TlsTarget(proc, plain, tls, plain)
    if key == "H":
        target.missing["https"] = "it speaks HTTP/2 only"
    elif why := https_check(target.tls):
        target.missing["https"] = why
        log(f"{TLS_LABELS[key]}: HTTP/1.1 over TLS not measured: {why}")
    for endpoint, port in (("tls", target.tls), ("h2c", target.h2c)):
        if why := h2_check(port, tls=endpoint == "tls"):
            target.missing[endpoint] = why
            log(f"{TLS_LABELS[key]}: HTTP/2 over {endpoint} not measured: {why}")
    return target


def start_tls_set(b: Bench, keys: Sequence[str], upstream_port: int, cert: Path,
                  keyfile: Path, pool: int, notes: list[str]) -> dict[str, TlsTarget]:
    out: dict[str, TlsTarget] = {}
    for k in keys:
        try:
            out[k] = start_tls_contender(b, k, upstream_port, cert, keyfile, pool)
        except RuntimeError as exc:
            notes.append(f"{TLS_LABELS[k]} not started for the TLS suites: "
                         f"{str(exc).splitlines()[0]}")
            log(notes[-1])
            continue
        t = out[k]
        log(f"{TLS_LABELS[k]}: http [::]:{t.plain or '-'} tls [::]:{t.tls} h2c [::]:{t.h2c}"
            f" -> 127.0.0.1:{upstream_port}")
    return out


@dataclass
class H2Result:
    rps: float
    ok: int  # 2xx responses
    mean_ms: float  # h2load's mean time for a request
    errors: str
    cpu_us_per_req: float = 0.0


def run_h2load(url: str, duration: float, conns: int, streams: int,
               proc: Proc | None) -> H2Result:
    cmd = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{max(1, round(duration))}", url]
    cpu0 = proc.cpu() if proc else 0.0
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return H2Result(0.0, 0, 0.0, "h2load timed out")
    cpu1 = proc.cpu() if proc else 0.0
    out = r.stdout
    fin = re.search(r"finished in \S+, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    lat = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if r.returncode != 0 or not (fin and req and codes and lat):
        return H2Result(0.0, 0, 0.0, f"h2load failed: {(out + r.stderr).strip()[-300:]!r}")
    ok = int(codes.group(1))
    errs = []
    for name, value in (("failed", req.group(5)), ("errored", req.group(6)),
                        ("timeout", req.group(7))):
        if int(value):
            errs.append(f"{name} {value}")
    not_2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    if not_2xx:
        errs.append(f"non-2xx {not_2xx}")
    res = H2Result(float(fin.group(1)), ok, parse_ms(lat.group(1)), "; ".join(errs))
    if proc and ok:
        res.cpu_us_per_req = (cpu1 - cpu0) / ok * 1e6
    return res


@dataclass
class HandshakeResult:
    rate: float  # connections / s, each a full handshake and one request
    conns: int
    failed: int
    resumed: int
    proxy_us: float  # server CPU µs per connection
    client_us: float
    tls: str  # version and cipher the client saw


def run_handshakes(port: int, duration: float, conns: int, proc: Proc | None) -> HandshakeResult:
    cmd = [sys.executable, str(BENCH_DIR / "tlsload.py"), "handshake", "--port", str(port),
           "--conns", str(conns), "--duration", str(duration)]
    cpu0 = proc.cpu() if proc else 0.0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = proc.cpu() if proc else 0.0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"tlsload handshake failed: {r.stdout}\n{r.stderr[-2000:]}")
    d = json.loads(lines[-1])
    n = int(d["connections"])
    return HandshakeResult(
        float(d["rate"]), n, int(d["failed"]), int(d["resumed"]),
        (cpu1 - cpu0) / n * 1e6 if proc and n else 0.0,
        float(d["cpu_seconds"]) / n * 1e6 if n else 0.0,
        f"{d.get('version', '?')} {d.get('cipher', '')}".strip())


def target_note(kind: str, k: str, value: float, base: float | None, want: float,
                base_name: str) -> str:
    if not base:
        return f"{TLS_LABELS[k]}: {kind}: no {base_name} figure to compare with"
    r = value / base
    return (f"{TLS_LABELS[k]}: {kind} {r:.2f}x of {base_name} "
            f"(target >= {want:g}x: {'met' if r >= want else 'missed'})")


def suite_h2(b: Bench, rep: Report, targets: dict[str, TlsTarget]) -> None:
    a = b.args
    urls = {"tls": "https://127.0.0.1:{}/", "h2c": "http://127.0.0.1:{}/"}
    runs = [(k, mode) for k, t in targets.items() for mode in ("tls", "h2c")
            if mode not in t.missing]
    for k, mode in runs:  # warm up (pools, caches)
        t = targets[k]
        run_h2load(urls[mode].format(getattr(t, mode)), 1, a.h2_conns, a.h2_streams, None)
    res: dict[tuple[str, str], list[H2Result]] = {run: [] for run in runs}
    for r in range(a.rounds):
        for k, mode in runs:
            t = targets[k]
            x = run_h2load(urls[mode].format(getattr(t, mode)), a.duration, a.h2_conns,
                           a.h2_streams, t.proc)
            res[(k, mode)].append(x)
            log(f"h2 round {r + 1} {k} {mode}: {x.rps:.0f} req/s mean {x.mean_ms:.2f} ms "
                f"cpu {x.cpu_us_per_req:.1f} us/req {x.errors}")
    med = {run: statistics.median(x.rps for x in xs) for run, xs in res.items()}
    rows = []
    notes = []
    for k, t in targets.items():
        row = [TLS_LABELS[k]]
        for mode in ("tls", "h2c"):
            if (k, mode) not in med:
                row += ["missing", "-", "-", "-", "-"]
                notes.append(f"{TLS_LABELS[k]}, {mode}: not measured ({t.missing[mode]})")
                continue
            xs = res[(k, mode)]
            v = med[(k, mode)]
            row += [fmt(v), ratio(v, med.get(("B", mode))), ratio(v, med.get(("H", mode))),
                    fmt(statistics.median(x.cpu_us_per_req for x in xs), 1),
                    fmt(statistics.median(x.mean_ms for x in xs), 2)]
            if k in DSPROXY_KEYS:
                notes.append(target_note(f"HTTP/2 over {mode}", k, v, med.get(("H", mode)),
                                         0.8, "the bare h2 floor H"))
        errs = "; ".join(sorted({x.errors for mode in ("tls", "h2c")
                                 for x in res.get((k, mode), []) if x.errors})) or "0"
        rows.append([*row, errs])
    rep.panel("HTTP/2 over TLS, req/s (higher is better)", "req/s",
              [(TLS_LABELS[k], v) for (k, mode), v in med.items() if mode == "tls"])
    rep.panel("HTTP/2 cleartext (h2c), req/s (higher is better)", "req/s",
              [(TLS_LABELS[k], v) for (k, mode), v in med.items() if mode == "h2c"])
    rep.table(
        f"HTTP/2 through the proxy (h2load -t1 -c{a.h2_conns} -m{a.h2_streams} "
        f"-D{max(1, round(a.duration))}, median of {a.rounds} interleaved rounds)",
        ["contender", "TLS h2 req/s", "vs B", "vs H", "CPU µs/req", "mean ms",
         "h2c req/s", "vs B", "vs H", "CPU µs/req", "mean ms", "errors"],
        rows,
        [f"{a.h2_conns} connections with up to {a.h2_streams} streams each; TLS: ALPN h2, "
         "the same certificate for every contender; h2c: HTTP/2 with prior knowledge "
         "(nginx: a `listen … http2` without ssl; dsproxy: server.h2c = true)",
         "upstream: nginx `return 200 \"ok\"` over HTTP/1.1 keep-alive, the pools sized for "
         f"every stream at once (nginx `keepalive {upstream_pool(a)}`, dsproxy "
         f"upstream.keepalive = {upstream_pool(a)}); H answers itself (no upstream)",
         "CPU µs/req = (utime+stime of the server's processes) / 2xx responses",
         *notes],
    )


def suite_tls(b: Bench, rep: Report, targets: dict[str, TlsTarget]) -> None:
    a = b.args
    # Handshakes: the floor speaks h2 only and is left out (the client offers http/1.1).
    hs_keys = [k for k, t in targets.items() if "https" not in t.missing]
    gone = {k: t.missing["https"] for k, t in targets.items() if k != "H" and "https" in t.missing}
    for k in hs_keys:
        run_handshakes(targets[k].tls, 1, a.tls_conns, None)
    hs: dict[str, list[HandshakeResult]] = {k: [] for k in hs_keys}
    for r, k in interleave(hs_keys, a.rounds):
        t = targets[k]
        x = run_handshakes(t.tls, a.duration, a.tls_conns, t.proc)
        hs[k].append(x)
        log(f"tls handshakes round {r + 1} {k}: {x.rate:.0f}/s cpu {x.proxy_us:.0f} us "
            f"client {x.client_us:.0f} us failed {x.failed} resumed {x.resumed} {x.tls}")
    rows = [[TLS_LABELS[k], "missing", *["-"] * 7] for k in gone]
    hmed = {k: statistics.median(x.rate for x in xs) for k, xs in hs.items()}
    # the client is the limit here (see the notes): 1e6 / server CPU µs is the fair figure
    server_us = {k: statistics.median(x.proxy_us for x in xs) for k, xs in hs.items()}
    per_core = {k: 1e6 / us if us else 0.0 for k, us in server_us.items()}
    for k, xs in hs.items():
        rows.append([TLS_LABELS[k], fmt(hmed[k]), fmt(server_us[k]), fmt(per_core[k]),
                     ratio(per_core[k], per_core.get("B")),
                     fmt(statistics.median(x.client_us for x in xs)),
                     str(sum(x.resumed for x in xs)), str(sum(x.failed for x in xs)),
                     xs[-1].tls])
    rep.panel("full TLS handshakes per second per server core, 1e6 / server CPU µs per "
              "connection (higher is better)", "conn/s",
              [(TLS_LABELS[k], v) for k, v in per_core.items()])
    rep.table(
        f"TLS handshakes (a new connection per request, {a.tls_conns} at a time, "
        f"{a.duration:g}s, median of {a.rounds} interleaved rounds)",
        ["contender", "connections/s", "server CPU µs/conn", "per server core /s", "vs B",
         "client CPU µs/conn", "resumed", "failed", "TLS"],
        rows,
        ["client: bench/tlsload.py handshake: each connection is a TCP connect, a full TLS "
         "handshake (ALPN http/1.1, no session offered: nothing can be resumed), `GET /` "
         "with `Connection: close` and the response to EOF; the servers keep their defaults "
         "(TLS 1.3 session tickets issued); key type "
         f"{'ECDSA P-256' if a.tls_key_type == 'ec' else 'RSA 2048'}",
         "the client is one Python process and costs more per connection than the servers "
         "(it verifies the server's signature; they sign): it, not the server, sets the "
         "connections/s column, so the comparison is per server core = 1e6 / server CPU "
         "µs per connection (utime+stime of the server's processes over the run / "
         "connections), and vs B is on that",
         *[f"{TLS_LABELS[k]}: not measured ({why})" for k, why in gone.items()]],
    )
    # HTTP/1.1 over TLS against the same process's cleartext listener.
    keys = [k for k, t in targets.items() if t.plain and "https" not in t.missing]
    runs = [(k, proto) for k in keys for proto in ("https", "http")]
    port = {"https": lambda t: t.tls, "http": lambda t: t.plain}
    for k, proto in runs:
        run_wrk(f"{proto}://127.0.0.1:{port[proto](targets[k])}/", 1, a.conns, 1, None)
    wres: dict[tuple[str, str], list[WrkResult]] = {run: [] for run in runs}
    for r in range(a.rounds):
        for k, proto in runs:
            t = targets[k]
            w = run_wrk(f"{proto}://127.0.0.1:{port[proto](t)}/", a.duration, a.conns, 1,
                        t.proc)
            wres[(k, proto)].append(w)
            log(f"tls http/1.1 round {r + 1} {k} {proto}: {w.rps:.0f} req/s "
                f"p99 {w.p99_ms:.2f} ms cpu {w.cpu_us_per_req:.1f} us/req {w.errors}")
    wmed = {run: statistics.median(x.rps for x in xs) for run, xs in wres.items()}
    rows = [[TLS_LABELS[k], "missing", *["-"] * 8] for k in gone]
    notes = [f"{TLS_LABELS[k]}: not measured ({why})" for k, why in gone.items()]
    for k in keys:
        tls_rps, clear = wmed[(k, "https")], wmed[(k, "http")]
        ws, wc = wres[(k, "https")], wres[(k, "http")]
        errs = "; ".join(sorted({x.errors for x in ws + wc if x.errors})) or "0"
        cpu_tls = statistics.median(x.cpu_us_per_req for x in ws)
        cpu_clear = statistics.median(x.cpu_us_per_req for x in wc)
        rows.append([TLS_LABELS[k], fmt(tls_rps), fmt(clear), ratio(tls_rps, clear),
                     ratio(tls_rps, wmed.get(("B", "https"))),
                     fmt(statistics.median(x.p99_ms for x in ws), 2), fmt(cpu_tls, 1),
                     fmt(cpu_clear, 1), ratio(cpu_clear, cpu_tls), errs])
        if k in DSPROXY_KEYS:
            notes.append(target_note("HTTP/1.1 over TLS", k, tls_rps, clear, 0.8,
                                     "its own cleartext rate")
                         + f"; by server CPU per request {ratio(cpu_clear, cpu_tls)}x")
    rep.panel("HTTP/1.1 over TLS, req/s (higher is better)", "req/s",
              [(TLS_LABELS[k], wmed[(k, "https")]) for k in keys])
    rep.table(
        f"HTTP/1.1 over TLS and cleartext, same process (wrk -t1 -c{a.conns} "
        f"-d{a.duration:g}s, median of {a.rounds} interleaved rounds)",
        ["contender", "TLS req/s", "cleartext req/s", "TLS / cleartext", "TLS vs B",
         "TLS p99 ms", "CPU µs/req TLS", "CPU µs/req cleartext", "TLS / cleartext by CPU",
         "errors"],
        rows,
        ["the TLS and the cleartext listener are one process (dsproxy: server.tls_listen "
         "beside server.listen, with server.h2c = true; nginx: one server block per listener); wrk "
         "offers no ALPN, so the TLS connections speak HTTP/1.1; keep-alive, so the "
         f"handshakes are {a.conns} per run",
         "TLS / cleartext by CPU = the cleartext CPU µs/req over the TLS one: the rate ratio "
         "a server alone on its core would show (wrk's own TLS work shares these CPUs)",
         *notes],
    )


def suite_h2idle(b: Bench, rep: Report, targets: dict[str, TlsTarget]) -> None:
    a = b.args
    rows = []
    per_conn: list[tuple[str, float]] = []
    base: float | None = None
    notes = []
    for k, t in targets.items():
        if "tls" in t.missing:
            rows.append([TLS_LABELS[k], "missing", "-", "-", "-", "-", "-"])
            notes.append(f"{TLS_LABELS[k]}: not measured ({t.missing['tls']})")
            continue
        cmd = [sys.executable, str(BENCH_DIR / "tlsload.py"), "h2idle", "--port", str(t.tls),
               "--conns", str(a.h2_idle_conns), "--concurrency", "100", "--hold", "300"]
        x = hold_idle(t.proc, cmd)
        log(f"h2idle {k}: {x.opened} open, {x.failed} failed, {x.alive} alive at end, RSS "
            f"{x.before_kib / 1024:.1f} -> {x.after_kib / 1024:.1f} MiB, "
            f"{x.per_conn_kib:.1f} KiB/connection")
        rows.append([TLS_LABELS[k], str(x.opened), str(x.failed), x.alive,
                     fmt(x.before_kib / 1024, 1), fmt(x.after_kib / 1024, 1),
                     fmt(x.per_conn_kib, 1)])
        per_conn.append((TLS_LABELS[k], x.per_conn_kib))
        if k == "B":
            base = x.per_conn_kib
        elif k in DSPROXY_KEYS:
            if base is None:
                notes.append(f"{TLS_LABELS[k]}: no nginx figure to compare with")
            else:
                met = x.per_conn_kib <= base
                notes.append(f"{TLS_LABELS[k]}: {x.per_conn_kib:.1f} KiB against nginx's "
                             f"{base:.1f} (target <= nginx's: {'met' if met else 'missed'})")
    rep.panel("memory per idle HTTP/2 connection (TLS), KiB (lower is better)", "KiB",
              per_conn)
    rep.table(
        f"Idle HTTP/2 connections over TLS ({a.h2_idle_conns} opened to each server)",
        ["contender", "open", "failed", "alive at end", "RSS before MiB", "RSS after MiB",
         "KiB / connection"],
        rows,
        ["client: bench/tlsload.py h2idle: TLS with ALPN h2, the preface and one `GET /` "
         "answered, then idle; RSS = VmRSS of the server's traffic process(es), 2 s after "
         "the last connection opened (it includes the upstream connections the pool keeps, "
         f"at most {upstream_pool(a)})",
         *notes],
    )


def upstream_pool(a: argparse.Namespace) -> int:
    """The upstream keep-alive pool of the TLS suites: every h2load stream at once."""
    return max(64, int(a.h2_conns) * int(a.h2_streams))



# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dsproxy vs nginx benchmarks (loopback only)")
    p.add_argument("--suites", default=",".join(ALL_SUITES),
                   help=f"comma list of {','.join(ALL_SUITES)}")
    p.add_argument("--compiled-python", default=os.environ.get("DSPROXY_COMPILED_PYTHON", ""),
                   help="python of a venv with the compiled build (contender G); "
                        "bench/run.sh builds one in bench/.venv-compiled")
    p.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                   help="comma list of A,B,C,D,E,F,G,H (E, F: small GET suite only; "
                        "H: TLS suites only; A and E, F: not in the TLS suites)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--quick", action="store_true",
                   help="duration 3, 1 round, 256 MiB streams, 1000 idle sessions, "
                        "500 idle HTTP/2 connections")
    p.add_argument("--conns", type=int, default=50, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (workers suite)")
    p.add_argument("--ws-conns", type=int, default=50)
    p.add_argument("--ws-procs", type=int, default=1, help="wsload client processes")
    p.add_argument("--stream-mb", type=int, default=1024, help="MiB per streaming transfer")
    p.add_argument("--stream-rounds", type=int, default=1)
    p.add_argument("--idle-sessions", type=int, default=5000)
    p.add_argument("--h2-conns", type=int, default=10, help="h2load connections (-c)")
    p.add_argument("--h2-streams", type=int, default=32,
                   help="h2load streams at once per connection (-m)")
    p.add_argument("--tls-conns", type=int, default=16,
                   help="handshake suite: connections in flight at once")
    p.add_argument("--h2-idle-conns", type=int, default=2000,
                   help="idle HTTP/2 connections per server (h2idle suite)")
    p.add_argument("--tls-key-type", choices=("ec", "rsa"), default="ec",
                   help="the certificate's key: ECDSA P-256 or RSA 2048")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, confs)")
    p.add_argument("--out", default=str(BENCH_DIR / "results"), help="results directory")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3.0, 1
        args.stream_mb, args.idle_sessions, args.h2_idle_conns = 256, 1000, 500
    args.suite_list = [s for s in args.suites.split(",") if s]
    bad = set(args.suite_list) - set(ALL_SUITES)
    if bad:
        p.error(f"unknown suites: {sorted(bad)}")
    args.contender_list = [c for c in args.contenders.split(",") if c]
    if set(args.contender_list) - set(ALL_CONTENDERS):
        p.error(f"contenders are {','.join(ALL_CONTENDERS)}")
    return args


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run bench/run.sh (installs it as root) or "
                  "`apt-get install -y nginx wrk`", file=sys.stderr)
            return 2
    if set(TLS_SUITES) & set(args.suite_list):
        for tool, package in (("h2load", "nghttp2-client"), ("openssl", "openssl")):
            if shutil.which(tool) is None:
                print(f"missing {tool} (suites {','.join(TLS_SUITES)}): run bench/run.sh "
                      f"or `apt-get install -y {package}`", file=sys.stderr)
                return 2
    nofile = raise_nofile()
    if "idle" in args.suite_list and nofile < 4 * args.idle_sessions:
        log(f"RLIMIT_NOFILE {nofile} is low for {args.idle_sessions} idle sessions")

    contenders = list(args.contender_list)
    notes: list[str] = []
    if any(c in contenders for c in "CD") or "workers" in args.suite_list:
        ok, why = dsproxy_runnable()
        if not ok:
            notes.append(f"dsproxy is not runnable (`python -m dsproxy run --help`: {why}); "
                         "dsproxy rows and the workers suite were skipped")
            log(notes[-1])
            contenders = [c for c in contenders if c not in "CD"]
            args.suite_list = [s for s in args.suite_list if s != "workers"]

    if "G" in contenders:
        ok, why = compiled_runnable(args.compiled_python)
        if not ok:
            notes.append(f"contender G skipped: {why}")
            log(notes[-1])
            contenders.remove("G")

    b = Bench(args)
    rep = Report()
    started = dt.datetime.now()
    machine = machine_info()
    busy = cpu_busy(1.0)
    machine[0] += f"; CPU busy before the run: {busy:.0%}"
    if busy > 0.2:
        notes.append(f"the machine was {busy:.0%} busy before the run: other processes "
                     "compete for the CPUs, numbers are pessimistic")
        log(notes[-1])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    failures: list[str] = []
    try:
        suites = args.suite_list
        if {"http", "stream", "workers", *TLS_SUITES} & set(suites):
            if "stream" in suites:
                with (b.tmp / "big.bin").open("wb") as f:
                    f.truncate(args.stream_mb * 1024 * 1024)
            _, nup = b.start_upstream_nginx()
            log(f"upstream nginx on 127.0.0.1:{nup}")
        else:
            nup = 0
        if {"http", "stream", "workers"} & set(suites):
            proxies = [c for c in contenders if c not in "EFH"]
            cont_n = start_set(b, proxies, nup, "nginxup")
            floors = [c for c in contenders if c in "EF"] if "http" in suites else []
            cont_http = {**cont_n, **start_set(b, floors, nup, "nginxup")}
            run_suite(failures, "http", suites,
                      lambda: suite_http(b, rep, cont_http))
            run_suite(failures, "workers", suites,
                      lambda: suite_workers(b, rep, nup))
        else:
            cont_n = {}
        if set(TLS_SUITES) & set(suites):
            cert, key = make_cert(b.tmp, args.tls_key_type)
            tls_keys = [c for c in contenders if c in TLS_LABELS]
            targets = start_tls_set(b, tls_keys, nup, cert, key, upstream_pool(args), notes)
            # idle memory first, on processes that have not served any load yet
            run_suite(failures, "h2idle", suites, lambda: suite_h2idle(b, rep, targets))
            run_suite(failures, "h2", suites, lambda: suite_h2(b, rep, targets))
            run_suite(failures, "tls", suites, lambda: suite_tls(b, rep, targets))
            for t in targets.values():
                b.stop(t.proc)
        if {"ws", "stream", "idle"} & set(suites):
            rawup, rup = b.start_rawup()
            log(f"raw upstream on 127.0.0.1:{rup}")
            cont_r = start_set(b, [c for c in contenders if c not in "EFH"], rup, "rawup")
            run_suite(failures, "ws", suites, lambda: suite_ws(b, rep, cont_r, rup, rawup))
            run_suite(failures, "stream", suites,
                      lambda: suite_stream(b, rep, cont_n, nup, cont_r, rup))
            run_suite(failures, "idle", suites, lambda: suite_idle(b, rep, cont_r))
    except KeyboardInterrupt:
        failures.append("interrupted")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        failures.append(f"setup: {exc}")
        log(f"FAILED: {exc}")
    finally:
        b.cleanup()

    header = [
        f"# dsproxy bench — {started:%Y-%m-%d %H:%M:%S}",
        "",
        f"command: `{shlex.join(['bash', 'bench/run.sh', *(argv or sys.argv[1:])])}`",
        "",
        *[f"- {line}" for line in machine],
        *[f"- note: {n}" for n in notes],
        *[f"- FAILED: {f}" for f in failures],
    ]
    text = "\n".join(header) + "\n\n" + "\n\n".join(rep.sections) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started:%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    svg = path.with_suffix(".svg")
    title = f"dsproxy vs nginx, {started:%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs"
    write_chart(svg, rep.panels, title)
    print(text)
    log(f"written {path} and {svg}")
    return 1 if failures else 0


def start_set(b: Bench, keys: Sequence[str], upstream_port: int,
              tag: str) -> dict[str, tuple[Proc, int]]:
    out = {}
    for k in keys:
        out[k] = b.start_contender(k, upstream_port, tag)
        log(f"{LABELS[k]} on [::]:{out[k][1]} -> 127.0.0.1:{upstream_port}")
    return out


def run_suite(failures: list[str], name: str, selected: Sequence[str],
              fn: Callable[[], None]) -> None:
    if name not in selected:
        return
    log(f"suite {name}")
    try:
        fn()
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        failures.append(f"{name}: {exc}")
        log(f"suite {name} FAILED: {exc}")


if __name__ == "__main__":
    sys.exit(main())
