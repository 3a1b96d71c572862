"""The on-screen table of ``omnizip bench`` and its target lines."""

from __future__ import annotations

from ..flops import predicted_speedup
from .result import BenchResult

__all__ = ["format_methods", "format_table"]


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def format_table(result: BenchResult) -> str:
    """The on-screen table and the target lines."""
    lines = []
    header = (f"{'configuration':<22}{'tokens':>8}{'prefill ms':>12}{'TTFT ms':>10}"
              f"{'overhead ms':>13}{'speedup':>9}{'predicted':>11}{'peak MiB':>10}{'rise MiB':>10}")
    lines.append(header)
    lines.append("-" * len(header))
    full = result.get("full")
    pa = full.median("prefill_ms")
    labels = {"full": "(a) full"}
    for p in result.presets():
        labels[f"omnizip-{p}"] = f"(b) OmniZip {p}%"
        labels[f"kept-{p}"] = f"(c) kept-only {p}%"
    for c in result.configs:
        pc = c.median("prefill_ms")
        speed = pa / pc if pa and pc else None
        pred = predicted_speedup(full.tokens, c.tokens, result.dims)
        lines.append(
            f"{labels.get(c.name, c.name):<22}{c.tokens:>8}{_fmt(pc):>12}"
            f"{_fmt(c.median('ttft_ms')):>10}{_fmt(c.median('overhead_ms')):>13}"
            f"{_fmt(speed, '.2f', 'x'):>9}{_fmt(pred, '.2f', 'x'):>11}"
            f"{_fmt(None if c.peak_bytes is None else c.peak_bytes / 2**20, '.0f'):>10}"
            f"{_fmt(None if c.rise_bytes is None else c.rise_bytes / 2**20, '.0f'):>10}"
        )
    lines.append("")
    for p in result.presets():
        cmp = result.comparison(p)
        t = cmp["targets"]

        def mark(key: str, t: dict = t) -> str:
            return "PASS" if t.get(key) else ("n/a" if key not in t else "MISS")

        lines.append(
            f"targets {p}%: prefill (b)/(c) = {_fmt(cmp['prefill_b_over_c'], '.3f')} (<= 1.05: "
            f"{mark('prefill_within_5pct_of_limit')}; overhead alone "
            f"{_fmt(None if cmp['overhead_over_limit'] is None else 100 * cmp['overhead_over_limit'], '.1f', '%')}"
            f" of (c)); speedup {_fmt(cmp['speedup'], '.2f')}x = "
            f"{_fmt(cmp['speedup_share_of_predicted'], '.2f')} of predicted "
            f"{cmp['predicted_speedup']:.2f}x (>= 0.90: {mark('speedup_at_least_0.9_of_predicted')}); "
            f"peak below (a): {mark('peak_below_full')}, close to (c): {mark('peak_close_to_limit')}"
            + (f" ({cmp['peak_saving_realised']:.0%} of (c)'s memory saving realised, >= 80%)"
               if cmp.get("peak_saving_realised") is not None else "")
        )
    if result.contended():
        share, foreign = result.cpu_share(), result.foreign_share()
        lines.append("")
        lines.append(
            "WARNING: other processes competed for the CPU during the timed runs (median CPU "
            f"share of the runs {_fmt(share, '.0%')}, other processes' median use of the "
            f"machine {_fmt(foreign, '.0%')}): these timings, the small synchronising "
            "compression ops most, are unreliable; rerun on an idle machine"
        )
    return "\n".join(lines)


def format_methods(result: BenchResult) -> str:
    """The table of ``omnizip bench --methods``: every method at its chosen setting."""
    full = result.get("full")
    pa, ta = full.median("prefill_ms"), full.median("ttft_ms")
    header = (f"{'method':<12}{'retention':>10}{'FLOPs ratio':>13}{'predicted':>11}{'tokens/layer':>14}"
              f"{'prefill ms':>12}{'speedup':>9}{'TTFT ms':>10}{'speedup':>9}{'peak MiB':>10}{'rise MiB':>10}")
    lines = [header, "-" * len(header)]
    settings = result.settings.get("methods", {})
    for c in result.configs:
        setting = settings.get(c.name, {})
        pc, tc = c.median("prefill_ms"), c.median("ttft_ms")
        per_layer = c.layer_tokens or [c.tokens]
        lines.append(
            f"{c.name:<12}{_fmt(setting.get('retention'), '.4f'):>10}{_fmt(c.flops_ratio, '.3f'):>13}"
            f"{_fmt(setting.get('predicted_flops_ratio'), '.3f'):>11}"
            f"{sum(per_layer) / len(per_layer):>14.1f}{_fmt(pc):>12}"
            f"{_fmt(pa / pc if pa and pc else None, '.2f', 'x'):>9}{_fmt(tc):>10}"
            f"{_fmt(ta / tc if ta and tc else None, '.2f', 'x'):>9}"
            f"{_fmt(None if c.peak_bytes is None else c.peak_bytes / 2**20, '.0f'):>10}"
            f"{_fmt(None if c.rise_bytes is None else c.rise_bytes / 2**20, '.0f'):>10}"
        )
    if result.contended():
        lines += ["", "WARNING: other processes competed for the CPU during the timed runs; these "
                  "timings are unreliable, rerun on an idle machine"]
    return "\n".join(lines)
