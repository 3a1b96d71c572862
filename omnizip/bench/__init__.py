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

Predicted speedup from token counts: ``F(L) / F(L')``, the ratio of the decoder's prefill
multiply-accumulates at the full prompt length ``L`` and at the kept length ``L'`` for this
model's sizes, from the one decoder cost model in :mod:`omnizip.flops` (the same count
``omnizip eval`` reports its FLOPs ratio with)::

    F(n) = layers * [ n * (2 d q + 2 d k + 3 d m) + n (n + 1) q ]

Modules: :mod:`~omnizip.bench.runner` (the runs), :mod:`~omnizip.bench.timing` (hooks),
:mod:`~omnizip.bench.memory` (peak memory), :mod:`~omnizip.bench.machine` (machine and
contention), :mod:`~omnizip.bench.runs` (one forward of each kind), :mod:`~omnizip.bench.result`
(results and targets), :mod:`~omnizip.bench.table` (the table).
"""

from __future__ import annotations

from ..demo.scaled_model import SCALED_SIZES, build_scaled_thinker
from ..flops import DecoderDims, decoder_dims, predicted_speedup
from .machine import describe_machine, machine_info
from .result import BenchResult, ConfigResult
from .runner import decoder_parameters, run_benchmark
from .runs import capture_decoder_inputs, first_token, forward, gather_kept
from .table import format_table
from .timing import StageTimer

__all__ = [
    "SCALED_SIZES",
    "BenchResult",
    "ConfigResult",
    "DecoderDims",
    "StageTimer",
    "build_scaled_thinker",
    "capture_decoder_inputs",
    "decoder_dims",
    "decoder_parameters",
    "describe_machine",
    "first_token",
    "format_table",
    "forward",
    "gather_kept",
    "machine_info",
    "predicted_speedup",
    "run_benchmark",
]
