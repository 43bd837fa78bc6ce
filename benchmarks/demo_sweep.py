"""The demo model on the CPU: every method's fidelity to dense, prompt accuracy, and time.

Renders 8 prompts (every colour, both shapes, every direction) as one batch, dense and with each
method (the demo's method defaults from ``dit_accel.render``), same seed; reports PSNR and SSIM of
the frames against dense, the realized block density, how often the colour and the direction
match the prompt, and the wall time of the batch.

    python benchmarks/demo_sweep.py --out benchmarks/results/demo_cpu.md \
        --sheet benchmarks/results/demo_cpu_sheet.png
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import commit, machine  # noqa: E402

import dit_accel  # noqa: E402
from dit_accel.demo import COLOURS, DIRECTIONS, load_demo_pipeline  # noqa: E402
from dit_accel.demo.evaluate import prompt_accuracy  # noqa: E402
from dit_accel.quality import psnr, ssim  # noqa: E402
from dit_accel.render import DEMO_METHOD_OPTIONS  # noqa: E402

PROMPTS = [
    f"{c} {s} moving {d}"
    # every colour and every direction with both shapes (alternating shapes would repeat the first
    # four prompts: four colours and four directions cycle together)
    for c, s, d in zip(list(COLOURS) * 2, ["square"] * 4 + ["circle"] * 4, list(DIRECTIONS) * 2, strict=True)
]
METHODS = ["auto", "dense", "window3d", "vmoba", "rettention", "rectified", "freeswim"]


def render(pipe, method: str | None, steps: int) -> tuple[torch.Tensor, float, float]:
    if method is not None:
        options = dict(DEMO_METHOD_OPTIONS["*"], **DEMO_METHOD_OPTIONS.get(method, {}))
        dit_accel.enable_sparse_attention(pipe, method, **options)
    start = time.perf_counter()
    frames = pipe(
        PROMPTS, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    seconds = time.perf_counter() - start
    density = dit_accel.sparse_attention_report(pipe).mean_density if method is not None else 1.0
    dit_accel.disable_sparse_attention(pipe)
    return frames.permute(0, 1, 3, 4, 2), seconds, density


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sheet", type=Path, help="PNG: middle frame of each prompt, dense vs auto")
    args = parser.parse_args(argv)
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    render(pipe, None, 2)  # warm-up
    stock, stock_s, _ = render(pipe, None, args.steps)
    lines = [
        "| method | PSNR dB vs dense | SSIM vs dense | block density | colour right | direction right | "
        "seconds (8 videos) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    colour, direction = prompt_accuracy(stock, PROMPTS)
    lines.append(
        f"| stock pipeline (no dit-accel) | | | 1.000 | {colour:.2f} | {direction:.2f} | {stock_s:.1f} |"
    )
    sheet = {"dense (stock)": stock}
    for method in METHODS:
        frames, seconds, density = render(pipe, method, args.steps)
        if method == "auto":
            sheet["auto"] = frames
        colour, direction = prompt_accuracy(frames, PROMPTS)
        lines.append(
            f"| {method} | {psnr(frames, stock):.1f} | {ssim(frames, stock):.4f} | {density:.3f} | "
            f"{colour:.2f} | {direction:.2f} | {seconds:.1f} |"
        )
        print(lines[-1], flush=True)
    text = [
        "# The demo model on the CPU",
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}.",
        "",
        f"8 prompts in one batch, {args.steps} steps, CFG 4, seed 0, 32x32x9 frames (576 tokens), float32. "
        "Methods with the demo's defaults (`dit_accel.render.DEMO_METHOD_OPTIONS`: 32-token blocks; "
        "window3d window 3x4x4). At 576 tokens `auto` stays exactly dense (below its CPU break-even, "
        "8,192 tokens), and so does FreeSwim at the model's training size (`--method freeswim` renders "
        "a draft there and refines it at twice the size). PSNR and SSIM against the stock pipeline's "
        "frames; colour and direction read off the pixels.",
        "",
        *lines,
    ]
    out = "\n".join(text) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)
    if args.sheet:
        contact_sheet(sheet, args.sheet)
    return out


def contact_sheet(rows: dict[str, torch.Tensor], path: Path) -> None:
    """One row per setting, one column per prompt: its middle frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(PROMPTS), figsize=(1.5 * len(PROMPTS), 1.7 * len(rows)))
    for r, (label, frames) in enumerate(rows.items()):
        for c, prompt in enumerate(PROMPTS):
            ax = axes[r][c]
            ax.imshow(frames[c, frames.shape[1] // 2].clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompt, fontsize=6)
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
