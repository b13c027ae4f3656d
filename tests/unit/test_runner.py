"""The process runner's allocator tuning (glibc mallopt), checked in a subprocess."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from dsproxy.app.runner import tune_allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


@glibc_only
def test_tunes_glibc_in_a_fresh_process() -> None:
    code = "from dsproxy.app.runner import tune_allocator; print(tune_allocator())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "True", out.stderr


@glibc_only
def test_the_operators_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_allocator() is False
