"""A 60-second soak with chaos (bench/soak.py): no wrong response, descriptors back to flat.

The script starts dsproxy as a subprocess in front of an upstream that resets,
stalls, sends garbage and closes mid-body, drives keep-alive GETs, uploads,
downloads, WebSocket sessions and vanishing clients through it over 127.0.0.1
and ::1, and checks every response (docs/reliability.md, "Soak").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK_SECONDS = 60
FD_SLACK = 4


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 90)
def test_soak_60s_no_wrong_response_and_flat_descriptors(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--duration",
            str(SOAK_SECONDS),
            "--concurrency",
            "8",
            "--fd-slack",
            str(FD_SLACK),
            "--json",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=SOAK_SECONDS + 80,
    )
    report = json.loads(report_path.read_text())
    assert report["wrong_responses"] == 0, report["wrong_samples"]
    assert report["tracebacks_in_log"] == 0
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    # The run did what it claims: every fault was injected and surfaced as its status.
    assert set(report["faults_injected"]) == {
        "reset",
        "stall",
        "garbage",
        "clte",
        "midbody",
        "stallbody",
    }
    assert set(report["expected_errors"]) == {"502", "504", "aborted"}
    assert report["ok_2xx"] > 1000
    assert report["ws_sessions"] > 0
    assert report["vanished_clients"] > 0
    # Flat: descriptors back to where they started, no connection left active.
    assert report["end"]["fds"] <= report["start"]["fds"] + FD_SLACK
    assert report["end"]["connections_active"] == 0
    assert max(s["fds"] for s in report["samples"]) > report["start"]["fds"]  # it was loaded
