"""VMoBA attention on a GPU: parity mode, fast mode and dense SDPA on the same card.

One attention call per layer type (1D/2D/3D chunks, reference sizes scaled to the grid), bf16,
batch 1, heads 12, head_dim 128 (Wan 2.1 1.3B). Keys get a smooth component along the token order
so the gate is not pure noise. Reports median ms (CUDA events after a warm-up call that also
autotunes the kernel), the time spent selecting chunks, and the realized block density; then the
token count where fast mode breaks even with the best SDPA backend.

    python benchmarks/bench_vmoba.py --out DIR          # GPU
    python benchmarks/bench_vmoba.py --toy --device cpu # tiny, for tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_accel import VMoBAConfig  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.methods import vmoba as vmoba_module  # noqa: E402
from dit_accel.methods.vmoba import VMoBA  # noqa: E402
from dit_accel.methods.vmoba_partition import layer_kind  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import median_ms  # noqa: E402


def inputs(grid, heads, dim, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    n = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(1, n, heads, dim, generator=g) for _ in range(3))
    k = k + torch.cumsum(torch.randn(1, n, heads, dim, generator=g), dim=1) / n**0.5
    return (x.to(device=device, dtype=dtype) for x in (q, k, v))


def best_sdpa_ms(q, k, v, measure, repeats, device) -> float:
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if device != "cuda":
        return measure(lambda: F.scaled_dot_product_attention(qt, kt, vt), repeats)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = float("inf")
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        try:
            with sdpa_kernel(backend):
                best = min(best, measure(lambda: F.scaled_dot_product_attention(qt, kt, vt), repeats))
        except RuntimeError:
            continue
    return best


def run_method(mode, layer, grid, q, k, v, measure, repeats):
    method = VMoBA(VMoBAConfig(mode=mode))
    ctx = AttentionContext(
        CallContext(grid, "none", 0, None, "cond", "transformer"),
        LayerContext(f"blocks.{layer}.attn1", layer),
    )
    spent = []
    original = vmoba_module.select_chunks

    def timed(*args, **kwargs):
        if q.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = original(*args, **kwargs)
        if q.is_cuda:
            torch.cuda.synchronize()
        spent.append((time.perf_counter() - start) * 1e3)
        return result

    def call():
        return method(q, k, v, scale=None, key_padding_mask=None, context=ctx)

    _, density = call()
    ms = measure(call, repeats)
    vmoba_module.select_chunks = timed
    try:
        call()
    finally:
        vmoba_module.select_chunks = original
    return ms, sum(spent), float(density)


def record(rows, grid, layer, mode, sdpa, ms, select_ms, density, *, mode_column: bool) -> str:
    """Append one measurement to ``rows`` (JSON) and return (and print) its markdown table row."""
    rows.append(
        dict(
            grid=grid,
            kind=layer_kind(layer),
            mode=mode,
            ms=ms,
            sdpa=sdpa,
            select_ms=select_ms,
            density=density,
        )
    )
    n = grid[0] * grid[1] * grid[2]
    mode_cell = f" {mode} |" if mode_column else ""
    line = (
        f"| {grid} ({n}) | {layer_kind(layer)} |{mode_cell} {ms:.2f} | {sdpa / ms:.3f} | {select_ms:.2f} | "
        f"{density:.3f} |"
    )
    print(line, flush=True)
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parity-budget", type=float, default=90.0, help="seconds for the parity-mode rows")
    args = ap.parse_args(argv)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    heads, dim = (2, 32) if args.toy else (12, 128)
    grids = [(4, 8, 10)] if args.toy else [(20, 30, 52), (21, 45, 80)]
    sweep = (
        [(2, 8, 10), (4, 8, 10)]
        if args.toy
        else [(5, 30, 52), (10, 30, 52), (20, 30, 52), (21, 45, 80), (21, 60, 104)]
    )

    def measure(fn, repeats):
        return median_ms(fn, repeats, device)

    rows, lines = (
        [],
        [
            f"# VMoBA on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}",
            "",
            f"torch {torch.__version__}; {str(dtype)[6:]}, batch 1, heads {heads}, head_dim {dim}; median of "
            f"{args.repeats} (after a warm-up call). Reference chunk sizes scaled to each grid.",
            "",
            "| grid (tokens) | layer type | mode | ms | vs best SDPA | selection ms | block density |",
            "|---|---|---|---:|---:|---:|---:|",
        ],
    )
    parity_jobs = []
    for grid in grids:
        q, k, v = inputs(grid, heads, dim, dtype, device)
        sdpa = best_sdpa_ms(q, k, v, measure, args.repeats, device)
        n = grid[0] * grid[1] * grid[2]
        lines.append(f"| {grid} ({n}) | - | best SDPA | {sdpa:.2f} | 1.00 | - | 1.000 |")
        for layer in range(3):
            result = run_method("fast", layer, grid, q, k, v, measure, args.repeats)
            lines.append(record(rows, grid, layer, "fast", sdpa, *result, mode_column=True))
            parity_jobs.append((grid, layer, sdpa))
    lines += [
        "",
        "## Break-even of fast mode (mean over the three layer types)",
        "",
        "| grid (tokens) | best SDPA ms | fast ms | speedup |",
        "|---|---:|---:|---:|",
    ]
    for grid in sweep:
        q, k, v = inputs(grid, heads, dim, dtype, device)
        sdpa = best_sdpa_ms(q, k, v, measure, args.repeats, device)
        fast = statistics.mean(
            run_method("fast", layer, grid, q, k, v, measure, args.repeats)[0] for layer in range(3)
        )
        n = grid[0] * grid[1] * grid[2]
        rows.append(dict(grid=grid, kind="mean", mode="fast", ms=fast, sdpa=sdpa))
        lines.append(f"| {grid} ({n}) | {sdpa:.2f} | {fast:.2f} | {sdpa / fast:.2f} |")
        print(lines[-1], flush=True)
    # Parity mode runs the PyTorch path with per-row chunk masks: slow, so last and under a budget.
    lines += [
        "",
        "## Parity mode (per-query selection, PyTorch path; one timed call)",
        "",
        "| grid (tokens) | layer type | ms | vs best SDPA | selection ms | block density |",
        "|---|---|---:|---:|---:|---:|",
    ]
    deadline = time.time() + args.parity_budget
    for grid, layer, sdpa in parity_jobs:
        n = grid[0] * grid[1] * grid[2]
        if time.time() > deadline:
            lines.append(f"| {grid} ({n}) | {layer_kind(layer)} | skipped: time budget | | | |")
            continue
        q, k, v = inputs(grid, heads, dim, dtype, device)
        result = run_method("parity", layer, grid, q, k, v, measure, 1)
        lines.append(record(rows, grid, layer, "parity", sdpa, *result, mode_column=False))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_vmoba.md").write_text(text)
        (args.out / "bench_vmoba.json").write_text(json.dumps(rows, indent=1, default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
