#!/usr/bin/env bash
# dsproxy vs nginx benchmarks on loopback. Usage: bash bench/run.sh [--quick] [--suites ...]
# See bench/README.md. Everything it starts is stopped on exit (bench/run.py cleans up).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
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
exec "$PY" "$here/run.py" "$@"
