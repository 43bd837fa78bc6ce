"""What the driver's per-call token reordering costs: gathers of q, k, v into a method's slot order
and the scatter of the output back, against a whole transformer forward with that method.

The driver reorders inside every attention call. An adapter could instead permute the hidden
states and rotary embeddings once per forward (Wan first); that is worth doing only where the
per-call gathers cost more than 2 % of a forward. This measures the share on the video proxy
(4,096 tokens) and the gather time alone at Wan 2.1 1.3B's 480p shape (32,760 tokens, 12 heads x
128). Medians of ``--repeats`` runs; the machine is named in the output.

    python benchmarks/bench_order.py --out benchmarks/results      # CPU here; also runs on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dit_accel  # noqa: E402
from dit_accel.config import resolve_config  # noqa: E402
from dit_accel.context import AttentionContext, CallContext, LayerContext  # noqa: E402
from dit_accel.methods import build_method  # noqa: E402
from dit_accel.patches import adapter_named  # noqa: E402

METHODS = {
    "topk": dict(density=0.25),
    "window3d": dict(window=(4, 16, 16)),
    "vmoba": dict(),
    "rectified": dict(),
}


def median_seconds(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run builds the order


def reorder_seconds(method_name: str, grid, heads: int, dim: int, device: str, dtype, repeats: int) -> float:
    """Median time of gathering q, k, v into the method's order and scattering one output back."""
    method = build_method(adapter_named("Wan").resolve(resolve_config(method_name, **METHODS[method_name])))
    ctx = AttentionContext(
        CallContext(grid, "none", 10, 20, "cond", "transformer"), LayerContext("blocks.2.attn1", 2)
    )
    n = grid[0] * grid[1] * grid[2]
    q = torch.randn(1, n, heads, dim, device=device, dtype=dtype)
    order = method.order(ctx, q.device)

    def run():
        slots = [order.to_slots(q) for _ in range(3)]
        order.from_slots(slots[0])

    return median_seconds(run, repeats, device)


def forward_seconds(pipe, method_name: str, repeats: int, device: str) -> float:
    from benchmarks.proxies.models import VIDEO_SIZE

    transformer = pipe.transformer.to(device)
    latents = torch.randn(
        1, 16, VIDEO_SIZE["num_frames"], VIDEO_SIZE["height"] // 4, VIDEO_SIZE["width"] // 4, device=device
    )
    with torch.no_grad():
        embeds = pipe.class_encoder(torch.tensor([0])).to(device)
    timestep = torch.tensor([500.0], device=device)
    dit_accel.enable_sparse_attention(transformer, method_name, **METHODS[method_name])
    try:
        with torch.no_grad():
            return median_seconds(
                lambda: transformer(latents, timestep, embeds, return_dict=False), repeats, device
            )
    finally:
        dit_accel.disable_sparse_attention(transformer)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--untrained", action="store_true", help="random proxy weights (timing does not depend on them)"
    )
    args = parser.parse_args(argv)
    from benchmarks.proxies.models import build_proxy, load_proxy
    from benchmarks.timing import commit, machine

    pipe = build_proxy("video", seed=0) if args.untrained else load_proxy("video")
    layers = len(pipe.transformer.blocks)
    proxy_grid, big_grid = (8, 16, 32), (21, 30, 52)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    lines = [
        "# Per-call token reordering versus a transformer forward",
        "",
        f"Machine: {machine()}. Commit: {commit()}. `benchmarks/bench_order.py`, medians of {args.repeats}.",
        "Reorder = 3 gathers (q, k, v) + 1 scatter per attention call; share = reorder x layers / forward.",
        "",
        "| method | proxy forward ms | reorder per call ms | share of the forward "
        "| reorder at 21x30x52, 12x128 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in METHODS:
        forward = forward_seconds(pipe, name, args.repeats, args.device)
        small = reorder_seconds(name, proxy_grid, 4, 64, args.device, torch.float32, args.repeats)
        big = reorder_seconds(name, big_grid, 12, 128, args.device, dtype, args.repeats)
        lines.append(
            f"| {name} | {forward * 1e3:.1f} | {small * 1e3:.2f} | {small * layers / forward:.1%} "
            f"| {big * 1e3:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "cpu" if args.device == "cpu" else "gpu"
        (args.out / f"order_{suffix}.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
