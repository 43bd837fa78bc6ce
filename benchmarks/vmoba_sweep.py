"""VMoBA measurements on the CPU: fidelity on the tiny pipelines, density per layer type, selection cost.

Part 1 runs the tiny offline pipelines of the test suite (random weights, 3-4 steps) dense and with
VMoBA from the same seed: parity vs fast mode at three thresholds, with and without one dense
warm-up step. Part 2 times one attention call at a mid-size video grid: dense SDPA against VMoBA
(both modes), and the share of VMoBA's time spent selecting chunks.

    python benchmarks/vmoba_sweep.py --out benchmarks/results/vmoba_cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity  # noqa: E402
import tiny_pipelines as tp  # noqa: E402
from timing import commit, machine, median_ms  # noqa: E402

import dit_accel  # noqa: E402
from dit_accel import VMoBAConfig  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.kernels import dense_attention  # noqa: E402
from dit_accel.methods import vmoba as vmoba_module  # noqa: E402
from dit_accel.methods.vmoba import VMoBA  # noqa: E402
from dit_accel.methods.vmoba_partition import layer_kind  # noqa: E402

# Chunk sizes for the tiny grids (3 latent frames of about 10x13 tokens): the scaled reference sizes
# would be one token wide there.
TINY = dict(
    block_size=16,
    scale_chunks=False,
    temporal_chunk_size=1,
    spatial_chunk_size=(5, 7),
    st_chunk_size=(1, 5, 7),
)


def density_by_kind(pipe, call, options) -> dict[str, float]:
    """Mean block density per partition kind; the layer cycle is shifted so every kind occurs."""
    per_kind = defaultdict(list)
    for shift in (0, 1, 2):
        dit_accel.enable_sparse_attention(pipe, "vmoba", first_full_layer=shift, **options)
        tp.run(pipe, call)
        for r in dit_accel.sparse_attention_report(pipe).records:
            per_kind[layer_kind(r["layer_index"], shift)].append(r["density"])
        dit_accel.disable_sparse_attention(pipe)
    return {kind: statistics.mean(values) for kind, values in sorted(per_kind.items())}


def fidelity_rows(names: list[str]) -> list[str]:
    lines = [
        "| pipeline | mode | threshold | dense steps | PSNR dB | rel. L2 | block density (1d / 2d / 3d) | "
        "time vs dense |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for name in names:
        pipe, call = tp.BUILDERS[name]()
        for mode in ("parity", "fast"):
            for threshold in (0.1, 0.25, 0.5):
                for dense_steps in (0, 1):
                    if dense_steps and threshold != 0.25:
                        continue
                    options = dict(TINY, mode=mode, threshold=threshold, dense_steps=dense_steps)
                    r = fidelity.compare(pipe, call, "vmoba", **options)
                    kinds = density_by_kind(pipe, call, options)
                    by_kind = " / ".join(f"{kinds[k]:.2f}" for k in ("1d", "2d", "3d"))
                    lines.append(
                        f"| {name} | {mode} | {threshold} | {dense_steps} | {r['psnr_db']:.1f} | "
                        f"{r['relative_l2']:.4f} | {by_kind} | "
                        f"{r['sparse_seconds'] / r['dense_seconds']:.2f} |"
                    )
                    print(lines[-1], flush=True)
    return lines


def timing_rows(grid: tuple[int, int, int], heads: int, dim: int, repeats: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    tokens = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(1, tokens, heads, dim, generator=g) for _ in range(3))
    # Give keys some structure so selection is not uniform: smooth along the token order.
    k = k + torch.cumsum(torch.randn(1, tokens, heads, dim, generator=g), dim=1) / tokens**0.5

    dense_s = median_ms(lambda: dense_attention(q, k, v), repeats) / 1e3
    lines = [
        f"| layer type | mode | ms / call | vs dense SDPA ({dense_s * 1e3:.0f} ms) | block density | "
        "selection share |",
        "|---|---|---:|---:|---:|---:|",
    ]
    original_select = vmoba_module.select_chunks
    for layer in range(3):
        for mode in ("parity", "fast"):
            method = VMoBA(VMoBAConfig(mode=mode))
            ctx = AttentionContext(
                CallContext(grid, "none", 0, None, "cond", "transformer"),
                LayerContext(f"blocks.{layer}.attn1", layer),
            )
            spent = []

            def timed_select(*args, spent=spent, **kwargs):
                start = time.perf_counter()
                result = original_select(*args, **kwargs)
                spent.append(time.perf_counter() - start)
                return result

            vmoba_module.select_chunks = timed_select
            try:
                out, density = method(q, k, v, scale=None, key_padding_mask=None, context=ctx)
                spent.clear()
                total = (
                    median_ms(
                        lambda method=method, ctx=ctx: method(
                            q, k, v, scale=None, key_padding_mask=None, context=ctx
                        ),
                        repeats,
                    )
                    / 1e3
                )
                select_s = sum(spent) / (repeats + 1)
            finally:
                vmoba_module.select_chunks = original_select
            lines.append(
                f"| {layer_kind(layer)} | {mode} | {total * 1e3:.0f} | {total / dense_s:.2f} | "
                f"{float(density):.3f} | {select_s / total:.2f} |"
            )
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="+", default=["wan21", "hunyuan_video", "cogvideox"])
    parser.add_argument("--grid", type=int, nargs=3, default=[8, 30, 52])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    grid = tuple(args.grid)
    text = [
        "# VMoBA on the CPU",
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}.",
        "",
        "## Fidelity on the tiny pipelines (random weights)",
        "",
        "Output latents vs dense from the same seed. Chunk sizes for these toy grids: 1D 1 frame, 2D (5, 7), "
        "3D (1, 5, 7); block 16. Block density = fraction of 16x16 query x key blocks computed, per layer "
        "type (the layer cycle was shifted so every type occurs on the 2-layer toys). Time vs dense is the "
        "whole pipeline call on toy sizes, where per-call overheads dominate: it is not a speed claim.",
        "",
        *fidelity_rows(args.pipelines),
        "",
        f"## One attention call at grid {grid} ({grid[0] * grid[1] * grid[2]} tokens)",
        "",
        f"Reference chunk sizes scaled to this grid, block 128, heads {args.heads}, head_dim 64, float32, "
        f"median of {args.repeats}. Selection share = time in the chunk selection / whole call.",
        "",
        *timing_rows(grid, args.heads, 64, args.repeats),
    ]
    out = "\n".join(text) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)
    return out


if __name__ == "__main__":
    main()
