"""Fidelity of a sparse result to the dense one: relative L2 on any tensor, PSNR and SSIM on frames."""

from __future__ import annotations

import math

import torch


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    """||output - reference|| / ||reference|| in float64; NaN when either holds a non-finite value,
    so that a comparison against a tolerance never passes on NaN."""
    if not (torch.isfinite(output).all() and torch.isfinite(reference).all()):
        return math.nan
    out, ref = output.double(), reference.double()
    return float((out - ref).norm() / ref.norm())


def psnr(output: torch.Tensor, reference: torch.Tensor, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical inputs). ``peak`` defaults to the
    reference's value range (1 for frames in [0, 1])."""
    out, ref = output.double(), reference.double()
    mse = float(((out - ref) ** 2).mean())
    if mse == 0:
        return math.inf
    peak = float(ref.max() - ref.min()) if peak is None else peak
    return 10 * math.log10(max(peak, 1e-12) ** 2 / mse)


def ssim(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean structural similarity of frames (..., H, W, C) in [0, 1]: 11x11 Gaussian window
    (sigma 1.5), constants of Wang et al. 2004, averaged over channels, frames and positions."""
    x = output.double().reshape(-1, *output.shape[-3:]).permute(0, 3, 1, 2)
    y = reference.double().reshape(-1, *reference.shape[-3:]).permute(0, 3, 1, 2)
    channels = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    score = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(score.mean())
