"""``window3d``: a static local window over the video token grid (tile-granular, training-free).

Tokens are regrouped into tiles (one tile = one block); a query tile attends the key tiles of a
window centred on it and shifted inward at the grid's borders, so every query tile sees the same
number of key tiles. Text keys are always attended and text queries stay dense.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..config import Window3DConfig
from ..context import AttentionContext
from ..kernels import BlockLayout, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod
from .joint import split_joint
from .tiles import tile_coordinates, tile_order


def window_block_mask(
    tiles_per_axis: tuple[int, int, int], window_tiles: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    """Bool (num_tiles, num_tiles): query tile i attends key tile j.

    Per axis with n tiles and a window of w tiles (w clamped to n), query tile a sees key tiles
    [s, s + w) with s = clamp(a - (w - 1) // 2, 0, n - w): centred, shifted inward at borders.
    """
    coords = tile_coordinates(tiles_per_axis, device)
    n = torch.tensor(tiles_per_axis, device=device)
    w = torch.minimum(torch.tensor(window_tiles, device=device), n)
    start = torch.minimum(torch.clamp(coords - (w - 1) // 2, min=0), n - w)
    inside = (coords[None, :, :] >= start[:, None, :]) & (coords[None, :, :] < (start + w)[:, None, :])
    return inside.all(dim=-1)


class Window3D(SparseMethod):
    config_cls: ClassVar[type[Window3DConfig]] = Window3DConfig

    def __init__(self, config: Window3DConfig) -> None:
        super().__init__(config)
        self._layouts: dict[tuple, BlockLayout] = {}

    def window_tiles(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        extents = zip(self.config.window, grid, self.config.tile, strict=True)
        return tuple(-(-min(w, g) // t) for w, g, t in extents)

    def layout(self, grid: tuple[int, int, int], num_text: int, device: torch.device) -> BlockLayout:
        """The static layout for a grid plus ``num_text`` text keys appended after the video tiles."""
        key = (grid, num_text, device)
        if key not in self._layouts:
            order = tile_order(grid, self.config.tile, device)
            video = window_block_mask(order.tiles_per_axis, self.window_tiles(grid), device)
            text_blocks = num_blocks(num_text, self.config.block_size)
            text = torch.ones(order.num_tiles, text_blocks, dtype=torch.bool, device=device)
            mask = torch.cat([video, text], dim=1)[None, None]
            self._layouts[key] = BlockLayout.from_block_mask(
                mask, self.config.block_size, self.config.block_size
            )
        return self._layouts[key]

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        call = context.call
        split = split_joint(q.shape[1], call)
        order = tile_order(call.grid, self.config.tile, q.device)
        batch = q.shape[0]

        def keys_of(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([order.to_tiles(x[:, split.video]), x[:, split.text]], dim=1)

        video_ok = order.valid.expand(batch, -1)
        text_ok = torch.ones(batch, split.num_text, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            video_ok = video_ok & order.to_tiles(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]
        layout = self.layout(call.grid, split.num_text, q.device)
        out = block_sparse_attention(
            order.to_tiles(q[:, split.video]),
            keys_of(k),
            keys_of(v),
            layout,
            scale=scale,
            key_padding_mask=torch.cat([video_ok, text_ok], dim=1),
            backend=self.config.kernel_backend,
        )
        video_out = order.from_tiles(out)
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
        return split.join(video_out, text_out, call.text_position == "first"), layout.density()
