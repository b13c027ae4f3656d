"""Run the fuzz targets (atheris, libFuzzer) one after the other: codecs, PROXY header.

::

    python fuzz/run.py --seconds 60            # each target for 60 s
    python fuzz/run.py --runs 2000             # each target for a fixed number of inputs
    python fuzz/run.py --seconds 600 --corpus fuzz/corpus --json fuzz-report.json

Each target starts from the seeds in fuzz/inputs.py (plus ``--corpus``, which
keeps what it finds). A failing input is written to ``--artifacts`` (default: a
temporary directory) and named in the report; the exit status is 1 when any
target found one, else 0. The report gives, per target, the inputs executed,
the coverage libFuzzer counted (``cov``: edges, ``ft``: features) and the corpus size.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuzz.inputs import CLIENT_SEEDS, PROXY_SEEDS, SERVER_SEEDS  # noqa: E402

TARGETS = {
    "codec_server": (HERE / "fuzz_codec_server.py", SERVER_SEEDS),
    "codec_client": (HERE / "fuzz_codec_client.py", CLIENT_SEEDS),
    "proxyproto": (HERE / "fuzz_proxyproto.py", PROXY_SEEDS),
}
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_PROGRESS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")


@dataclass
class TargetReport:
    target: str
    executions: int
    coverage_edges: int
    features: int
    corpus: int
    seconds: float
    exit_code: int
    findings: list[str]


def run_target(
    name: str, args: argparse.Namespace, corpus_root: Path, artifacts: Path
) -> TargetReport:
    script, seeds = TARGETS[name]
    corpus = corpus_root / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={args.seconds}"]
    prefix = artifacts / f"{name}-"
    cmd = [
        sys.executable,
        str(script),
        str(corpus),
        *limit,
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=4096",
        f"-artifact_prefix={prefix}",
    ]
    budget = (args.seconds if not args.runs else 0) + args.runs / 50 + 120
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, check=False)
    out = proc.stderr + proc.stdout
    stats = {k: int(v) for k, v in _STAT.findall(out)}
    progress = _PROGRESS.findall(out)
    _, cov, ft, corp = progress[-1] if progress else ("0", "0", "0", "0")
    findings = sorted(str(p) for p in artifacts.glob(f"{name}-*"))
    if proc.returncode != 0 and not findings:
        tail = "\n".join(out.splitlines()[-30:])
        findings = [f"exit {proc.returncode}:\n{tail}"]
    return TargetReport(
        target=name,
        executions=stats.get("number_of_executed_units", 0),
        coverage_edges=int(cov),
        features=int(ft),
        corpus=int(corp),
        seconds=float(stats.get("total_time_seconds", args.seconds) or 0),
        exit_code=proc.returncode,
        findings=findings,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--runs", type=int, default=0, help="inputs per target (overrides)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--corpus", type=Path, help="corpus root kept between runs")
    parser.add_argument("--artifacts", type=Path, help="where failing inputs are written")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dsproxy-fuzz-") as tmp:
        corpus_root = args.corpus or Path(tmp) / "corpus"
        artifacts = args.artifacts or Path(tmp) / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        reports = [
            run_target(name, args, corpus_root, artifacts) for name in args.targets.split(",")
        ]
        for report in reports:  # keep failing inputs past the temporary directory
            for i, path in enumerate(report.findings):
                if Path(path).is_file() and args.artifacts is None:
                    kept = Path(tempfile.gettempdir()) / f"dsproxy-fuzz-{report.target}-{i}"
                    kept.write_bytes(Path(path).read_bytes())
                    report.findings[i] = str(kept)
    print("| target | executions | cov (edges) | ft | corpus | findings |")
    print("|---|---|---|---|---|---|")
    for r in reports:
        print(
            f"| {r.target} | {r.executions} | {r.coverage_edges} | {r.features} | "
            f"{r.corpus} | {len(r.findings)} |"
        )
        for finding in r.findings:
            print(f"  finding: {finding}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return 1 if any(r.findings for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
