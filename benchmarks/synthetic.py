"""Synthetic attention inputs with spatial structure, shared by the benchmark scripts.

I.i.d. normal Q/K/V make attention nearly uniform, which no block-selection method is built for;
low-frequency random fields over the token grid make nearby tokens similar, as in a video DiT.
"""

from __future__ import annotations

import torch


def smooth_field(
    g: torch.Generator, grid: tuple[int, int, int], heads: int, dim: int, scale: float, noise: float = 0.5
) -> torch.Tensor:
    """(1, N, H, D) frame-major: a random field on a 2x6x6-coarser grid, upsampled, plus noise."""
    coarse_shape = (1, heads * dim, max(1, grid[0] // 2), max(1, grid[1] // 6), max(1, grid[2] // 6))
    coarse = torch.randn(coarse_shape, generator=g)
    field = torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear", align_corners=False)
    field = field.view(1, heads, dim, -1).permute(0, 3, 1, 2)
    return (field * scale + noise * torch.randn(field.shape, generator=g)).contiguous()


def smooth_qkv(grid: tuple[int, int, int], heads: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Q and K with field scale 2, V with 1 (CPU float32; move and cast as needed)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(smooth_field(g, grid, heads, dim, s) for s in (2.0, 2.0, 1.0))
