"""Coverage-guided fuzz target: response bytes into both client codecs (atheris).

Invariants (as tests/protocol/test_codec_differential.py): no exception but
UpstreamError; each codec frames the bytes alike however they are cut; every
response both codecs complete is the same response. Run it through fuzz/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    import h11  # noqa: F401  (instrumented: its branches guide the search too)

    from fuzz.harness import (
        CODECS,
        common_messages_error,
        run_client,
        split_invariance_error,
    )
    from fuzz.inputs import METHODS, decode


def test_one_input(data: bytes) -> None:
    if not data:
        return
    method = METHODS[data[0] % len(METHODS)]
    cuts, raw = decode(data[1:])
    outcomes = []
    for codec in CODECS:
        whole = run_client(codec, method, raw)
        error = split_invariance_error(codec, whole, run_client(codec, method, raw, cuts), raw)
        if error:
            raise AssertionError(error)
        outcomes.append(whole)
    error = common_messages_error(outcomes[0], outcomes[1])
    if error:
        raise AssertionError(error)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
