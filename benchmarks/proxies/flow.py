"""The proxies' training objective (rectified flow, as Wan), shared by training and the tests.

``x_t = (1 - s) x_0 + s e``; the transformer predicts ``e - x_0`` at timestep ``1000 s``, with ``s``
logit-normal and shifted by the scheduler's shift. The held-out loss draws from its own generator
at fixed noise levels, so two checkpoints are compared on the same examples.
"""

from __future__ import annotations

import torch

from .data import NULL_CLASS, clip_batch, image_batch
from .models import SHIFT


def shifted(sigma: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def latent_batch(pipe, name: str, batch: int, generator: torch.Generator, grid: tuple[int, ...]):
    """(clean latents, classes) for ``name`` at a token ``grid``: (frames, h, w) for video, (h, w) for
    image; tokens are 2x2 latent pixels, 8x8 image pixels."""
    if name == "video":
        frames, h, w = grid
        clips, classes = clip_batch(batch, generator, frames=frames, height=8 * h, width=8 * w)
        return pipe.codec.encode(clips).transpose(1, 2), classes  # (B, C, F, h, w)
    h, w = grid
    images, classes = image_batch(batch, generator, height=8 * h, width=8 * w)
    return pipe.codec.encode(images), classes


def velocity_loss(pipe, name: str, x0: torch.Tensor, classes: torch.Tensor, sigma: torch.Tensor, noise):
    """Mean squared error of the predicted velocity ``noise - x0`` at noise levels ``sigma`` (B,)."""
    s = sigma.view(-1, *[1] * (x0.ndim - 1))
    xt = (1 - s) * x0 + s * noise
    embeds = pipe.class_encoder(classes)
    timestep = sigma * 1000
    if name == "video":
        pred = pipe.transformer(xt, timestep, embeds, return_dict=False)[0]
    else:
        pred = pipe.transformer(xt, encoder_hidden_states=embeds, timestep=timestep, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred, noise - x0)


def training_loss(pipe, name: str, batch: int, generator: torch.Generator, grid, drop: float = 0.1):
    x0, classes = latent_batch(pipe, name, batch, generator, grid)
    classes = torch.where(torch.rand(batch, generator=generator) < drop, NULL_CLASS, classes)
    sigma = shifted(torch.sigmoid(torch.randn(batch, generator=generator)))
    return velocity_loss(pipe, name, x0, classes, sigma, torch.randn(x0.shape, generator=generator))


@torch.no_grad()
def held_out_loss(pipe, name: str, grid, batches: int = 2, batch: int = 4, seed: int = 12345) -> float:
    """Denoising loss on clips/crops no training step drew (its own seed), at noise levels evenly
    spread over (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x0, classes = latent_batch(pipe, name, batch, generator, grid)
        sigma = (torch.arange(batch) + 0.5) / batch
        total += float(
            velocity_loss(pipe, name, x0, classes, sigma, torch.randn(x0.shape, generator=generator))
        )
    return total / batches
