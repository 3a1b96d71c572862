"""Reading a vLLM server's Prometheus metrics while a benchmark's requests run.

Shared by bench_serving.py (one request per clip) and serving_streams.py (growing streams):
both poll the server every half second for the peak KV-cache usage (and other gauges) while
their requests are in flight, then read the KV-cache size once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any


def metric(text: str, name: str) -> float:
    """The value of gauge ``name`` in a Prometheus text page (NaN when absent)."""
    found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def total_blocks(text: str) -> int:
    """The KV-cache size in blocks that the server reports (0 when absent)."""
    found = re.search(r'^vllm:cache_config_info\{.*\bnum_gpu_blocks="(\d+)"', text, re.M)
    return int(found.group(1)) if found else 0


async def gather_sampled(
    read_metrics: Callable[[], str], work: list[Awaitable[Any]], gauges: dict[str, str],
) -> tuple[list[Any], float, dict[str, float]]:
    """Run ``work`` concurrently while polling ``read_metrics()`` every 0.5 s.

    Returns the results in order, the wall time of the whole batch in seconds, and the peak of
    every gauge (``{key: vLLM metric name}``) seen while it ran.
    """
    peak = dict.fromkeys(gauges, 0.0)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            text = await asyncio.to_thread(read_metrics)
            for key, name in gauges.items():
                peak[key] = max(peak[key], metric(text, name))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    try:
        results = await asyncio.gather(*work)
    finally:
        wall = time.perf_counter() - start
        done.set()
        await sampler
    return list(results), wall, peak
