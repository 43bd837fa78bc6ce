"""Rectified SpaAttn on a GPU: selection time, kernel time, density and the whole call vs dense SDPA.

Shapes of the reference scripts: Wan 2.1 14B at 720p, 81 frames (21x45x80 = 75,600 video tokens,
40 heads, head_dim 128, drop 0.75) and CogVideoX 1.5 at 768x1360, 81 frames (11x48x80 = 42,240
video tokens + 226 text tokens, 48 heads, head_dim 64, drop 0.75); bf16, batch 1, smooth synthetic
Q/K/V (``synthetic.py``). Median ms per call (CUDA events, after a warm-up that also autotunes).

    python benchmarks/bench_rectified.py --out DIR            # GPU
    python benchmarks/bench_rectified.py --toy --device cpu   # tiny, for tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic import smooth_qkv  # noqa: E402
from timing import median_ms  # noqa: E402

from dit_accel import RectifiedSpaAttnConfig  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.kernels import dense_attention  # noqa: E402
from dit_accel.methods.curve_order import curve_order  # noqa: E402
from dit_accel.methods.rectified import RectifiedSpaAttn  # noqa: E402
from dit_accel.patches import adapter_named  # noqa: E402

# name, family, grid, text tokens, heads, head_dim
SHAPES = [
    ("wan2.1-14b-720p", "Wan", (21, 45, 80), 0, 40, 128),
    ("cogvideox1.5-768p", "CogVideoX", (11, 48, 80), 226, 48, 64),
]
TOY = [("toy-wan", "Wan", (3, 8, 10), 0, 2, 32), ("toy-cogvideox", "CogVideoX", (2, 8, 8), 7, 2, 32)]
VARIANTS = [
    ("IPAR+GAPR", dict(rectify="per_block", gapr=True)),
    ("plain top-p", dict(ipar=False, gapr=False)),
    ("per-row", dict(rectify="per_row")),
]


def shape_rows(name, family, grid, n_text, heads, dim, *, block, device, dtype, repeats) -> list[str]:
    video = smooth_qkv(grid, heads, dim)
    text = torch.randn(3, 1, n_text, heads, dim, generator=torch.Generator().manual_seed(1))
    q, k, v = (torch.cat([t, x], dim=1).to(device, dtype) for t, x in zip(text, video, strict=True))
    ctx = AttentionContext(
        CallContext(grid, "first" if n_text else "none", 10, 50, "cond", "transformer"),
        LayerContext("blocks.10.attn1", 10),
    )
    dense = median_ms(lambda: dense_attention(q, k, v), repeats, device)
    order = curve_order(grid, q.device)
    video_part = slice(n_text, q.shape[1])
    # Queries, keys and values go to curve order and the output comes back: 4 gathers, timed as 2.
    reorder = 2 * median_ms(lambda: order.from_slots(order.to_slots(q[:, video_part])), repeats, device)
    rows = []
    for label, options in VARIANTS:
        method = RectifiedSpaAttn(
            adapter_named(family).resolve(RectifiedSpaAttnConfig(block_size=block, **options))
        )
        operands = method.prepare(q, k, v, dim**-0.5, None, ctx)[0]
        select = median_ms(lambda m=method, x=operands: m.plan(x, ctx), repeats, device)
        call = median_ms(
            lambda m=method: m(q, k, v, scale=None, key_padding_mask=None, context=ctx), repeats, device
        )
        density = float(method(q, k, v, scale=None, key_padding_mask=None, context=ctx)[1])
        rows.append(
            f"| {name} (B=1, S={q.shape[1]}, H={heads}, D={dim}) | {label} | {dense:.2f} | {call:.2f} | "
            f"{dense / call:.2f}x | {select:.2f} | {reorder:.2f} | {density:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


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
        "| shape | variant | dense ms | call ms | vs dense | selection ms | token reorder ms | "
        "block density |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in TOY if args.toy else SHAPES:
        lines += shape_rows(*shape, block=block, device=args.device, dtype=dtype, repeats=args.repeats)
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_rectified.md").write_text(text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
