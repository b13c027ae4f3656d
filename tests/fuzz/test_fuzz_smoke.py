"""A short run of the atheris fuzz targets (fuzz/run.py): no finding in 10,000 inputs each.

The targets: both codecs (server and client side) and the PROXY protocol header parser.

Skipped only when atheris is not importable (it is in the ``test`` extra on Linux).
The longer run's figures are in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 10_000

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)


@pytest.mark.timeout(120)
def test_fuzz_targets_smoke(tmp_path: Path) -> None:
    report_path = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run.py"),
            "--runs",
            str(RUNS),
            "--artifacts",
            str(tmp_path / "artifacts"),
            "--json",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    reports = json.loads(report_path.read_text())
    assert [r["target"] for r in reports] == ["codec_server", "codec_client", "proxyproto"]
    for report in reports:
        assert report["findings"] == [], proc.stderr
        assert report["executions"] >= RUNS  # the seeds count too
        assert report["coverage_edges"] > 0
    assert proc.returncode == 0, proc.stderr
