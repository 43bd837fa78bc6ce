"""Re-ttention attention steps on a GPU: dense, refresh and sparse, and the schedule-weighted time.

Shapes of the reference: CogVideoX-2B (226 text tokens first + 13x30x45 video tokens, 30 heads,
head_dim 64; 50 steps: 15 dense, 7 refresh, 28 sparse) and PixArt at 1024 px (64x64 = 4,096
tokens, 16 heads, head_dim 72; 20 steps: 5 dense, 3 refresh, 12 sparse), bf16, batch 2 (CFG),
sparsity 0.03125. Median ms per call (CUDA events, after a warm-up that also autotunes). The
refresh step is timed twice: with the fused one-pass kernel (what the method runs) and with the
two-pass baseline (a full and a sparse pass with LSEs, ``two_pass_refresh`` below).

    python benchmarks/bench_rettention.py --out DIR            # GPU
    python benchmarks/bench_rettention.py --toy --device cpu   # tiny, for tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import median_ms  # noqa: E402

from dit_accel import RettentionConfig  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.kernels import BlockLayout, RefreshResult, attention_with_stats, dense_attention  # noqa: E402
from dit_accel.kernels.refresh import ratio_from_lse  # noqa: E402
from dit_accel.methods import corrections as corrections_module  # noqa: E402
from dit_accel.methods.rettention import Rettention, phase  # noqa: E402
from dit_accel.patches import adapter_named  # noqa: E402


def two_pass_refresh(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask=None,
    kv_partial: torch.Tensor | None = None,
    backend: str = "auto",
) -> RefreshResult:
    """``refresh_attention`` from a full and a sparse pass with LSEs (rho = exp(LSE_S - LSE_full)).

    The reference's way and this benchmark's baseline for the fused pass (the tests check that
    both agree); not part of the kernel API, not used by the methods.
    """
    full_layout = BlockLayout.full(
        layout.num_q_blocks, layout.num_k_blocks, layout.block_size_q, layout.block_size_k, device=q.device
    )
    kw = dict(scale=scale, key_padding_mask=key_padding_mask, backend=backend)
    full = attention_with_stats(q, k, v, full_layout, **kw)
    sparse = attention_with_stats(q, k, v, layout, element_mask=element_mask, kv_partial=kv_partial, **kw)
    rho = ratio_from_lse(sparse.lse, full.lse)
    compute = torch.promote_types(q.dtype, torch.float32)
    kept = (sparse.out.to(compute) * rho.transpose(1, 2).unsqueeze(-1)).to(q.dtype)
    return RefreshResult(full.out, rho, kept)


# name, family, grid, text tokens (first), heads, head_dim, steps
SHAPES = [
    ("cogvideox-2b", "CogVideoX", (13, 30, 45), 226, 30, 64, 50),
    ("pixart-1024", "PixArt", (1, 64, 64), 0, 16, 72, 20),
]
TOY = [("toy-video", "CogVideoX", (2, 6, 8), 5, 2, 32, 20), ("toy-image", "PixArt", (1, 8, 12), 0, 2, 32, 20)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    block = 16 if args.toy else 128
    lines = [
        "| shape | dense ms | refresh ms | refresh ms, two-pass | sparse ms | sparse vs dense | "
        "block density (sparse) | schedule (dense/refresh/sparse) | schedule-weighted vs all dense |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, family, grid, n_text, heads, dim, steps in TOY if args.toy else SHAPES:
        n = grid[0] * grid[1] * grid[2] + n_text
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, n, heads, dim, generator=g).to(args.device, dtype) for _ in range(3))
        method = Rettention(adapter_named(family).resolve(RettentionConfig(block_size=block)))
        warmup = 15 / 50 if family == "CogVideoX" else 5 / 20
        kinds = [phase(s, steps, warmup, 5)[0] for s in range(steps)]
        refresh_step, sparse_step = kinds.index("refresh"), kinds.index("refresh") + 1

        def call(step, method=method, grid=grid, family=family, steps=steps, n_text=n_text, q=q, k=k, v=v):
            ctx = AttentionContext(
                CallContext(grid, "first" if n_text else "none", step, steps, "cond_uncond", "transformer"),
                LayerContext("transformer_blocks.0.attn1", 0),
            )
            return method(q, k, v, scale=None, key_padding_mask=None, context=ctx)

        dense = median_ms(lambda q=q, k=k, v=v: dense_attention(q, k, v), args.repeats, args.device)
        refresh = median_ms(lambda step=refresh_step: call(step), args.repeats, args.device)
        fused = corrections_module.refresh_attention
        corrections_module.refresh_attention = two_pass_refresh
        try:
            two_pass = median_ms(lambda step=refresh_step: call(step), args.repeats, args.device)
        finally:
            corrections_module.refresh_attention = fused
        sparse = median_ms(lambda step=sparse_step: call(step), args.repeats, args.device)
        density = float(call(sparse_step)[1])
        counts = {kind: kinds.count(kind) for kind in ("dense", "refresh", "sparse")}
        weighted = counts["dense"] * dense + counts["refresh"] * refresh + counts["sparse"] * sparse
        lines.append(
            f"| {name} (B=2, S={n}, H={heads}, D={dim}) | {dense:.2f} | {refresh:.2f} | {two_pass:.2f} | "
            f"{sparse:.2f} | "
            f"{dense / sparse:.2f}x | {density:.3f} | "
            f"{counts['dense']}/{counts['refresh']}/{counts['sparse']} | {weighted / (steps * dense):.2f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_rettention.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
