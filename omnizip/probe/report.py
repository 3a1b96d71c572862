"""The probe's outputs: accuracy-vs-retention rows as JSON and as a PNG (one panel per variant).

Drawn with matplotlib's object API on an Agg canvas (no global backend is changed), as the
``omnizip inspect`` report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["JSON_KEYS", "public_rows", "render_plot", "write_outputs"]

#: the keys of every row ``omnizip probe --json`` prints
JSON_KEYS = ("method", "retention", "kept", "kept_audio", "kept_video", "accuracy")


def public_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as ``--json`` prints them: :data:`JSON_KEYS` only, floats rounded to 4 places."""
    return [{k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in JSON_KEYS}
            for r in rows]


def render_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy against kept share of audio + video, one line per method; panels: all clips,
    then each variant. The full-token accuracy is a dashed line, chance a dotted one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = list(rows[0].get("accuracy_by_variant", {}))
    panels = [("all clips", None)] + [(f"{v} variant", v) for v in variants]
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    full = next((r for r in rows if r["method"] == "full"), None)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "full"))
    for i, (label, variant) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)

        def acc(row: dict[str, Any], variant: str | None = variant) -> float:
            return row["accuracy"] if variant is None else row["accuracy_by_variant"][variant]

        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["kept"])
            ax.plot([r["kept"] for r in mine], [acc(r) for r in mine], marker="o", label=method)
        if full is not None:
            ax.axhline(acc(full), color="black", linestyle="--", linewidth=1, label="full tokens")
        ax.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("kept share of audio + video tokens")
        ax.set_ylabel("accuracy")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    return path


def write_outputs(rows: Sequence[dict[str, Any]], folder: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """``probe.json`` (``meta`` and every row with all its fields) and ``probe.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "probe.json"
    data.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1) + "\n")
    title = (f"synthetic probe (not a benchmark): {meta.get('n_clips', '?')} held-out clips, "
             f"weights {meta.get('weights', '?')}")
    png = render_plot(rows, folder / "probe.png", title)
    return {"json": data, "png": png}
