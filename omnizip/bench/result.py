"""What a benchmark measured: per configuration runs, the comparisons against the targets, the
JSON written to disk."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..flops import DecoderDims, predicted_speedup

__all__ = ["CONTENDED_SHARE", "DISCARD_FOREIGN", "DISCARD_SHARE", "BenchResult", "ConfigResult"]

#: below this median CPU share (see :meth:`BenchResult.cpu_share`) the CPU timings are flagged
CONTENDED_SHARE = 0.85
#: a timed CPU iteration with a run below this share is measured again (``retry_contended``)
DISCARD_SHARE = 0.8
#: ... or with a run during which other processes (and the hypervisor's steal) used more than
#: this fraction of the machine's CPU capacity (from /proc/stat); above half of it, a warning
DISCARD_FOREIGN = 0.10
#: the clocks ``run_benchmark`` can time with


@dataclass
class ConfigResult:
    name: str
    kind: str  # "full" | "omnizip" | "kept" | "method" (a method of omnizip bench --methods)
    preset: str | None
    tokens: int
    kept_audio: int
    kept_video: int
    ttft_ms: list[float] = field(default_factory=list)
    prefill_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)  # (b): scoring + compression
    score_ms: list[float] = field(default_factory=list)
    compress_ms: list[float] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)  # CPU time / (wall * threads) per run
    foreign_share: list[float] = field(default_factory=list)  # other processes' CPU use per run
    peak_bytes: int | None = None
    rise_bytes: int | None = None
    flops_ratio: float | None = None  # decoder prefill FLOPs over the full run's (omnizip.flops)
    layer_tokens: list[int] | None = None  # tokens each decoder layer saw (patched runs)

    def median(self, key: str) -> float | None:
        values = getattr(self, key)
        return statistics.median(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name, "kind": self.kind, "preset": self.preset,
            "decoder_tokens": self.tokens, "kept_audio": self.kept_audio,
            "kept_video": self.kept_video,
        }
        for key in ("ttft_ms", "prefill_ms", "overhead_ms", "score_ms", "compress_ms", "cpu_share",
                    "foreign_share"):
            values = getattr(self, key)
            if values:
                d[key] = {"median": statistics.median(values), "runs": values}
        if self.flops_ratio is not None:
            d["flops_ratio"] = self.flops_ratio
        if self.layer_tokens is not None:
            d["layer_tokens"] = self.layer_tokens
        d["peak_memory_mib"] = None if self.peak_bytes is None else self.peak_bytes / 2**20
        d["peak_rise_mib"] = None if self.rise_bytes is None else self.rise_bytes / 2**20
        return d


@dataclass
class BenchResult:
    """Everything one benchmark measured; :meth:`as_dict` is the JSON written to disk."""

    model: dict[str, Any]
    machine: dict[str, Any]
    inputs: dict[str, Any]
    settings: dict[str, Any]
    configs: list[ConfigResult]
    memory_method: str
    checks: dict[str, Any]
    dims: DecoderDims

    def cpu_share(self) -> float | None:
        """Median over all timed CPU runs of CPU time / (wall time * torch threads): about 0.9-1
        on an idle machine; much lower means other processes took CPU time from the runs."""
        values = [v for c in self.configs for v in c.cpu_share]
        return statistics.median(values) if values else None

    def foreign_share(self) -> float | None:
        """Median over all timed CPU runs of the machine's CPU capacity other processes used."""
        values = [v for c in self.configs for v in c.foreign_share]
        return statistics.median(values) if values else None

    def contended(self) -> bool:
        """CPU timings taken while other processes competed for the cores."""
        share, foreign = self.cpu_share(), self.foreign_share()
        low_share = (self.settings.get("clock", "wall") == "wall" and share is not None
                     and share < CONTENDED_SHARE)
        return low_share or (foreign is not None and foreign > DISCARD_FOREIGN / 2)

    def get(self, name: str) -> ConfigResult:
        return next(c for c in self.configs if c.name == name)

    def presets(self) -> list[str]:
        return [c.preset for c in self.configs if c.kind == "omnizip" and c.preset is not None]

    def comparison(self, preset: str) -> dict[str, Any]:
        """Speedups and the three targets for one preset."""
        full, omni, kept = self.get("full"), self.get(f"omnizip-{preset}"), self.get(f"kept-{preset}")
        pa, pb, pc = full.median("prefill_ms"), omni.median("prefill_ms"), kept.median("prefill_ms")
        predicted = predicted_speedup(full.tokens, omni.tokens, self.dims)
        speedup = pa / pb if pa and pb else None
        limit_speedup = pa / pc if pa and pc else None
        ratio_bc = pb / pc if pb and pc else None
        share = speedup / predicted if speedup else None
        out: dict[str, Any] = {
            "preset": preset,
            "tokens_full": full.tokens, "tokens_kept": omni.tokens,
            "predicted_speedup": predicted, "speedup": speedup, "limit_speedup": limit_speedup,
            "speedup_share_of_predicted": share,
            "prefill_b_over_c": ratio_bc,
            # the directly timed overhead (audio scoring + compression) over (c)'s prefill: the
            # part of (b) - (c) that is OmniZip's own, free of the decoder's run-to-run noise
            "overhead_over_limit": (omni.median("overhead_ms") / pc)
            if omni.overhead_ms and pc else None,
            "ttft_speedup": (full.median("ttft_ms") / omni.median("ttft_ms"))
            if full.ttft_ms and omni.ttft_ms else None,
        }
        targets = {
            "prefill_within_5pct_of_limit": ratio_bc is not None and ratio_bc <= 1.05,
            "speedup_at_least_0.9_of_predicted": share is not None and share >= 0.9,
        }
        if full.peak_bytes is not None and omni.peak_bytes is not None and kept.peak_bytes is not None:
            out["peak_mib"] = {k: v.peak_bytes / 2**20 for k, v in
                               (("full", full), ("omnizip", omni), ("kept", kept))}
            out["peak_rise_mib"] = {k: v.rise_bytes / 2**20 for k, v in
                                    (("full", full), ("omnizip", omni), ("kept", kept))}
            # "close to (c)": OmniZip realises at least 80% of the peak-memory saving of the
            # kept-only limit against (a), counted on the rise over the memory in use before
            # the run (the weights are the same in all three)
            saved = full.rise_bytes - kept.rise_bytes
            realised = full.rise_bytes - omni.rise_bytes
            out["peak_saving_realised"] = realised / saved if saved > 0 else None
            targets["peak_below_full"] = omni.peak_bytes < full.peak_bytes
            targets["peak_close_to_limit"] = saved > 0 and realised >= 0.8 * saved
        out["targets"] = targets
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "omnizip_bench": 1,
            "machine": self.machine,
            "model": self.model,
            "inputs": self.inputs,
            "settings": self.settings,
            "definitions": {
                "prefill_ms": "multimodal embeddings ready -> decoder output; (b) includes audio "
                "scoring and compression; (c) is the bare decoder call on the kept tokens",
                "ttft_ms": "prepared processor outputs -> first token (encoders, OmniZip, "
                "decoder, LM head on the last position, argmax)",
                "memory": self.memory_method,
                "predicted_speedup": "F(L)/F(L'), F(n) = layers*[n*(2dq + 2dk + 3dm) + n(n+1)q] "
                "(decoder prefill multiply-accumulates; q = heads*head_dim, k = kv_heads*head_dim, "
                "m = FFN width)",
                "decoder_dims": self.dims.as_dict(),
            },
            "cpu_share_median": self.cpu_share(),
            "foreign_share_median": self.foreign_share(),
            "contended": self.contended(),
            "configs": {c.name: c.as_dict() for c in self.configs},
            "comparison": {p: self.comparison(p) for p in self.presets()},
            "checks": self.checks,
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return out


