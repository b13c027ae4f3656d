"""Coverage-guided fuzz target: request bytes into both server codecs (atheris).

Invariants (as tests/protocol/test_codec_differential.py): no exception but
ClientError; each codec frames the bytes alike however they are cut; every
request both codecs complete is the same request. Run it through fuzz/run.py.
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
        run_server,
        split_invariance_error,
    )
    from fuzz.inputs import decode


def test_one_input(data: bytes) -> None:
    cuts, raw = decode(data)
    outcomes = []
    for codec in CODECS:
        whole = run_server(codec, raw)
        error = split_invariance_error(codec, whole, run_server(codec, raw, cuts))
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
