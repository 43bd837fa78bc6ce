"""Train a quality-benchmark proxy (``video``: Wan architecture, ``image``: PixArt) on this CPU.

Rectified flow on clips/crops of scikit-image's photographs in the fixed latent space of
``benchmarks/proxies/codec.py``, conditioned on the photograph (10 % of examples get the null
class, for classifier-free guidance). The schedule is by wall time: ``--minutes`` is the budget,
the learning rate follows a cosine over it, and the video proxy spends the first 60 % on smaller
token grids (pieces of the same clips at the same scale, so RoPE's relative positions mean the
same) and the rest on the full 8 x 16 x 32 grid. A checkpoint (weights, EMA, optimiser, RNG,
elapsed time) is written every ``--checkpoint-minutes`` and on exit; running the same command
again resumes from it. At the end the EMA weights are written as fp16 safetensors with the codec,
plus a JSON record (steps, wall time, loss curve, held-out loss).

``--init WEIGHTS`` continues training from earlier fp16 weights (a session's end loses the
optimiser's checkpoint, not the shipped weights): the run trains on the final phase's grids only,
warms the learning rate up again, and its record adds the earlier run's steps and minutes, so the
wall time reported is the total.

``--qk-gain G`` multiplies the self-attention q/k RMSNorm gains by G before training. With QK-norm
a head's logits are bounded by about sqrt(head_dim) * gain**2, and in two CPU hours the gains of the
video proxy moved from 1.0 to only ~1.05, so most heads stayed near uniform (3 of 20 concentrated)
although real video DiTs have strongly concentrated heads. Raising the gains (1.5: 14 of 20 heads
concentrated before any fine-tuning) and training on lets the model use sharper attention.
Fine-tuning with trainable gains gave most of the sharpness back (``proxy_video_qk_gain.md``), so
``--freeze-qk-gain`` keeps them fixed at their raised value: a fixed logit scale per head, the
model can still make a head diffuse through its projections but no longer by shrinking the gains.

    nohup python scripts/train_proxy.py video --minutes 120 --threads 1 > video.log &
    nohup python scripts/train_proxy.py video --init benchmarks/proxies/weights/video.safetensors \
        --minutes 40 --threads 2 --lr 2e-4 > video.log &
    python scripts/train_proxy.py image --minutes 1 --out /tmp/proxy   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proxies.flow import held_out_loss, training_loss  # noqa: E402
from benchmarks.proxies.models import WEIGHTS, build_proxy, load_proxy  # noqa: E402

#: (token grid, batch) per phase; the video proxy's small grids cost 1/8 to 1/2 of the full one.
CURRICULUM = {
    "video": [
        (0.6, [((8, 8, 16), 4), ((4, 16, 32), 2), ((8, 16, 16), 2)]),
        (1.0, [((8, 16, 32), 1), ((4, 16, 32), 2)]),
    ],
    "image": [(1.0, [((32, 32), 4)])],
}
FULL_GRID = {"video": (8, 16, 32), "image": (32, 32)}


def grid_for(name: str, progress: float, step: int):
    for end, choices in CURRICULUM[name]:
        if progress < end:
            return choices[step % len(choices)]
    return CURRICULUM[name][-1][1][step % len(CURRICULUM[name][-1][1])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(CURRICULUM))
    parser.add_argument("--minutes", type=float, default=120.0, help="wall-time budget (schedule and stop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: OUT/checkpoints/NAME.pt")
    parser.add_argument("--init", type=Path, default=None, help="continue from these fp16 weights")
    parser.add_argument(
        "--qk-gain",
        type=float,
        default=1.0,
        help="multiply the self-attention q/k norm gains by this before training (see the docstring)",
    )
    parser.add_argument(
        "--freeze-qk-gain",
        action="store_true",
        help="keep the self-attention q/k norm gains fixed (after --qk-gain) instead of training them",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or args.out / "checkpoints" / f"{args.name}.pt"

    earlier = {}
    if args.init is not None:
        pipe = load_proxy(args.name, args.init)
        record_path = args.init.with_suffix(".json")
        earlier = json.loads(record_path.read_text()) if record_path.exists() else {}
    else:
        pipe = build_proxy(args.name, seed=0)
    if args.qk_gain != 1.0 or args.freeze_qk_gain:
        gains = [
            param
            for name, param in pipe.transformer.named_parameters()
            if ".attn1.norm_q." in name or ".attn1.norm_k." in name
        ]
        if not gains:
            parser.error(f"--qk-gain: the {args.name} proxy has no self-attention q/k norm to scale")
        with torch.no_grad():
            for param in gains:
                param.mul_(args.qk_gain)
                param.requires_grad_(not args.freeze_qk_gain)
    modules = torch.nn.ModuleDict(
        {"transformer": pipe.transformer, "class_encoder": pipe.class_encoder}
    ).train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    optimiser = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(1)
    state = dict(step=0, elapsed=0.0, losses=[])
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        modules.load_state_dict(saved["modules"])
        ema.load_state_dict(saved["ema"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        state = saved["state"]
        print(f"resumed at step {state['step']}, {state['elapsed'] / 60:.1f} min", flush=True)

    def save_checkpoint() -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(
            modules=modules.state_dict(),
            ema=ema.state_dict(),
            optimiser=optimiser.state_dict(),
            generator=generator.get_state(),
            state=state,
        )
        torch.save(payload, checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    budget, warmup = args.minutes * 60, 200
    session_start, last_save = time.time() - state["elapsed"], time.time()
    while not stop["now"]:
        state["elapsed"] = time.time() - session_start
        progress = state["elapsed"] / budget
        if progress >= 1.0:
            break
        step = state["step"]
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = lr
        grid, batch = grid_for(args.name, 1.0 if args.init is not None else progress, step)
        loss = training_loss(pipe, args.name, batch, generator, grid)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), modules.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        state["losses"].append(round(float(loss.detach()), 5))
        state["step"] = step + 1
        if step % 50 == 0:
            recent = state["losses"][-50:]
            print(
                f"step {step} grid {grid} loss {sum(recent) / len(recent):.4f} lr {lr:.2e} "
                f"{state['elapsed'] / 60:.1f} min",
                flush=True,
            )
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save_checkpoint()
            last_save = time.time()
    save_checkpoint()
    if stop["now"]:
        print("stopped by SIGTERM; run the same command to resume", flush=True)
        return 0

    from safetensors.torch import save_file

    pipe.transformer.load_state_dict(ema["transformer"].state_dict())
    pipe.class_encoder.load_state_dict(ema["class_encoder"].state_dict())
    pipe.transformer.eval()
    tensors = {f"transformer.{k}": v for k, v in pipe.transformer.state_dict().items()}
    tensors.update({f"class_encoder.{k}": v for k, v in pipe.class_encoder.state_dict().items()})
    tensors = {k: v.half().contiguous() for k, v in tensors.items()}
    tensors.update({f"codec.{k}": v.float().contiguous() for k, v in pipe.codec.state_dict().items()})
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / f"{args.name}.safetensors"))
    losses = state["losses"]
    record = dict(
        name=args.name,
        steps=state["step"] + earlier.get("steps", 0),
        minutes=round(state["elapsed"] / 60 + earlier.get("minutes", 0.0), 1),
        threads=args.threads,
        lr=args.lr,
        curriculum=CURRICULUM[args.name],
        **({"qk_gain": args.qk_gain} if args.qk_gain != 1.0 and not earlier else {}),
        **({"qk_gain_frozen": True} if args.freeze_qk_gain and not earlier else {}),
        held_out_loss=round(held_out_loss(pipe, args.name, FULL_GRID[args.name], batches=1), 4),
        loss_every_100=earlier.get("loss_every_100", [])
        + [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)],
    )
    if earlier:
        record["runs"] = earlier.get(
            "runs", [dict((k, earlier[k]) for k in ("steps", "minutes", "threads", "lr"))]
        )
        record["runs"].append(
            dict(
                steps=state["step"],
                minutes=round(state["elapsed"] / 60, 1),
                threads=args.threads,
                lr=args.lr,
                init=str(args.init),
                **({"qk_gain": args.qk_gain} if args.qk_gain != 1.0 else {}),
                **({"qk_gain_frozen": True} if args.freeze_qk_gain else {}),
            )
        )
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {args.out / (args.name + '.safetensors')} after {state['step']} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
