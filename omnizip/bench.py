"""``omnizip bench``: prefill latency, time to first token and peak memory of OmniZip.

Three kinds of configuration run on the same prompt (one video with its audio track):

(a) ``full``        the model as is, every token.
(b) ``omnizip-P``   the model patched with ``omnizip.patch`` at preset ``P``; the audio scoring
                    and the compression are *included* in its prefill.
(c) ``kept-P``      the same decoder fed only the tokens (b) kept: ``inputs_embeds`` gathered with
                    (b)'s kept indices, the original position ids, called directly (no hooks),
                    so nothing is scored or compressed: the physical limit of any pruning that
                    keeps this many tokens. ``(b) - (c)`` is OmniZip's overhead.

What is timed (medians of ``reps`` runs after ``warmup`` runs; the configurations are
interleaved run by run so drifting machine load affects them alike):

* **prefill**: from the multimodal embeddings being ready to the decoder's last hidden state.
  (a): the decoder (``language_model``) forward. (b): audio scoring (the patch's hook in the
  audio encoder's last layer) + compression (the patch's hook at the decoder's entry) + the
  decoder forward over the kept tokens. (c): the decoder forward over the kept tokens.
* **TTFT** (time to first token): from the prepared processor outputs to the first token:
  audio and vision encoders, (b)'s scoring and compression, the decoder, the LM head on the
  last position and the argmax. (Transformers' Qwen-Omni thinker ``forward`` applies the LM
  head to every prompt position; generation engines compute the last one only, as here.)
* **peak memory**: CUDA: ``torch.cuda.max_memory_allocated`` over one run (reset before it),
  and its rise over the memory allocated before the run. CPU: the process's peak resident set
  size over one run, read from the kernel's high-water mark ``VmHWM`` after resetting it
  (``/proc/self/clear_refs``) and returning freed heap to the OS (``malloc_trim``) just before
  the run, with glibc's mmap and trim thresholds pinned (128 KiB) so every large tensor is
  mapped and unmapped with itself and earlier runs leave nothing behind in the heap; where
  ``clear_refs`` is unavailable, a sampler thread reads ``VmRSS`` every millisecond. After the
  timed runs: per configuration one untimed run, then the measured one.
* **contention** (CPU only): for every timed run, the process's CPU share (CPU time / (wall
  time x torch threads), about 0.95 on an idle machine) and the share of the machine's CPU
  capacity that other processes and the hypervisor (steal) used meanwhile (``/proc/stat``). A
  timed iteration with a run below 0.8 CPU share or above 10% foreign use is measured again
  (``retry_contended`` times at most, reported); a median below 0.85 or above 5% prints a
  warning: another process was competing for the cores.

Predicted speedup from token counts: the ratio of the decoder's prefill multiply-accumulates
at the full prompt length ``L`` and at the kept length ``L'``, for this model's sizes::

    F(n) = layers * [ n * (2 d q + 2 d k + 3 d m) + n (n + 1) q ]

with ``d`` the hidden size, ``q = heads * head_dim`` and ``k = kv_heads * head_dim`` the
query and key/value widths (Q, O and K, V projections), ``m`` the FFN width of the SwiGLU MLP
(gate, up, down; for a mixture of experts, ``experts_per_token * expert_width`` plus the
router), and ``n (n + 1) q`` the causal attention (``Q K^T`` and ``A V`` over ``n (n+1) / 2``
query-key pairs each). Predicted speedup ``= F(L) / F(L')``; the layer count cancels.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SCALED_SIZES",
    "BenchResult",
    "DecoderDims",
    "build_scaled_thinker",
    "decoder_dims",
    "format_table",
    "machine_info",
    "predicted_speedup",
    "prefill_macs",
    "run_benchmark",
]

#: The built-in "scaled" random-weight Qwen2.5-Omni thinker of ``omnizip bench`` (real
#: architecture; decoder head width 128 and FFN/hidden ratio about 5.3 as in the 3B/7B
#: checkpoints, GQA). CPU: small enough for a few minutes on a laptop-class CPU; CUDA: wider
#: and deeper so the GPU is not launch-bound. Encoders stay tiny (the same in all configs).
SCALED_SIZES: dict[str, dict[str, int]] = {
    "cpu": dict(text_hidden=768, text_layers=6, text_heads=6, text_kv_heads=2, intermediate=4096),
    "cuda": dict(text_hidden=2048, text_layers=12, text_heads=16, text_kv_heads=2,
                 intermediate=11008),
}


#: below this median CPU share (see :meth:`BenchResult.cpu_share`) the CPU timings are flagged
CONTENDED_SHARE = 0.85
#: a timed CPU iteration with a run below this share is measured again (``retry_contended``)
DISCARD_SHARE = 0.8
#: ... or with a run during which other processes (and the hypervisor's steal) used more than
#: this fraction of the machine's CPU capacity (from /proc/stat); above half of it, a warning
DISCARD_FOREIGN = 0.10
#: the clocks ``run_benchmark`` can time with
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

# ----------------------------------------------------------------------------- FLOPs model
@dataclass(frozen=True)
class DecoderDims:
    """Decoder sizes the prefill count needs (see the module docstring)."""

    hidden: int
    layers: int
    q_width: int  # heads * head_dim
    kv_width: int  # kv_heads * head_dim
    mlp_width: int  # FFN width, or experts_per_token * expert width for a MoE
    router: int = 0  # experts (a MoE router is a d x experts matmul)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def decoder_dims(model: Any) -> DecoderDims:
    """:class:`DecoderDims` from a Qwen-Omni model (full model, thinker or their configs)."""
    cfg = getattr(model, "config", model)
    for nested in ("thinker_config", "text_config"):
        inner = getattr(cfg, nested, None)
        if inner is not None:
            cfg = inner
    d = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    experts = getattr(cfg, "num_experts", None)
    per_tok = getattr(cfg, "num_experts_per_tok", None)
    if experts and per_tok and getattr(cfg, "moe_intermediate_size", None):
        mlp = int(per_tok) * int(cfg.moe_intermediate_size)
        mlp += int(getattr(cfg, "shared_expert_intermediate_size", 0) or 0)
        router = int(experts)
    else:
        mlp, router = int(cfg.intermediate_size), 0
    return DecoderDims(d, int(cfg.num_hidden_layers), heads * head_dim, kv_heads * head_dim, mlp, router)


def prefill_macs(n: int, dims: DecoderDims) -> int:
    """Decoder prefill multiply-accumulates over ``n`` tokens (module docstring formula)."""
    d, q, k, m = dims.hidden, dims.q_width, dims.kv_width, dims.mlp_width
    linear = 2 * d * q + 2 * d * k + 3 * d * m + d * dims.router
    return dims.layers * (n * linear + n * (n + 1) * q)


def predicted_speedup(n_full: int, n_kept: int, dims: DecoderDims) -> float:
    """``F(n_full) / F(n_kept)``: the prefill speedup the token counts predict."""
    return prefill_macs(n_full, dims) / max(prefill_macs(n_kept, dims), 1)


# ----------------------------------------------------------------------------- models
def build_scaled_thinker(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sizes: dict[str, int] | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Any:
    """The random-weight Qwen2.5-Omni thinker ``omnizip bench`` uses by default.

    ``sizes`` (default ``SCALED_SIZES["cuda" or "cpu"]``): ``text_hidden``, ``text_layers``,
    ``text_heads``, ``text_kv_heads``, ``intermediate``. Same real architecture, token ids and
    processor format as :func:`omnizip.demo.tiny_model.build_tiny_qwen2_5_omni_thinker`.
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from .demo.tiny_model import _finish, tiny_thinker_config

    device = torch.device(device)
    sizes = dict(sizes or SCALED_SIZES["cuda" if device.type == "cuda" else "cpu"])
    intermediate = sizes.pop("intermediate", None)
    cfg = tiny_thinker_config(attn_implementation=attn_implementation, **sizes)
    if intermediate:
        cfg.text_config.intermediate_size = int(intermediate)
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    model = _finish(model, seed)
    return model.to(device=device, dtype=dtype)


def decoder_parameters(model: Any) -> int:
    """Parameters of the decoder layers (no embedding table, no LM head)."""
    thinker = getattr(model, "thinker", model)
    return sum(p.numel() for p in thinker.model.language_model.layers.parameters())


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch threads and the GPU name: what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    if "gpu" in info:
        return f"{info['gpu']} (CUDA), host {info['cpu']}"
    return f"{info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads"


# ----------------------------------------------------------------------------- memory
def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of the whole machine incl. steal, all ticks, this process's ticks) from
    /proc (Linux), or None."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:9]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
        user, nice, system, idle, iowait, irq, softirq, steal = vals
        busy = user + nice + system + irq + softirq + steal
        return busy, busy + idle + iowait, int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


def _foreign_share(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> float | None:
    """Fraction of the machine's CPU capacity used by other processes between two readings
    (None when unknown or too short to tell: under 50 ticks)."""
    if before is None or after is None:
        return None
    total = after[1] - before[1]
    if total < 50:
        return None
    other = (after[0] - before[0]) - (after[2] - before[2])
    return max(0.0, other / total)


def _pin_malloc_thresholds(threshold: int = 128 * 1024) -> bool:
    """glibc: fixed mmap and trim thresholds (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1),
    so freed large blocks go back to the OS at once. Used for the memory runs only (page faults
    on every large allocation make it slower)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, threshold))
    except (OSError, AttributeError):
        return False


def _memory_runner(name: str, run_full: Any, run_omnizip: Any, run_kept: Any) -> Any:
    if name == "full":
        return run_full
    preset = name.split("-", 1)[1]
    if name.startswith("omnizip-"):
        return lambda: run_omnizip(preset, False)
    return lambda: run_kept(preset)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or the process's peak RSS on CPU.

    After the block: ``peak`` (bytes) and ``rise`` (peak minus what was in use before it);
    ``method`` says how it was measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.rise = 0
        self.method = ""
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated over the run"
            return self
        _malloc_trim()
        rss = _read_status_kib("VmRSS")
        if rss is not None and _reset_peak_rss():
            self.base = rss * 1024
            self.method = ("process peak RSS (kernel high-water mark VmHWM, reset via "
                           "/proc/self/clear_refs after malloc_trim just before the run; glibc "
                           "mmap/trim thresholds pinned at 128 KiB for the memory runs)")
            return self
        self.base = (rss or 0) * 1024
        self._sampled = self.base
        self.method = "process RSS sampled every 1 ms by a thread during the run"
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                now = _read_status_kib("VmRSS")
                if now is not None:
                    self._sampled = max(self._sampled, now * 1024)
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            hwm = _read_status_kib("VmHWM")
            self.peak = (hwm or 0) * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._sampled
        self.rise = max(0, self.peak - self.base)


# ----------------------------------------------------------------------------- timing hooks
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def thinker_of(model: Any) -> Any:
    return getattr(model, "thinker", model)


class StageTimer:
    """Forward hooks that time the decoder's first call and the audio-scoring hook.

    ``dec_start`` (a pre-hook put *first* on ``language_model``, so before OmniZip's
    compression hook), ``dec_ready`` (a pre-hook added after the patch's: compression done),
    ``dec_end`` (after the decoder), and the time spent between a pre-hook put first on the
    last audio attention layer and one added after the patch's scoring hook (``score_s``).
    """

    def __init__(self, model: Any, device: torch.device, clock: Any = time.perf_counter) -> None:
        thinker = thinker_of(model)
        self.device = device
        self.clock = clock
        self.decoder = thinker.model.language_model
        tower = getattr(thinker.model, "audio_tower", None)
        layers = getattr(tower, "layers", None)
        self.score_attn = layers[-1].self_attn if layers is not None and len(layers) else None
        self.lm_head = getattr(thinker, "lm_head", None)
        self._hooks: list[Any] = []
        self._late: list[Any] = []
        self.reset()
        self.attach()

    def attach(self) -> None:
        """Register the hooks that run before the patch's (idempotent)."""
        if self._hooks:
            return
        self._hooks.append(self.decoder.register_forward_pre_hook(self._dec_start, prepend=True))
        self._hooks.append(self.decoder.register_forward_hook(self._dec_end, always_call=True))
        if self.lm_head is not None:
            self._hooks.append(self.lm_head.register_forward_hook(self._head_end))
        if self.score_attn is not None:
            self._hooks.append(
                self.score_attn.register_forward_pre_hook(self._score_start, prepend=True)
            )

    def after_patch(self) -> None:
        """Add the hooks that must run after the patch's own (call after ``omnizip.patch``)."""
        self.drop_late()
        self._late.append(self.decoder.register_forward_pre_hook(self._dec_ready))
        if self.score_attn is not None:
            self._late.append(self.score_attn.register_forward_pre_hook(self._score_end))

    def drop_late(self) -> None:
        for h in self._late:
            h.remove()
        self._late = []

    def remove(self) -> None:
        self.drop_late()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def reset(self) -> None:
        self.head_end: float | None = None
        self.dec_start: float | None = None
        self.dec_ready: float | None = None
        self.dec_end: float | None = None
        self.score_s = 0.0
        self._score_t0: float | None = None

    def _now(self) -> float:
        _sync(self.device)
        return self.clock()

    def _dec_start(self, module: Any, args: Any) -> None:
        if self.dec_start is None:
            self.dec_start = self._now()

    def _dec_ready(self, module: Any, args: Any) -> None:
        if self.dec_ready is None:
            self.dec_ready = self._now()

    def _dec_end(self, module: Any, args: Any, output: Any) -> None:
        if self.dec_end is None:
            self.dec_end = self._now()

    def _head_end(self, module: Any, args: Any, output: Any) -> None:
        if self.head_end is None:
            self.head_end = self._now()

    def _score_start(self, module: Any, args: Any) -> None:
        self._score_t0 = self._now()

    def _score_end(self, module: Any, args: Any) -> None:
        if self._score_t0 is not None:
            self.score_s += self._now() - self._score_t0
            self._score_t0 = None

    # derived ---------------------------------------------------------------------------------
    @property
    def decoder_s(self) -> float:
        """The whole decoder call (with a patch: its compression hook included)."""
        if self.dec_start is None or self.dec_end is None:
            return float("nan")
        return self.dec_end - self.dec_start

    @property
    def compression_s(self) -> float:
        if self.dec_ready is None or self.dec_start is None:
            return 0.0
        return self.dec_ready - self.dec_start


# ----------------------------------------------------------------------------- one run each
class _Stop(Exception):
    """Raised by the capture hook to end a forward once the decoder inputs exist."""


def _first_token(thinker: Any, hidden: torch.Tensor) -> torch.Tensor:
    return thinker.lm_head(hidden[:, -1:]).argmax(-1)


def _forward(thinker: Any, inputs: dict, uav: bool) -> torch.Tensor:
    out = thinker.model(**inputs, use_audio_in_video=uav, use_cache=True)
    return _first_token(thinker, out.last_hidden_state)


def capture_decoder_inputs(thinker: Any, inputs: dict, uav: bool) -> dict:
    """Run the encoders and stop at the decoder's entry; returns the decoder's kwargs."""
    got: dict = {}

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        got.update(kwargs)
        raise _Stop

    h = thinker.model.language_model.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        thinker.model(**inputs, use_audio_in_video=uav, use_cache=True)
    except _Stop:
        pass
    finally:
        h.remove()
    return got


def gather_kept(kwargs: dict, kept: torch.Tensor) -> dict:
    """The decoder's kwargs restricted to the kept prompt slots (batch of one): embeddings
    gathered, original M-RoPE positions (a plain text row, if any, renumbered 0..L'-1 as the
    patch does), mask and per-token side inputs (Qwen3-Omni deepstack) gathered alike."""
    out = dict(kwargs)
    embeds = kwargs["inputs_embeds"]
    length = embeds.shape[1]
    idx = kept.to(embeds.device)
    out["inputs_embeds"] = embeds.index_select(1, idx)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[-1] == length:
        out["attention_mask"] = mask.index_select(1, idx.to(mask.device))
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor) and pos.shape[-1] == length:
        pos = pos.index_select(pos.dim() - 1, idx.to(pos.device))
        if pos.dim() == 3 and pos.shape[0] == 4:
            pos = pos.clone()
            pos[0] = torch.arange(pos.shape[-1], device=pos.device)
        out["position_ids"] = pos
    vis = kwargs.get("visual_pos_masks")
    if isinstance(vis, torch.Tensor) and vis.shape[-1] == length:
        keep = torch.zeros(length, dtype=torch.bool, device=vis.device)
        keep[idx.to(vis.device)] = True
        kept_visual = keep[vis[0]]
        out["visual_pos_masks"] = vis.index_select(1, idx.to(vis.device))
        deep = kwargs.get("deepstack_visual_embeds")
        if deep is not None:
            out["deepstack_visual_embeds"] = [f[kept_visual.to(f.device)] for f in deep]
    return out


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class ConfigResult:
    name: str
    kind: str  # "full" | "omnizip" | "kept"
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


def _to_device(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict:
    return {
        k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
        if isinstance(v, torch.Tensor) else v
        for k, v in dict(inputs).items()
    }


def run_benchmark(
    model: Any,
    inputs: Any,
    *,
    presets: tuple[str, ...] = ("45", "35"),
    config_overrides: dict[str, Any] | None = None,
    reps: int = 5,
    warmup: int = 1,
    use_audio_in_video: bool = True,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    input_info: dict[str, Any] | None = None,
    retry_contended: int = 0,
    clock: str = "wall",
) -> BenchResult:
    """Measure (a) full, (b) OmniZip per preset and (c) kept-tokens-only per preset.

    Args:
        model: a Qwen-Omni model (full or thinker) that ``omnizip.patch`` supports.
        inputs: the processor's outputs for one prompt (batch of one).
        presets: OmniZip presets ("45", "35").
        config_overrides: extra :class:`~omnizip.OmniZipConfig` fields for every preset.
        reps, warmup: timed runs (medians) and untimed warm-up runs per configuration.
        retry_contended: on CPU, measure a timed iteration (one run of every configuration)
            again when any of its runs got less than ``DISCARD_SHARE`` of its threads' CPU
            time (another process competed), at most this many times in all; the count is
            reported (``settings.discarded_iterations``).
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"``: the process's CPU time, for
            one-threaded CPU runs on a shared machine (a run descheduled by other processes
            accrues no CPU time, so the numbers stay those of the work itself; contended
            iterations are then not measured again).
    """
    from tqdm.auto import tqdm

    from .config import OmniZipConfig
    from .patch import patch

    thinker = thinker_of(model)
    param = next(thinker.parameters())
    device, dtype = param.device, param.dtype
    inputs = _to_device(inputs, device, dtype)
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("run_benchmark: inputs must hold one prompt (batch of one)")
    cfg = thinker.config
    audio_id = int(getattr(cfg, "audio_token_id", getattr(cfg, "audio_token_index", -1)))
    video_id = int(getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", -1)))
    n_audio = int((ids == audio_id).sum())
    n_video = int((ids == video_id).sum())
    length = int(ids.shape[1])
    uav = use_audio_in_video and n_audio > 0
    methods = {p: OmniZipConfig.preset(p, **(config_overrides or {})) for p in presets}

    results: dict[str, ConfigResult] = {
        "full": ConfigResult("full", "full", None, length, n_audio, n_video)
    }
    kept_idx: dict[str, torch.Tensor] = {}
    checks: dict[str, Any] = {}
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("clock='cpu' times single-threaded CPU runs: use a CPU device and "
                         "one torch thread (--threads 1)")
    now = CLOCKS[clock]
    timer = StageTimer(model, device, now)
    order = ["full"]
    for p in presets:
        order += [f"omnizip-{p}", f"kept-{p}"]

    def run_full() -> tuple[float, float]:
        timer.reset()
        _sync(device)
        t0 = now()
        _forward(thinker, inputs, uav)
        _sync(device)
        return now() - t0, timer.decoder_s

    def run_omnizip(p: str, record: bool) -> tuple[float, float, float, float]:
        handle = patch(model, methods[p])
        timer.after_patch()
        check: dict = {}
        spy = None
        if p not in checks:  # once: what the patch hands the decoder, for the (c) cross-check

            def on_decoder(module: Any, args: tuple, kwargs: dict) -> None:
                if "pos" not in check:
                    check["pos"] = kwargs.get("position_ids")
                    check["embeds"] = kwargs.get("inputs_embeds")

            spy = thinker.model.language_model.register_forward_pre_hook(on_decoder, with_kwargs=True)
        try:
            timer.reset()
            _sync(device)
            t0 = now()
            _forward(thinker, inputs, uav)
            _sync(device)
            ttft = now() - t0
        finally:
            if spy is not None:
                spy.remove()
            timer.drop_late()
            handle.remove()
        kept = handle.kept_indices[0].detach().to("cpu") if handle.kept_indices else None
        if kept is None:
            kept = torch.arange(length)
        if p in kept_idx and not torch.equal(kept_idx[p], kept):
            raise RuntimeError(f"omnizip-{p}: kept tokens differ between runs of the same prompt")
        kept_idx[p] = kept
        if record or f"omnizip-{p}" not in results:
            res = handle.results[0] if handle.results else None
            results.setdefault(
                f"omnizip-{p}",
                ConfigResult(
                    f"omnizip-{p}", "omnizip", p, int(kept.numel()),
                    res.n_audio_kept if res is not None else n_audio,
                    res.n_video_kept if res is not None else n_video,
                ),
            )
        if check:
            checks[p] = check
        decoder_only = timer.dec_end - timer.dec_ready if timer.dec_ready else timer.decoder_s
        compress = timer.compression_s
        return ttft, timer.score_s + compress + decoder_only, timer.score_s, compress

    def run_kept(p: str) -> tuple[float, float, dict]:
        kept = kept_idx[p]
        timer.remove()  # (c) runs with no hooks at all (the capture hook stops the encoders' run)
        try:
            return _run_kept(kept)
        finally:
            timer.attach()

    def _run_kept(kept: torch.Tensor) -> tuple[float, float, dict]:
        _sync(device)
        t0 = now()
        kwargs = capture_decoder_inputs(thinker, inputs, uav)
        small = gather_kept(kwargs, kept)
        _sync(device)
        t1 = now()
        out = thinker.model.language_model(**small)
        _sync(device)
        t2 = now()
        _first_token(thinker, out.last_hidden_state)
        _sync(device)
        return now() - t0, t2 - t1, small

    def verify(p: str, small: dict) -> None:
        """(c)'s decoder inputs equal (b)'s, except the merged anchors' embeddings."""
        check = checks.get(p)
        if not isinstance(check, dict) or "pos" not in check:
            return
        same_pos = check["pos"] is not None and torch.equal(
            check["pos"].to("cpu"), small["position_ids"].to("cpu")
        )
        diff = (check["embeds"].to("cpu") != small["inputs_embeds"].to("cpu")).any(-1)
        checks[p] = {
            "positions_equal": bool(same_pos),
            "embeddings_differ_at": int(diff.sum()),
            "note": "(c) gets the original embeddings; (b)'s anchors carry merged audio, so only "
            "they may differ",
        }

    machine_start = machine_info(device)
    threads = max(1, torch.get_num_threads())
    total = (warmup + reps) * len(order) + len(order)
    bar = tqdm(total=total, desc="bench", unit="run", disable=None if progress else True, leave=False)
    discarded = 0
    try:
        with torch.no_grad():
            it = 0
            while it < warmup + reps:
                record = it >= warmup
                rows: dict[str, dict[str, float]] = {}  # this iteration, committed at its end
                for name in order:
                    bar.set_description(f"bench {name} ({'run' if record else 'warm-up'})")
                    gc.collect()
                    gc.disable()  # no collector pauses inside a timed run (as timeit does)
                    ticks0 = _cpu_ticks() if device.type == "cpu" else None
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    row: dict[str, float] = {}
                    if name == "full":
                        row["ttft_ms"], row["prefill_ms"] = run_full()
                    elif name.startswith("omnizip-"):
                        p = name.split("-", 1)[1]
                        ttft, prefill, score, comp = run_omnizip(p, record)
                        row.update(ttft_ms=ttft, prefill_ms=prefill, overhead_ms=score + comp,
                                   score_ms=score, compress_ms=comp)
                    else:
                        p = name.split("-", 1)[1]
                        row["ttft_ms"], row["prefill_ms"], small = run_kept(p)
                        if isinstance(checks.get(p), dict) and "pos" in checks[p]:
                            verify(p, small)
                        results.setdefault(
                            name,
                            ConfigResult(name, "kept", p, int(kept_idx[p].numel()),
                                         results[f"omnizip-{p}"].kept_audio,
                                         results[f"omnizip-{p}"].kept_video),
                        )
                    wall = time.perf_counter() - wall0
                    cpu = time.process_time() - cpu0
                    foreign = _foreign_share(ticks0, _cpu_ticks()) if ticks0 else None
                    gc.enable()
                    row = {k: v * 1e3 for k, v in row.items()}
                    if device.type == "cpu":
                        row["cpu_share"] = round(cpu / max(wall * threads, 1e-9), 3)
                        if foreign is not None:
                            row["foreign_share"] = round(foreign, 3)
                    rows[name] = row
                    bar.update(1)
                shares = [r["cpu_share"] for r in rows.values() if "cpu_share" in r]
                foreign_max = max((r["foreign_share"] for r in rows.values()
                                   if "foreign_share" in r), default=0.0)
                busy = (clock == "wall" and shares and min(shares) < DISCARD_SHARE) or (
                    foreign_max > DISCARD_FOREIGN)
                if record and busy and discarded < retry_contended:
                    # another process took CPU time from this iteration: measure it again
                    discarded += 1
                    bar.total += len(order)
                    continue
                if record:
                    for name, row in rows.items():
                        for key, value in row.items():
                            getattr(results[name], key).append(value)
                it += 1
            # memory, after the timings: per configuration one untimed run, then the measured
            # one. On CPU, glibc's mmap threshold is pinned first (no dynamic threshold), so
            # every large block is mapped and unmapped with its tensor and the RSS peak is the
            # run's own, not an artefact of what earlier runs left in the heap.
            method = ""
            if device.type == "cpu":
                _pin_malloc_thresholds()
            for name in order:
                bar.set_description(f"bench {name} (memory)")
                runner = _memory_runner(name, run_full, run_omnizip, run_kept)
                runner()
                mem = PeakMemory(device)
                with mem:
                    runner()
                results[name].peak_bytes = mem.peak
                results[name].rise_bytes = mem.rise
                method = mem.method
                bar.update(1)
    finally:
        gc.enable()
        bar.close()
        timer.remove()

    return BenchResult(
        model=dict(model_info or {}, decoder_parameters=decoder_parameters(model),
                   dtype=str(dtype).replace("torch.", "")),
        machine=dict(machine_start, load_average_1min_at_end=machine_info(device).get("load_average_1min")),
        inputs=dict(input_info or {}, prompt_tokens=length, audio_tokens=n_audio,
                    video_tokens=n_video, text_tokens=length - n_audio - n_video),
        settings={"reps": reps, "warmup": warmup, "presets": list(presets),
                  "discarded_iterations": discarded, "retry_contended": retry_contended,
                  "clock": clock,
                  "config_overrides": config_overrides or {},
                  "use_audio_in_video": uav},
        configs=[results[n] for n in order],
        memory_method=method,
        checks={p: c for p, c in checks.items() if "pos" not in c},
        dims=decoder_dims(model),
    )


# ----------------------------------------------------------------------------- output
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
