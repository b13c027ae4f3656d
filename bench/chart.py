"""One SVG with a bar panel per measured quantity, written next to each bench report.

No plotting library: a handful of ``<rect>`` and ``<text>`` elements, so the chart
needs nothing beyond the standard library and shows in any browser or on GitHub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH = 820
LABEL_WIDTH = 290
BAR_HEIGHT = 18
GAP = 6
PANEL_PAD = 34
# dsproxy rows in one colour, nginx in another, the rest (floors, ceiling) in grey.
COLOURS = {"dsproxy": "#2b6cb0", "nginx": "#2f855a", "other": "#a0aec0"}


@dataclass
class Panel:
    title: str  # e.g. "small GET, req/s (higher is better)"
    unit: str
    rows: list[tuple[str, float]] = field(default_factory=list)


def _colour(label: str) -> str:
    low = label.lower()
    if "dsproxy" in low and "bare" not in low:
        return COLOURS["dsproxy"]
    if "nginx" in low:
        return COLOURS["nginx"]
    return COLOURS["other"]


def render(panels: Sequence[Panel], title: str) -> str:
    panels = [p for p in panels if p.rows]
    height = 40 + sum(PANEL_PAD + len(p.rows) * (BAR_HEIGHT + GAP) for p in panels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    y = 40
    for panel in panels:
        out.append(
            f'<text x="10" y="{y + 18}" font-weight="bold">{escape(panel.title)}</text>'
        )
        y += PANEL_PAD
        top = max(v for _, v in panel.rows) or 1.0
        span = WIDTH - LABEL_WIDTH - 110
        for label, value in panel.rows:
            w = max(1.0, span * value / top)
            out.append(f'<text x="10" y="{y + 13}">{escape(label)}</text>')
            out.append(
                f'<rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT}" '
                f'fill="{_colour(label)}"/>'
            )
            out.append(
                f'<text x="{LABEL_WIDTH + w + 6:.1f}" y="{y + 13}">'
                f"{value:,.{0 if value >= 100 else 2}f} {escape(panel.unit)}</text>"
            )
            y += BAR_HEIGHT + GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(path: Path, panels: Sequence[Panel], title: str) -> None:
    path.write_text(render(panels, title))
