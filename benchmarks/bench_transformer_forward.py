"""One transformer forward at a real shape, dense vs sparse methods, random weights (no download).

A first end-to-end number before the full pipeline benchmark exists: the Wan 2.1 1.3B
architecture (30 blocks, width 1536, 12 heads of 128) at 81 frames 480p (21x30x52 = 32,760 tokens),
bf16, batch 1. Times are medians over repeats after warm-up (CUDA events via do_bench on a GPU,
wall clock on the CPU); the relative L2 of each method's output against dense is printed too.

    python benchmarks/bench_transformer_forward.py                      # GPU, full size
    python benchmarks/bench_transformer_forward.py --device cpu --toy   # tiny, for tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

import dit_accel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_ms  # noqa: E402

WAN_13B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    eps=1e-6,
)
TOY = dict(
    WAN_13B, num_attention_heads=2, attention_head_dim=32, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2
)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    config = TOY if args.toy else WAN_13B
    frames, height, width = (3, 10, 14) if args.toy else (21, 60, 104)  # latent (before 2x2 patchify)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(args.device):
        model = WanTransformer3DModel(**config).to(dtype).eval()
        latents = torch.randn(1, 16, frames, height, width, dtype=dtype)
        text = torch.randn(1, 512 if not args.toy else 8, config["text_dim"], dtype=dtype)
        timestep = torch.tensor([500.0])

    def forward():
        with torch.no_grad():
            return model(
                hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False
            )[0]

    block = 16 if args.toy else 128
    variants = [
        ("stock (diffusers native SDPA)", None),
        ("dense through dit-accel", dict(method="dense")),
        (
            "window3d (9,24,24)",
            dict(method="window3d", block_size=block, window=(9, 24, 24) if not args.toy else (1, 4, 4)),
        ),
        (
            "window3d (5,16,16)",
            dict(method="window3d", block_size=block, window=(5, 16, 16) if not args.toy else (1, 4, 4)),
        ),
    ]
    reference = forward().float()
    rows = []
    for name, options in variants:
        density = 1.0
        if options is not None:
            dit_accel.enable_sparse_attention(model, **options)
        out = forward().float()
        if options is not None:
            density = dit_accel.sparse_attention_report(model).mean_density
        ms = median_ms(forward, args.repeats, args.device)
        dit_accel.disable_sparse_attention(model)
        err = float((out - reference).norm() / reference.norm())
        rows.append((name, ms, density, err))
        print(f"{name}: {ms:.1f} ms, density {density:.3f}, rel L2 vs stock {err:.2e}", flush=True)

    grid = (frames, height // 2, width // 2)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [
        f"Wan 2.1 1.3B-architecture transformer forward, random weights, grid {grid} "
        f"({grid[0] * grid[1] * grid[2]} tokens), {str(dtype)[6:]}, batch 1, {device_name}, "
        f"torch {torch.__version__}; median of {args.repeats}.",
        "",
        "| variant | ms / forward | speedup vs stock | mean density | rel. L2 vs stock |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms, density, err in rows:
        lines.append(f"| {name} | {ms:.1f} | {rows[0][1] / ms:.2f} | {density:.3f} | {err:.2e} |")
    text_out = "\n".join(lines)
    print(text_out)
    return text_out


if __name__ == "__main__":
    main()
