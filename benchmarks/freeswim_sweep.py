"""FreeSwim measurements on the CPU: window layouts at the reference shapes, cache sizes, fidelity of
the branches on the tiny Wan pipeline, and the tiny end-to-end workflow's time.

    python benchmarks/freeswim_sweep.py --out benchmarks/results/freeswim_cpu.md
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity  # noqa: E402
import tiny_pipelines as tp  # noqa: E402
from timing import commit, machine  # noqa: E402

from dit_accel import FreeSwimConfig  # noqa: E402
from dit_accel.methods.freeswim_layout import window_bounds, window_layout  # noqa: E402
from dit_accel.pipelines import freeswim_cache_bytes, freeswim_generate  # noqa: E402

# (label, grid, window): spec section 2's operating points.
SHAPES = [
    ("Wan 1.3B 720x1280", (21, 45, 80), (31, 53)),
    ("Wan 1.3B 1088x1920 (reference)", (21, 68, 120), (31, 53)),
    ("Wan 14B 2176x3840", (21, 136, 240), (45, 81)),
]
BASE = (80, 112)  # the tiny Wan pipeline renders 160x224 (token grid 10x14): window 5x7


def element_density(grid, window) -> float:
    """Allowed (query, key) pairs over all pairs: the product of the per-axis window shares."""
    _, rows, cols = grid
    share = 1.0
    for size, extent in ((rows, window[0]), (cols, window[1])):
        lo, hi = window_bounds(size, extent, inward=True)
        share *= float((hi - lo).sum()) / size**2
    return share


def layout_rows() -> list[str]:
    lines = [
        "| shape | grid | window | element density | order | tile density | full among visited | "
        "build s (cold) |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for label, grid, window in SHAPES:
        for order in ("spatial", "raster"):
            window_layout.cache_clear()
            start = time.perf_counter()
            wl = window_layout(grid, window, True, order, 128, torch.device("cpu"))
            built = time.perf_counter() - start
            visited = int(wl.layout.kv_counts.sum())
            lines.append(
                f"| {label} | {grid} | {window} | {element_density(grid, window):.3f} | {order} | "
                f"{wl.tile_density():.3f} | {wl.full_tiles / visited:.3f} | {built:.2f} |"
            )
            print(lines[-1], flush=True)
    return lines


def cache_rows() -> list[str]:
    models = [
        ("Wan 2.1 1.3B", 12, 30, (720, 1280)),
        ("Wan 2.1 1.3B", 12, 30, (1088, 1920)),
        ("Wan 2.1 14B", 40, 40, (1088, 1920)),
        ("Wan 2.1 14B", 40, 40, (2176, 3840)),
    ]
    lines = ["| model | size, 81 frames | cache (bf16) |", "|---|---|---:|"]
    for name, heads, layers, (h, w) in models:
        fake = SimpleNamespace(
            config=SimpleNamespace(
                patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, num_layers=layers
            ),
            dtype=torch.bfloat16,
        )
        lines.append(f"| {name} | {h}x{w} | {freeswim_cache_bytes(fake, h, w, 81) / 2**30:.1f} GiB |")
    return lines


def fidelity_rows() -> list[str]:
    pipe, call = tp.build_wan21()
    settings = [
        ("window alone (no guide)", dict(cross_attn_override=False)),
        ("window alone, clipped (no inward)", dict(cross_attn_override=False, inward=False)),
        ("dual path (nocache)", dict()),
        ("dual path, cache mode", dict(cache=True)),
        ("window alone, default scale", dict(cross_attn_override=False, attention_scale="default")),
    ]
    lines = [
        "| setting | PSNR dB vs dense | rel. L2 | mean density | time vs dense |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, options in settings:
        r = fidelity.compare(pipe, call, "freeswim", block_size=16, base_resolution=BASE, **options)
        lines.append(
            f"| {label} | {r['psnr_db']:.1f} | {r['relative_l2']:.4f} | {r['mean_density']:.3f} | "
            f"{r['sparse_seconds'] / r['dense_seconds']:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def workflow_rows(repeats: int) -> list[str]:
    pipe, call = tp.build_wan21()
    kwargs = {
        k: v
        for k, v in call.items()
        if k not in ("height", "width", "output_type", "num_inference_steps", "num_frames")
    }
    config = FreeSwimConfig(block_size=16, base_resolution=BASE)

    def workflow():
        freeswim_generate(
            pipe,
            height=160,
            width=224,
            num_frames=9,
            num_inference_steps=4,
            config=config,
            output_type="latent",
            **kwargs,
        )

    def dense():
        pipe(height=160, width=224, num_frames=9, num_inference_steps=4, output_type="latent", **call_kwargs)

    call_kwargs = {k: v for k, v in call.items() if k in kwargs}
    times = {}
    for name, fn in (
        ("dense at 160x224, 4 steps", dense),
        ("FreeSwim workflow (draft 80x112 + refine)", workflow),
    ):
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        times[name] = sorted(samples)[len(samples) // 2]
    return ["| run | seconds (median) |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in times.items()]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = [
        "# FreeSwim on the CPU",
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}.",
        "",
        "## Window layouts at the reference shapes (128-token tiles, inward windows)",
        "",
        "Element density: allowed pairs / all pairs. Tile density: visited tiles / all tiles (what the "
        "kernel computes). Full: visited tiles that need no in-kernel mask. Build: one cold build.",
        "",
        *layout_rows(),
        "",
        "## Cache mode memory (computed: blocks x tokens x hidden size x 2 bytes)",
        "",
        *cache_rows(),
        "",
        "## Fidelity on the tiny Wan pipeline (random weights, 160x224, 3 steps)",
        "",
        "Output latents vs the dense pipeline at the same resolution, same seed; base resolution 80x112 "
        "(window 5x7 on the 10x14 token grid), block 16. The window changes the model's attention by "
        "design, so this measures how far each branch moves the output, not quality.",
        "",
        *fidelity_rows(),
        "",
        f"## Tiny end-to-end run, median of {args.repeats}",
        "",
        *workflow_rows(args.repeats),
    ]
    out = "\n".join(text) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)
    return out


if __name__ == "__main__":
    main()
