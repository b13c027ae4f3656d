"""Coverage-guided fuzz target: bytes into the PROXY protocol header parser (atheris).

Invariants (as tests/unit/test_proxyproto.py): no exception but ProxyHeaderError;
the outcome does not depend on how the bytes are cut; a parsed header took exactly
its own bytes (everything behind it is handed on unchanged), gives IPv4-mapped
addresses as IPv4, and its addresses read back the same when sent again.
Run it through fuzz/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from fuzz.inputs import decode
    from fuzz.proxyproto_harness import consistency_error, run, split_invariance_error


def test_one_input(data: bytes) -> None:
    cuts, raw = decode(data)
    whole = run(raw)
    error = split_invariance_error(whole, run(raw, cuts)) or consistency_error(raw, whole)
    if error:
        raise AssertionError(error)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
