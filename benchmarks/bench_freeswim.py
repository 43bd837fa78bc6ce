"""FreeSwim's window branch on a GPU: the window kernel vs dense SDPA at the reference shape.

Wan 2.1 1.3B at 1088x1920, 81 frames (token grid 21x68x120 = 171,360 tokens, 12 heads, head_dim
128, window 31x53), bf16, batch 1, random inputs. Reports ms per call for dense attention and the
window branch (token reorder included), and the fraction of the ideal speed-up
(``t_dense / t_window x element density``, spec 7.4). Median of CUDA-event timings.

    python benchmarks/bench_freeswim.py --out DIR            # GPU
    python benchmarks/bench_freeswim.py --toy --device cpu   # tiny, for tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from freeswim_sweep import element_density  # noqa: E402
from timing import median_ms  # noqa: E402

from dit_accel import FreeSwimConfig  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.kernels import dense_attention  # noqa: E402
from dit_accel.methods.freeswim import FreeSwim  # noqa: E402

SHAPES = [("wan1.3b-1088x1920", (21, 68, 120), 12, 128, (31, 53))]
TOY = [("toy", (2, 9, 12), 2, 32, (5, 7))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    block = 16 if args.toy else 128
    lines = [
        "| shape | order | dense ms | window ms | speed-up | element density | tile density | "
        "fraction of ideal |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, grid, heads, dim, window in TOY if args.toy else SHAPES:
        n = grid[0] * grid[1] * grid[2]
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, n, heads, dim, generator=g).to(args.device, dtype) for _ in range(3))
        ctx = AttentionContext(
            CallContext(grid, "none", 0, 35, "cond", "transformer"), LayerContext("blocks.0.attn1", 0)
        )
        dense = median_ms(lambda q=q, k=k, v=v: dense_attention(q, k, v), args.repeats, args.device)
        density = element_density(grid, window)
        for order in ("spatial", "raster"):
            cfg = FreeSwimConfig(block_size=block, window=window, order=order, cross_attn_override=False)
            method = FreeSwim(cfg)
            ms = median_ms(
                lambda m=method, q=q, k=k, v=v, c=ctx: m(
                    q, k, v, scale=None, key_padding_mask=None, context=c
                ),
                args.repeats,
                args.device,
            )
            tiles = float(method(q, k, v, scale=None, key_padding_mask=None, context=ctx)[1])
            lines.append(
                f"| {name} (S={n}, H={heads}, D={dim}, window {window}) | {order} | {dense:.2f} | {ms:.2f} | "
                f"{dense / ms:.2f}x | {density:.3f} | {tiles:.3f} | {dense / ms * density:.2f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_freeswim.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
