"""Build backend: setuptools, plus mypyc when ``DSPROXY_COMPILE=1`` (docs/architecture.md).

``pip install .`` builds the pure-Python package as before. With
``DSPROXY_COMPILE=1`` in the environment the hot-path modules listed in
``setup.py`` are compiled with mypyc from the same source; this backend then
asks the build frontend for mypy (mypyc) and for the libraries those modules
import, so mypyc sees their types in pip's isolated build environment. A C
compiler is needed then, and only then.
"""

from __future__ import annotations

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks, unchanged)

# What mypyc needs to see while compiling: the same releases the package depends on.
COMPILE_REQUIRES = [
    "mypy>=1.10",
    "mypy_extensions>=1.0",
    "h11>=0.16.0",
    "prometheus-client>=0.20",
    "httptools>=0.6.4",
    "h2>=4.1",  # the compiled connection module hands HTTP/2 connections to proxy/h2connection
]


def compile_requested() -> bool:
    return os.environ.get("DSPROXY_COMPILE", "") not in ("", "0")


# Set while setuptools runs setup.py only to ask for its requirements: mypyc is not
# installed yet then, and setup.py must not try to compile.
DISCOVERING_ENV = "DSPROXY_BUILD_DISCOVERING"


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    os.environ[DISCOVERING_ENV] = "1"
    try:
        requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    finally:
        del os.environ[DISCOVERING_ENV]
    return requires + COMPILE_REQUIRES if compile_requested() else requires
