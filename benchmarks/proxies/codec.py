"""The proxies' fixed linear latent space: pixel-unshuffle, then a projection onto principal axes.

A 4x4 RGB patch (48 numbers) becomes ``channels`` numbers: the patch minus its mean, projected onto
the top principal axes of all 4x4 patches of the photographs, each coefficient divided by its
standard deviation (as Wan normalises its VAE latents per channel). Decoding is the transpose
(the axes are orthonormal), so ``encode(decode(z)) == z`` exactly and ``decode(encode(x))`` is the
best rank-``channels`` approximation of ``x``'s patches. Nothing is learnt; the codec is fitted
once from the photographs and shipped with each proxy's weights, so latents never change meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH = 4


class LatentCodec(torch.nn.Module):
    """Frames (..., 3, H, W) in [0, 1] <-> latents (..., channels, H/4, W/4)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3 * PATCH * PATCH))
        self.register_buffer("axes", torch.eye(channels, 3 * PATCH * PATCH))
        self.register_buffer("scale", torch.ones(channels))

    @property
    def channels(self) -> int:
        return self.axes.shape[0]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        lead = frames.shape[:-3]
        x = F.pixel_unshuffle(frames.reshape(-1, *frames.shape[-3:]).to(self.axes.dtype), PATCH)
        z = torch.einsum("nphw,cp->nchw", x - self.mean.view(1, -1, 1, 1), self.axes)
        z = z / self.scale.view(1, -1, 1, 1)
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames in [0, 1] (clamped); ``latents`` (..., channels, h, w)."""
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]).to(self.axes.dtype) * self.scale.view(1, -1, 1, 1)
        x = torch.einsum("nchw,cp->nphw", z, self.axes) + self.mean.view(1, -1, 1, 1)
        frames = F.pixel_shuffle(x, PATCH).clamp(0, 1)
        return frames.reshape(*lead, *frames.shape[1:])

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> LatentCodec:
        """Principal axes and scales from ``images`` (N, 3, H, W) in [0, 1] (float64 arithmetic)."""
        patches = F.pixel_unshuffle(images.double(), PATCH).permute(0, 2, 3, 1).reshape(-1, 3 * PATCH * PATCH)
        mean = patches.mean(0)
        centred = patches - mean
        values, vectors = torch.linalg.eigh(centred.T @ centred / len(centred))
        order = values.argsort(descending=True)[: self.channels]
        axes = vectors[:, order].T
        axes = axes * torch.where(axes.sum(1, keepdim=True) < 0, -1.0, 1.0)  # a fixed sign per axis
        self.mean.copy_(mean)
        self.axes.copy_(axes)
        self.scale.copy_(values[order].clamp_min(1e-12).sqrt())
        return self


def fitted_codec(channels: int = 16) -> LatentCodec:
    """The codec fitted on every photograph (the same numbers on every machine: float64 eigh on
    fixed inputs)."""
    from .data import PHOTOS, photo

    crops = [photo(i)[:, :256, :256] for i in range(len(PHOTOS))]
    return LatentCodec(channels).fit(torch.stack(crops))
