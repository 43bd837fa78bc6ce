"""Reordering video tokens into compact 3D tiles, so that one attention block is one tile.

Diffusers flattens the token grid frame-major (``t*H*W + h*W + w``): a block of 128 consecutive
tokens is then a thin strip of one row. Regrouping tokens tile by tile makes every block a small
spatio-temporal cube, which is what local and content-based block selection need. Grids that are
not tile multiples get padding slots in their border tiles: those slots are masked as keys and
their query outputs are dropped, so every tile is exactly one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TileOrder:
    """Gather/scatter indices between frame-major token order and tile-major padded order.

    Attributes:
        gather: long (L_padded,): source token of every padded slot (0 for padding slots).
        valid: bool (L_padded,): False for padding slots.
        inverse: long (L,): the padded slot of every original token.
        tiles_per_axis: (nF, nH, nW) tiles along each grid axis.
    """

    gather: torch.Tensor
    valid: torch.Tensor
    inverse: torch.Tensor
    tiles_per_axis: tuple[int, int, int]

    @property
    def num_tiles(self) -> int:
        a, b, c = self.tiles_per_axis
        return a * b * c

    def to_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) in frame-major order -> (B, L_padded, ...) in tile order."""
        return x.index_select(1, self.gather)

    def from_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L_padded, ...) in tile order -> (B, L, ...) in frame-major order."""
        return x.index_select(1, self.inverse)


@lru_cache(maxsize=32)
def tile_order(grid: tuple[int, int, int], tile: tuple[int, int, int], device: torch.device) -> TileOrder:
    """The tile order for a (frames, height, width) grid; cached per grid, tile and device."""
    tiles = tuple(-(-g // t) for g, t in zip(grid, tile, strict=True))
    # Coordinates of every padded slot, enumerated tile by tile, then raster order inside a tile.
    axes = [torch.arange(n, device=device) for n in (*tiles, *tile)]
    a, b, c, i, j, k = torch.meshgrid(*axes, indexing="ij")
    f = (a * tile[0] + i).flatten()
    h = (b * tile[1] + j).flatten()
    w = (c * tile[2] + k).flatten()
    valid = (f < grid[0]) & (h < grid[1]) & (w < grid[2])
    source = (f * grid[1] + h) * grid[2] + w
    gather = torch.where(valid, source, torch.zeros_like(source))
    inverse = torch.empty(grid[0] * grid[1] * grid[2], dtype=torch.long, device=device)
    inverse[source[valid]] = torch.nonzero(valid).squeeze(1)
    return TileOrder(gather, valid, inverse, tiles)


def tile_coordinates(tiles_per_axis: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(num_tiles, 3) long: (frame, row, col) tile coordinates in tile order."""
    axes = [torch.arange(n, device=device) for n in tiles_per_axis]
    return torch.stack([x.flatten() for x in torch.meshgrid(*axes, indexing="ij")], dim=1)
