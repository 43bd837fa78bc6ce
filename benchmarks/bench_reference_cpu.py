"""CPU time of the pure-PyTorch block-sparse path vs dense SDPA, as ratios measured in one run.

For each sequence length and density, random block layouts with exactly that fraction of key
blocks per query block are timed against ``torch.nn.functional.scaled_dot_product_attention``
on the same inputs. Medians of several repeats; the machine is named in the output.

    python benchmarks/bench_reference_cpu.py --out benchmarks/results/cpu.md
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import torch

from dit_accel.kernels import BlockLayout, block_sparse_attention, dense_attention, num_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import commit, machine, median_ms  # noqa: E402


def random_layout(n_q: int, n_k: int, density: float, block: int, heads: int, generator) -> BlockLayout:
    keep = max(1, round(density * n_k))
    scores = torch.rand(1, heads, n_q, n_k, generator=generator)
    chosen = scores.topk(keep, dim=-1).indices
    mask = torch.zeros(1, heads, n_q, n_k, dtype=torch.bool).scatter_(-1, chosen, True)
    return BlockLayout.from_block_mask(mask, block, block)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--density", type=float, nargs="+", default=[0.10, 0.25, 0.50])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    rows = []
    for seq in args.seq:
        q, k, v = (torch.randn(1, seq, args.heads, args.head_dim, generator=generator) for _ in range(3))
        dense_s = median_ms(lambda q=q, k=k, v=v: dense_attention(q, k, v), args.repeats) / 1e3
        n = num_blocks(seq, args.block)
        for density in args.density:
            layout = random_layout(n, n, density, args.block, args.heads, generator)
            sparse_s = (
                median_ms(
                    lambda q=q, k=k, v=v, layout=layout: block_sparse_attention(
                        q, k, v, layout, backend="torch"
                    ),
                    args.repeats,
                )
                / 1e3
            )
            rows.append((seq, density, float(layout.density()), dense_s, sparse_s))
            print(
                f"S={seq} density={density:.2f}: dense {dense_s * 1e3:.1f} ms, sparse {sparse_s * 1e3:.1f} ms"
            )

    lines = [
        "# Reference (PyTorch) block-sparse path vs dense SDPA on the CPU",
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}.",
        f"batch 1, heads {args.heads}, head_dim {args.head_dim}, float32, block {args.block}x{args.block}, "
        f"random layouts; median of {args.repeats} runs after one warm-up; both paths timed in the same run.",
        "",
        "| tokens | density (realized) | dense SDPA ms | block-sparse ms | sparse / dense time | ideal |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for seq, density, realized, dense_s, sparse_s in rows:
        lines.append(
            f"| {seq} | {density:.2f} ({realized:.3f}) | {dense_s * 1e3:.1f} | {sparse_s * 1e3:.1f} | "
            f"{sparse_s / dense_s:.2f} | {realized:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
