"""docs/configuration.md documents every key config.py knows, with its real default,
and no key that does not exist; the README links it. No sockets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from dsproxy.config import KNOWN_KEYS, KNOWN_ROUTE_KEYS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "config.example.toml"
ROW = re.compile(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \| (.+?) \|")


def documented() -> dict[str, str]:
    """``key -> default cell`` of the tables in the "Keys" section."""
    text = DOC.read_text(encoding="utf-8")
    keys_section = text.split("\n## Keys\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in keys_section.splitlines():
        match = ROW.match(line)
        if match:
            rows[match[1]] = match[2]
    return rows


def toml_value(text: str) -> object:
    return tomllib.loads(f"v = {text}")["v"]


# Keys only a [[routes]] table has; the [upstream] keys a route may set are listed in a
# sentence, not repeated as rows.
ROUTE_ONLY_KEYS = sorted(
    set(KNOWN_ROUTE_KEYS) - {f"routes.{key.split('.')[1]}" for key in KNOWN_KEYS}
    | {"routes.url"}
)


def test_every_key_is_documented_and_nothing_else() -> None:
    assert sorted(documented()) == sorted([*KNOWN_KEYS, *ROUTE_ONLY_KEYS])


def test_the_upstream_keys_a_route_may_set_are_listed() -> None:
    text = DOC.read_text(encoding="utf-8").split("### `[[routes]]`", 1)[1].split("\n| key", 1)[0]
    inherited = set(KNOWN_ROUTE_KEYS) - set(ROUTE_ONLY_KEYS)
    for key in inherited:
        assert f"`{key.split('.')[1]}`" in text, key


def test_documented_defaults_are_the_defaults() -> None:
    # config.example.toml holds every default (tests/unit/test_config.py checks that).
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for key, cell in documented().items():
        section, name = key.split(".")
        if key == "upstream.url":
            assert cell == "(required)"
            continue
        if key in ("tls.cert", "tls.key"):  # no default: commented out in the example
            assert cell == "(none)"
            continue
        if section == "routes":  # the example's [[routes]] are commented out
            continue
        assert re.fullmatch(r"`[^`]+`", cell), key
        assert toml_value(cell.strip("`")) == example[section][name], key


def test_readme_links_the_configuration_page() -> None:
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_no_doc_cites_the_design_notes() -> None:
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), EXAMPLE]:
        assert "DESIGN.md" not in path.read_text(encoding="utf-8"), path
