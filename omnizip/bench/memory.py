"""Peak memory of one run: the CUDA allocator's peak, or on CPU the process's peak resident set
(kernel high-water mark after a reset, with glibc's heap returned to the OS first)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from typing import Any

import torch

__all__ = ["PeakMemory", "pin_malloc_thresholds"]


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pin_malloc_thresholds(threshold: int = 128 * 1024) -> bool:
    """glibc: fixed mmap and trim thresholds (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1),
    so freed large blocks go back to the OS at once. Used for the memory runs only (page faults
    on every large allocation make it slower)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, threshold))
    except (OSError, AttributeError):
        return False


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


