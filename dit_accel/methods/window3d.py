"""``window3d``: a static local window over the video token grid (tile-granular, training-free).

Tokens are regrouped into tiles (one tile = one block); a query tile attends the key tiles of a
window centred on it and shifted inward at the grid's borders, so every query tile sees the same
number of key tiles. Text keys are always attended and text queries stay dense (the driver).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, as_int_tuple, register_method
from ..kernels import BlockLayout, num_blocks
from .base import SparseMethod
from .corrections import RectifyCorrection, RettentionCorrection
from .order import TokenOrder, checked_tile, tile_coordinates, tile_order, tiles_per_axis
from .plan import Operands, Plan


@dataclass(frozen=True)
class Window3DConfig(SparseAttentionConfig):
    """A static 3D local window over the video token grid (Sliding-Tile-Attention, training-free).

    Video tokens are reordered into ``tile``-shaped groups of ``block_size`` tokens, so one block
    is one compact spatio-temporal tile. A query tile attends the key tiles of a window centred on
    it and shifted to stay inside the grid at borders, so every query tile sees the same number of
    key tiles. The window is tile-granular: each extent is rounded up to whole tiles.

    Attributes:
        window: (frames, height, width) extent of the window in latent tokens (after patchify).
            Axes longer than the grid are clamped, so a window at least as large as the grid is
            dense attention.
        tile: (frames, height, width) of one tile in tokens; the product must equal
            ``block_size``. Default: chosen from ``block_size`` (128 -> (2, 8, 8), 64 -> (1, 8, 8)).
        correction: "default" = the measured best per grid: per-row rectification
            (``RectifyCorrection()``) on one-frame grids (+4.9 dB over the bare window at equal
            density on the image proxy), Re-ttention's correction with its warm-up on video grids
            (``RettentionCorrection()``: +2.4 dB over top-k at equal density where the bare window
            loses 4.1, ``benchmarks/results/quality_video_combinations.md``).
            ``preset="reference"`` or None: the bare window on every grid.
    """

    method: ClassVar[str] = "window3d"

    window: tuple[int, int, int] = (9, 24, 24)
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        window = as_int_tuple(self.window, "window", 3)
        if any(w < 1 for w in window):
            raise ValueError(f"window extents must be >= 1 token, got {self.window!r}")
        object.__setattr__(self, "window", window)
        tile = checked_tile(self.tile, self.block_size)  # validated; None stays None (block_size may change)
        if self.tile is not None:
            object.__setattr__(self, "tile", tile)


def window_block_mask(
    tiles: tuple[int, int, int], window_tiles: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    """Bool (num_tiles, num_tiles): query tile i attends key tile j.

    Per axis with n tiles and a window of w tiles (w clamped to n), query tile a sees key tiles
    [s, s + w) with s = clamp(a - (w - 1) // 2, 0, n - w): centred, shifted inward at borders.
    """
    coords = tile_coordinates(tiles, device)
    n = torch.tensor(tiles, device=device)
    w = torch.minimum(torch.tensor(window_tiles, device=device), n)
    start = torch.minimum(torch.clamp(coords - (w - 1) // 2, min=0), n - w)
    inside = (coords[None, :, :] >= start[:, None, :]) & (coords[None, :, :] < (start + w)[:, None, :])
    return inside.all(dim=-1)


class Window3D(SparseMethod):
    config_cls: ClassVar[type[Window3DConfig]] = Window3DConfig

    def __init__(self, config: Window3DConfig, cache=None) -> None:
        super().__init__(config, cache)
        self.tile = checked_tile(config.tile, config.block_size)

    def own_correction(self) -> RectifyCorrection | None:
        return None if self.config.preset == "reference" else RectifyCorrection()

    def own_video_correction(self) -> RettentionCorrection | None:
        """Video grids: Re-ttention's correction with its own dense warm-up (30 % of the steps:
        ``RettentionCorrection``'s default, the same as every video family's Re-ttention
        warm-up). On the shipped video proxy it lifts a (4, 16, 16) window from -4.1 to +2.4 dB
        against top-k at equal density (``quality_video_combinations.md``);
        without the warm-up the residual stops near 28.8 dB, and the bare window lost 4.6 dB to
        top-k at the default window (``quality_video.md``). The reference preset: the bare window."""
        return None if self.config.preset == "reference" else RettentionCorrection()

    def window_tiles(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        extents = zip(self.config.window, grid, self.tile, strict=True)
        return tuple(-(-min(w, g) // t) for w, g, t in extents)

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        grid, tile = context.call.grid, self.tile
        return self.cache.get(("tiles", grid, tile, device), lambda: tile_order(grid, tile, device))

    def layout(self, grid: tuple[int, int, int], num_text: int, device: torch.device) -> BlockLayout:
        """The static layout for a grid plus ``num_text`` text keys appended after the video tiles."""

        def build() -> BlockLayout:
            tiles = tiles_per_axis(grid, self.tile)
            video = window_block_mask(tiles, self.window_tiles(grid), device)
            text = torch.ones(
                video.shape[0], num_blocks(num_text, self.config.block_size), dtype=torch.bool, device=device
            )
            mask = torch.cat([video, text], dim=1)[None, None]
            return BlockLayout.from_block_mask(mask, self.config.block_size, self.config.block_size)

        return self.cache.get(("window3d", grid, num_text, device), build)

    def plan(self, x: Operands, context) -> Plan:
        return Plan(self.layout(context.call.grid, x.num_text, x.q.device))


register_method(Window3DConfig, Window3D)
