"""How concentrated each attention head of a proxy (or tiny pipeline) is: the measure of whether a
model can rank sparse-attention methods the way a real video DiT would.

For one dense generation the queries and keys of every routed self-attention call of one step
(the middle one, conditional branch) are captured; per layer and head, from the exact softmax:
- **top-10 % block share**: the attention mass a query block puts on its best 10 % of key blocks
  (blocks = the tiles of ``topk``/``window3d``), averaged over query blocks (uniform: 0.1);
- **local share**: the mass inside a small window around each query, +-1 frame and +-2 tokens in
  height and width (uniform: window size / tokens).
A head is called *concentrated* when its top-10 % block share is at least 0.5 (five times
uniform). Writes ``results/proxy_<name>_structure.md``.

    python benchmarks/attention_structure.py --proxy video
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dit_accel  # noqa: E402
from dit_accel.methods.order import tile_order, tiles_per_axis  # noqa: E402

CONCENTRATED = 0.5


class _Probe:
    """Stands in for the session's method: records (layer, q, k) at one step, then delegates."""

    def __init__(self, method, step: int) -> None:
        self.method, self.step, self.captured = method, step, []

    def __getattr__(self, name):
        return getattr(self.method, name)

    def __call__(self, q, k, v, *, scale, key_padding_mask, context):
        call = context.call
        if call.step_index == self.step and call.cfg_branch in ("cond", "cond_uncond", "unknown"):
            row = q.shape[0] - 1  # batched CFG puts the conditional half last
            self.captured.append((context.layer.index, call.grid, q[row].float(), k[row].float(), scale))
        return self.method(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)


def head_statistics(q: torch.Tensor, k: torch.Tensor, grid, block_size: int, tile, scale=None) -> list[dict]:
    """Per head of q, k (S, H, D) in diffusers' token order on ``grid``: the two shares."""
    order = tile_order(tuple(grid), tuple(tile), q.device)
    t = tiles_per_axis(tuple(grid), tuple(tile))
    n_tiles = t[0] * t[1] * t[2]
    f, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    coords = torch.stack([f.flatten(), h.flatten(), w.flatten()], dim=1)
    near = ((coords[:, None] - coords[None]).abs() <= torch.tensor([1, 2, 2])).all(-1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    stats = []
    for head in range(q.shape[1]):
        p = torch.softmax(q[:, head] @ k[:, head].T * scale, dim=-1)
        local = float((p * near).sum(-1).mean())
        tiled = p[order.gather][:, order.gather] * (order.valid[:, None] & order.valid[None, :])
        n = n_tiles
        mass = tiled.view(n, block_size, n, block_size).sum((1, 3))
        mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)
        top = max(1, math.ceil(0.1 * n))
        share = float(mass.topk(top, dim=-1).values.sum(-1).mean())
        stats.append(dict(head=head, top10=share, local=local))
    uniform_local = float(near.float().sum(-1).mean()) / coords.shape[0]
    return stats, uniform_local, max(1, math.ceil(0.1 * n_tiles)) / n_tiles


def structure(pipe, call: dict, block_size: int, tile, steps: int) -> tuple[list[dict], float, float]:
    dit_accel.enable_sparse_attention(pipe, "dense")
    session = pipe.transformer._dit_accel_session
    probe = _Probe(session.method, steps // 2)
    session.method = probe
    try:
        with torch.no_grad():
            pipe(**call, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    finally:
        dit_accel.disable_sparse_attention(pipe)
    rows, uniform = [], (0.0, 0.0)
    for layer, grid, q, k, scale in probe.captured:
        stats, uniform_local, uniform_top = head_statistics(q, k, grid, block_size, tile, scale)
        rows += [dict(layer=layer, **s) for s in stats]
        uniform = (uniform_top, uniform_local)
    return rows, *uniform


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", choices=("video", "image"), default="video")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument(
        "--checkpoint", type=Path, help="a training checkpoint (its EMA weights) instead of the shipped ones"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    from benchmarks.proxies.models import IMAGE_SIZE, VIDEO_SIZE, build_proxy, load_proxy, proxy_metadata

    if args.checkpoint:
        pipe = build_proxy(args.proxy)
        ema = torch.load(args.checkpoint, weights_only=False)["ema"]
        pipe.transformer.load_state_dict({k[12:]: v for k, v in ema.items() if k.startswith("transformer.")})
        pipe.class_encoder.load_state_dict(
            {k[14:]: v for k, v in ema.items() if k.startswith("class_encoder.")}
        )
    else:
        pipe = build_proxy(args.proxy) if args.untrained else load_proxy(args.proxy)
    pipe.set_progress_bar_config(disable=True)
    video = args.proxy == "video"
    call = dict(VIDEO_SIZE if video else IMAGE_SIZE, guidance_scale=3.0, output_type="latent")
    block_size, tile = (128, (2, 8, 8)) if video else (32, (1, 4, 8))
    rows, uniform_top, uniform_local = structure(pipe, call, block_size, tile, args.steps)
    name = args.proxy + ("_untrained" if args.untrained else "_checkpoint" if args.checkpoint else "")
    concentrated = [r for r in rows if r["top10"] >= CONCENTRATED]
    meta = {} if args.untrained or args.checkpoint else proxy_metadata(args.proxy)  # a checkpoint's own
    lines = [
        f"# Attention structure of the {name} proxy",
        "",
        f"`benchmarks/attention_structure.py`: step {args.steps // 2} of {args.steps}, conditional branch, "
        f"blocks of {block_size} tokens (tiles {tile}), local window +-1 frame, +-2 tokens.",
        f"Training: {meta.get('steps', 'n/a')} steps in {meta.get('minutes', 'n/a')} minutes "
        f"({meta.get('threads', 'n/a')} CPU thread(s)), held-out loss {meta.get('held_out_loss', 'n/a')}"
        + "".join(
            f"; run {i + 1}: {r['steps']} steps, {r['minutes']} min"
            + (f", q/k norm gains x{r['qk_gain']} first" if "qk_gain" in r else "")
            for i, r in enumerate(meta.get("runs", []))
        )
        + ".",
        "",
        f"**{len(concentrated)} of {len(rows)} heads are concentrated** "
        f"(top-10 % block share >= {CONCENTRATED}); "
        f"uniform attention would give {uniform_top:.3f} and a local share of {uniform_local:.4f}.",
        f"Median top-10 % share {sorted(r['top10'] for r in rows)[len(rows) // 2]:.3f}, "
        f"median local share {sorted(r['local'] for r in rows)[len(rows) // 2]:.3f}.",
        "",
        "| layer | head | top-10 % block share | local share |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['layer']} | {r['head']} | {r['top10']:.3f} | {r['local']:.3f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"proxy_{name}_structure.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
