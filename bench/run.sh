#!/usr/bin/env bash
# dsproxy vs nginx benchmarks on loopback. Usage: bash bench/run.sh [--quick] [--suites ...]
# See bench/README.md. Everything it starts is stopped on exit (bench/run.py cleans up).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
# the TLS suites make a self-signed certificate per run
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}" >&2
    apt-get install -y "${missing[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
    # the distro nginx service is not needed; the bench runs its own instances
    systemctl disable --now nginx >/dev/null 2>&1 || true
  else
    echo "missing tools: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
fi

# many idle WebSocket sessions need file descriptors
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PY="${PYTHON:-python3}"

# Contender G is the compiled build (mypyc), in its own venv: built once here (about a
# minute; a C compiler is needed) unless DSPROXY_COMPILED_PYTHON names one already.
if [[ -z "${DSPROXY_COMPILED_PYTHON:-}" ]]; then
  venv="$here/.venv-compiled"
  stamp="$venv/.source-hash"
  hash="$(cd "$here/.." && git ls-files -s dsproxy setup.py pyproject.toml _build 2>/dev/null | sha1sum | cut -c1-12)"
  if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$hash" ]]; then
    echo "building the compiled dsproxy in $venv (DSPROXY_COMPILE=1 pip install .)" >&2
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    if DSPROXY_COMPILE=1 "$venv/bin/python" -m pip install -q "$here/..[speedups]" >&2; then
      echo "$hash" > "$stamp"
    else
      echo "compiled build failed: contender G will be skipped" >&2
    fi
  fi
  [[ -f "$stamp" ]] && export DSPROXY_COMPILED_PYTHON="$venv/bin/python"
fi
exec "$PY" "$here/run.py" "$@"
