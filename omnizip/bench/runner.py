"""``run_benchmark``: (a) full, (b) OmniZip per preset and (c) kept-tokens-only per preset, timed
interleaved run by run, then one memory run each (see :mod:`omnizip.bench`)."""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from ..flops import decoder_dims, run_macs
from ..inputs import to_device
from .machine import cpu_ticks, foreign_share, machine_info
from .memory import PeakMemory, pin_malloc_thresholds
from .result import DISCARD_FOREIGN, DISCARD_SHARE, BenchResult, ConfigResult
from .runs import capture_decoder_inputs, first_token, forward, gather_kept
from .timing import CLOCKS, StageTimer, sync, thinker_of

__all__ = ["decoder_parameters", "run_benchmark"]


def decoder_parameters(model: Any) -> int:
    """Parameters of the decoder layers (no embedding table, no LM head)."""
    thinker = thinker_of(model)
    return sum(p.numel() for p in thinker.model.language_model.layers.parameters())


class _Benchmark:
    """The kinds of run on one prompt, and what they found (kept indices, checks).

    ``methods``: label -> compression method; a patched configuration per label
    (``patched[label]`` names it), and with ``kept_limit`` the kept-tokens-only limit of each
    (``kept-<label>``)."""

    def __init__(self, model: Any, inputs: Any, methods: dict[str, Any], patched: dict[str, str],
                 use_audio_in_video: bool, clock: str, kept_limit: bool = True,
                 kind: str = "omnizip") -> None:
        self.model = model
        self.thinker = thinker_of(model)
        param = next(self.thinker.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.inputs = to_device(inputs, self.device, self.dtype)
        ids = self.inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("run_benchmark: inputs must hold one prompt (batch of one)")
        cfg = self.thinker.config
        audio_id = int(getattr(cfg, "audio_token_id", getattr(cfg, "audio_token_index", -1)))
        video_id = int(getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", -1)))
        self.n_audio = int((ids == audio_id).sum())
        self.n_video = int((ids == video_id).sum())
        self.length = int(ids.shape[1])
        self.uav = use_audio_in_video and self.n_audio > 0
        self.dims = decoder_dims(model)
        self.methods = methods
        self.patched = patched
        self.kind = kind
        self.results: dict[str, ConfigResult] = {
            "full": ConfigResult("full", "full", None, self.length, self.n_audio, self.n_video,
                                 flops_ratio=1.0)
        }
        self.kept_idx: dict[str, torch.Tensor] = {}
        self.checks: dict[str, Any] = {}
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
        if clock == "cpu" and (self.device.type != "cpu" or torch.get_num_threads() != 1):
            raise ValueError("clock='cpu' times single-threaded CPU runs: use a CPU device and "
                             "one torch thread (--threads 1)")
        self.now = CLOCKS[clock]
        self.timer = StageTimer(model, self.device, self.now)
        self.order = ["full"]
        #: configuration name -> (role, label)
        self.roles: dict[str, tuple[str, str | None]] = {"full": ("full", None)}
        for label in methods:
            self.order.append(patched[label])
            self.roles[patched[label]] = ("patched", label)
            if kept_limit:
                self.order.append(f"kept-{label}")
                self.roles[f"kept-{label}"] = ("kept", label)

    def flops_ratio(self, layer_tokens: list[int]) -> float:
        """Decoder prefill FLOPs of a run whose layers saw ``layer_tokens``, over the full run's."""
        return run_macs(self.dims, 0, layer_tokens=layer_tokens) / max(run_macs(self.dims, self.length), 1)

    # -- (a) ---------------------------------------------------------------------------------
    def run_full(self) -> tuple[float, float]:
        """(TTFT, prefill) seconds of the unpatched model."""
        self.timer.reset()
        sync(self.device)
        t0 = self.now()
        forward(self.thinker, self.inputs, self.uav)
        sync(self.device)
        return self.now() - t0, self.timer.decoder_s

    # -- (b) ---------------------------------------------------------------------------------
    def run_omnizip(self, p: str, record: bool) -> tuple[float, float, float, float]:
        """(TTFT, prefill incl. scoring and compression, scoring, compression) seconds of the
        patched configuration of label ``p``."""
        from ..patch import patch

        handle = patch(self.model, self.methods[p])
        self.timer.after_patch()
        check: dict = {}
        spy = None
        if p not in self.checks:  # once: what the patch hands the decoder, for the (c) cross-check

            def on_decoder(module: Any, args: tuple, kwargs: dict) -> None:
                if "pos" not in check:
                    check["pos"] = kwargs.get("position_ids")
                    check["embeds"] = kwargs.get("inputs_embeds")

            spy = self.thinker.model.language_model.register_forward_pre_hook(
                on_decoder, with_kwargs=True)
        try:
            self.timer.reset()
            sync(self.device)
            t0 = self.now()
            forward(self.thinker, self.inputs, self.uav)
            sync(self.device)
            ttft = self.now() - t0
        finally:
            if spy is not None:
                spy.remove()
            self.timer.drop_late()
            handle.remove()
        self._record_kept(p, handle, record)
        if check:
            self.checks[p] = check
        timer = self.timer
        decoder_only = timer.dec_end - timer.dec_ready if timer.dec_ready else timer.decoder_s
        compress = timer.compression_s
        return ttft, timer.score_s + compress + decoder_only, timer.score_s, compress

    def _record_kept(self, p: str, handle: Any, record: bool) -> None:
        kept = handle.kept_indices[0].detach().to("cpu") if handle.kept_indices else None
        if kept is None:
            kept = torch.arange(self.length)
        if p in self.kept_idx and not torch.equal(self.kept_idx[p], kept):
            raise RuntimeError(f"{self.patched[p]}: kept tokens differ between runs of the same prompt")
        self.kept_idx[p] = kept
        name = self.patched[p]
        if record or name not in self.results:
            res = handle.results[0] if handle.results else None
            layers = handle.layer_tokens[0] if handle.layer_tokens else [int(kept.numel())] * self.dims.layers
            self.results.setdefault(name, ConfigResult(
                name, self.kind, p, int(kept.numel()),
                res.n_audio_kept if res is not None else self.n_audio,
                res.n_video_kept if res is not None else self.n_video,
                flops_ratio=self.flops_ratio(list(layers)), layer_tokens=list(layers),
            ))

    # -- (c) ---------------------------------------------------------------------------------
    def run_kept(self, p: str) -> tuple[float, float, dict]:
        """(TTFT, prefill, decoder kwargs) of the bare decoder on (b)'s kept tokens; no hooks at
        all (the capture hook stops the encoders' run)."""
        self.timer.remove()
        try:
            sync(self.device)
            t0 = self.now()
            kwargs = capture_decoder_inputs(self.thinker, self.inputs, self.uav)
            small = gather_kept(kwargs, self.kept_idx[p])
            sync(self.device)
            t1 = self.now()
            out = self.thinker.model.language_model(**small)
            sync(self.device)
            t2 = self.now()
            first_token(self.thinker, out.last_hidden_state)
            sync(self.device)
            return self.now() - t0, t2 - t1, small
        finally:
            self.timer.attach()

    def verify(self, p: str, small: dict) -> None:
        """(c)'s decoder inputs equal (b)'s, except the merged anchors' embeddings."""
        check = self.checks.get(p)
        if not isinstance(check, dict) or "pos" not in check:
            return
        same_pos = check["pos"] is not None and torch.equal(
            check["pos"].to("cpu"), small["position_ids"].to("cpu")
        )
        diff = (check["embeds"].to("cpu") != small["inputs_embeds"].to("cpu")).any(-1)
        self.checks[p] = {
            "positions_equal": bool(same_pos),
            "embeddings_differ_at": int(diff.sum()),
            "note": "(c) gets the original embeddings; (b)'s anchors carry merged audio, so only "
            "they may differ",
        }

    # -- one timed run of a configuration ------------------------------------------------------
    def timed(self, name: str, record: bool, threads: int) -> dict[str, float]:
        """One run of ``name``: its times in ms, and on CPU its CPU share and other processes'."""
        gc.collect()
        gc.disable()  # no collector pauses inside a timed run (as timeit does)
        ticks0 = cpu_ticks() if self.device.type == "cpu" else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        row: dict[str, float] = {}
        role, p = self.roles[name]
        if role == "full":
            row["ttft_ms"], row["prefill_ms"] = self.run_full()
        elif role == "patched":
            ttft, prefill, score, comp = self.run_omnizip(p, record)
            row.update(ttft_ms=ttft, prefill_ms=prefill, overhead_ms=score + comp,
                       score_ms=score, compress_ms=comp)
        else:
            row["ttft_ms"], row["prefill_ms"], small = self.run_kept(p)
            if isinstance(self.checks.get(p), dict) and "pos" in self.checks[p]:
                self.verify(p, small)
            omni = self.results[self.patched[p]]
            n_kept = int(self.kept_idx[p].numel())
            self.results.setdefault(name, ConfigResult(
                name, "kept", p, n_kept, omni.kept_audio, omni.kept_video,
                flops_ratio=self.flops_ratio([n_kept] * self.dims.layers)))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        foreign = foreign_share(ticks0, cpu_ticks()) if ticks0 else None
        gc.enable()
        row = {k: v * 1e3 for k, v in row.items()}
        if self.device.type == "cpu":
            row["cpu_share"] = round(cpu / max(wall * threads, 1e-9), 3)
            if foreign is not None:
                row["foreign_share"] = round(foreign, 3)
        return row

    def memory_runner(self, name: str) -> Any:
        role, label = self.roles[name]
        if role == "full":
            return self.run_full
        if role == "patched":
            return lambda: self.run_omnizip(label, False)
        return lambda: self.run_kept(label)


def _contended(rows: dict[str, dict[str, float]], clock: str) -> bool:
    """Another process took CPU time from this iteration's runs."""
    shares = [r["cpu_share"] for r in rows.values() if "cpu_share" in r]
    foreign_max = max((r["foreign_share"] for r in rows.values() if "foreign_share" in r),
                      default=0.0)
    return bool(clock == "wall" and shares and min(shares) < DISCARD_SHARE) or (
        foreign_max > DISCARD_FOREIGN)


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
    methods: dict[str, Any] | None = None,
    method_settings: dict[str, Any] | None = None,
) -> BenchResult:
    """Measure (a) full, (b) OmniZip per preset and (c) kept-tokens-only per preset; or, with
    ``methods`` (name -> configuration, see :mod:`omnizip.bench.compare`), (a) and every
    method patched in (prefill with its own scoring and pruning, TTFT, peak memory, FLOPs
    ratio), ``method_settings`` recorded with them.

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

    from ..config import OmniZipConfig

    if methods is None:
        chosen = {p: OmniZipConfig.preset(p, **(config_overrides or {})) for p in presets}
        bench = _Benchmark(model, inputs, chosen, {p: f"omnizip-{p}" for p in presets},
                           use_audio_in_video, clock)
    else:
        bench = _Benchmark(model, inputs, methods, {m: m for m in methods}, use_audio_in_video,
                           clock, kept_limit=False, kind="method")
    device, order, results = bench.device, bench.order, bench.results
    machine_start = machine_info(device)
    threads = max(1, torch.get_num_threads())
    total = (warmup + reps) * len(order) + len(order)
    bar = tqdm(total=total, desc="bench", unit="run", disable=None if progress else True, leave=False)
    discarded = 0
    method = ""
    try:
        with torch.no_grad():
            it = 0
            while it < warmup + reps:
                record = it >= warmup
                rows: dict[str, dict[str, float]] = {}  # this iteration, committed at its end
                for name in order:
                    bar.set_description(f"bench {name} ({'run' if record else 'warm-up'})")
                    rows[name] = bench.timed(name, record, threads)
                    bar.update(1)
                if record and _contended(rows, clock) and discarded < retry_contended:
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
            if device.type == "cpu":
                pin_malloc_thresholds()
            for name in order:
                bar.set_description(f"bench {name} (memory)")
                runner = bench.memory_runner(name)
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
        bench.timer.remove()

    return BenchResult(
        model=dict(model_info or {}, decoder_parameters=decoder_parameters(model),
                   dtype=str(bench.dtype).replace("torch.", "")),
        machine=dict(machine_start, load_average_1min_at_end=machine_info(device).get("load_average_1min")),
        inputs=dict(input_info or {}, prompt_tokens=bench.length, audio_tokens=bench.n_audio,
                    video_tokens=bench.n_video, text_tokens=bench.length - bench.n_audio - bench.n_video),
        settings={"reps": reps, "warmup": warmup,
                  "presets": list(presets) if methods is None else [],
                  "methods": {m: dict((method_settings or {}).get(m, {}), config=_as_dict(cfg))
                              for m, cfg in (methods or {}).items()},
                  "discarded_iterations": discarded, "retry_contended": retry_contended,
                  "clock": clock,
                  "config_overrides": config_overrides or {},
                  "use_audio_in_video": bench.uav},
        configs=[results[n] for n in order],
        memory_method=method,
        checks={p: c for p, c in bench.checks.items() if "pos" not in c},
        dims=bench.dims,
    )


def _as_dict(method: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(method):
        return {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    return {"repr": repr(method)}
