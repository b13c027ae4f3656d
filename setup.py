"""Compiled build: ``DSPROXY_COMPILE=1 pip install .`` compiles these modules with mypyc.

Everything else about the package is in pyproject.toml. Without the variable this
file adds nothing and the install is pure Python. The list is the hot path: what
runs per request and per body piece. A compiled module behaves exactly as its
source does (the test suite runs on both builds, see .ci/run); modules that
plain-Python code subclasses or that are pickled stay interpreted.
"""

from __future__ import annotations

import os

from setuptools import setup

HOT_MODULES = [
    "dsproxy/http/framing.py",
    "dsproxy/http/rules.py",
    "dsproxy/http/paths.py",
    "dsproxy/http/codec/base.py",
    "dsproxy/http/codec/wire.py",
    "dsproxy/http/codec/h11_codec.py",
    "dsproxy/http/codec/httptools_codec.py",
    "dsproxy/http/codec/httptools_common.py",
    "dsproxy/http/codec/httptools_server.py",
    "dsproxy/http/codec/httptools_client.py",
    "dsproxy/proxy/connection.py",
    "dsproxy/proxy/exchange.py",
    "dsproxy/proxy/flow.py",
    "dsproxy/proxy/host.py",
    "dsproxy/proxy/limits.py",
    "dsproxy/proxy/pool.py",
    "dsproxy/proxy/recording.py",
    "dsproxy/proxy/router.py",
    "dsproxy/proxy/shared.py",
    "dsproxy/proxy/tunnel.py",
    "dsproxy/proxy/upstream.py",
    "dsproxy/observe/records.py",
    "dsproxy/observe/metrics.py",
    "dsproxy/observe/accesslog.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("DSPROXY_COMPILE", "") in ("", "0"):
        return []
    if os.environ.get("DSPROXY_BUILD_DISCOVERING"):
        return []  # the backend is only asking what to install first (mypy among it)
    from mypyc.build import mypycify

    # The mypy options are pyproject.toml's [tool.mypy] (strict); only these files compile.
    return list(mypycify(HOT_MODULES, opt_level="3", debug_level="1"))


setup(ext_modules=ext_modules())
