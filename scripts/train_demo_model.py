"""Train the built-in demo model on procedurally generated videos (CPU, fixed seeds).

Rectified flow, as Wan: ``x_t = (1 - s) x_0 + s e``, the transformer predicts ``e - x_0`` at
timestep ``1000 s``; ``s`` is logit-normal with the scheduler's shift applied. 10 % of prompts are
dropped to the empty prompt for classifier-free guidance. Writes
``dit_accel/demo/weights/demo.safetensors`` (float16) and ``demo.json`` (settings, loss curve).

    python scripts/train_demo_model.py                 # the shipped model (about 35 minutes, 1 thread)
    python scripts/train_demo_model.py --steps 20 --out /tmp/demo   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_accel.demo.data import random_batch  # noqa: E402
from dit_accel.demo.model import TRANSFORMER_CONFIG, DemoPromptEncoder, build_transformer  # noqa: E402

SHIFT = 2.0


def shifted(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=38.0, help="stop early at this wall time")
    parser.add_argument("--out", type=Path, default=ROOT / "dit_accel" / "demo" / "weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data_gen = torch.Generator().manual_seed(1)
    transformer, encoder = build_transformer(), DemoPromptEncoder()
    params = list(transformer.parameters()) + list(encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    losses, start, step = [], time.time(), 0
    for step in range(args.steps):
        videos, prompts = random_batch(args.batch, data_gen)
        prompts = [p if float(torch.rand(1, generator=data_gen)) > 0.1 else "" for p in prompts]
        x0 = videos.transpose(1, 2) * 2 - 1  # (B, 3, F, H, W) in [-1, 1]
        noise = torch.randn(x0.shape, generator=data_gen)
        sigma = shifted(torch.sigmoid(torch.randn(args.batch, generator=data_gen)), SHIFT).view(
            -1, 1, 1, 1, 1
        )
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(xt, sigma.flatten() * 1000, encoder(prompts), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(float(loss))
        if step % 50 == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"step {step} loss {recent:.4f} {time.time() - start:.0f}s", flush=True)
        if time.time() - start > args.minutes * 60:
            print(f"stopping at the {args.minutes} minute budget", flush=True)
            break
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {f"transformer.{k}": v.half().contiguous() for k, v in transformer.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v.half().contiguous() for k, v in encoder.state_dict().items()})
    save_file(state, str(args.out / "demo.safetensors"))
    meta = dict(
        steps=step + 1,
        batch=args.batch,
        lr=args.lr,
        shift=SHIFT,
        threads=args.threads,
        minutes=round((time.time() - start) / 60, 1),
        transformer=TRANSFORMER_CONFIG,
        loss_every_50=[
            round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4) for i in range(0, len(losses), 50)
        ],
    )
    (args.out / "demo.json").write_text(json.dumps(meta, indent=1, default=list) + "\n")
    print(f"saved {args.out / 'demo.safetensors'} after {step + 1} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
