"""The report's files: the PNG, a self-contained HTML page embedding it, and the numbers as JSON."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .data import Derived, ReportData, derive, to_numpy
from .figure import render_report

__all__ = ["write_report"]


def _window_rows(d: Derived) -> list[dict[str, Any]]:
    return [dict(w) for w in d.windows]


def write_report(data: ReportData, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.png``, ``<stem>.html`` (the PNG embedded, self-contained) and
    ``<stem>.json`` (the numbers) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = render_report(data)
    d = derive(data)
    paths = {"png": out / f"{stem}.png", "html": out / f"{stem}.html", "json": out / f"{stem}.json"}
    paths["png"].write_bytes(png)
    res = data.result
    numbers = {
        "title": data.title,
        "subtitle": data.subtitle,
        "facts": dict(data.facts),
        "config": data.config,
        "tokens": {
            "prompt": int(to_numpy(res.keep).size), "kept": int(to_numpy(res.keep).sum()),
            "audio": int(d.status.size), "audio_kept": int(d.keep_audio.sum()),
            "video": int(d.keep_video.size), "video_kept": int(d.keep_video.sum()),
        },
        "audio_token_status": {k: int((d.status == k).sum())
                               for k in ("salient", "anchor", "merged", "dropped")},
        "windows": _window_rows(d),
    }
    paths["json"].write_text(json.dumps(numbers, indent=2) + "\n")
    rows = []
    for w in d.windows:
        rows.append(
            "<tr>" + "".join(
                f"<td>{html.escape(str(v))}</td>" for v in (
                    w["index"], f"{w['start']:.1f}-{w['end']:.1f}",
                    f"{w.get('audio_kept', '-')}/{w.get('audio', '-')}",
                    f"{w['S']:.2f}" if "S" in w else "-",
                    f"{w['r']:.2f}" if "r" in w else "-",
                    f"{w.get('video_kept', '-')}/{w.get('video', '-')}",
                )
            ) + "</tr>"
        )
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in data.facts)
    b64 = base64.b64encode(png).decode("ascii")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1700px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ color: #555; }}
</style></head><body>
<h1>{html.escape(data.title)}</h1>
<p class="note">{html.escape(data.subtitle)}</p>
<table>{facts}</table>
<img alt="OmniZip report" src="data:image/png;base64,{b64}">
<h2>Windows</h2>
<table><tr><th>window</th><th>time (s)</th><th>audio kept</th><th>S<sub>i</sub></th>
<th>r<sub>i</sub></th><th>video kept</th></tr>
{''.join(rows)}
</table>
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(data.config, indent=2))}</pre>
</body></html>
"""
    paths["html"].write_text(page)
    return paths
