"""What a benchmark ran on, and how much of the machine other processes used meanwhile."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import torch

__all__ = ["cpu_ticks", "describe_machine", "foreign_share", "machine_info"]


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



def cpu_ticks() -> tuple[int, int, int] | None:
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


def foreign_share(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> float | None:
    """Fraction of the machine's CPU capacity used by other processes between two readings
    (None when unknown or too short to tell: under 50 ticks)."""
    if before is None or after is None:
        return None
    total = after[1] - before[1]
    if total < 50:
        return None
    other = (after[0] - before[0]) - (after[2] - before[2])
    return max(0.0, other / total)


