"""What every benchmark script shares: a median timer, and the machine and commit it ran on."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_ms(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Median milliseconds of ``fn`` after one untimed warm-up call (which also autotunes kernels).

    CUDA work is timed with events around each call; CPU work with the wall clock.
    """
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, {cpu}, torch {torch.__version__}"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


HERE = Path(__file__).resolve().parent


def commit(checkout: Path = HERE) -> str:
    """The short commit of the checkout holding ``checkout`` (these scripts' own by default, wherever
    they are run from), or "unknown" outside a git checkout or without git; git's errors are silenced."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    sha = result.stdout.strip()
    if result.returncode != 0 or not sha:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
    return sha + (" (with uncommitted changes)" if dirty else "")
