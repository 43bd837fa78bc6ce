"""``topk``: pooled top-k block selection, the simplest dynamic planner and the quality baseline.

Video tokens go to tile order (one tile = one block, as ``window3d``); each query block keeps the
``k = max(1, round(density x n))`` key blocks whose mean key scores highest against its mean query
(float32, padding slots excluded from the means). Every query block keeps exactly ``k`` video
blocks, so the realized density is the target up to the rounding of ``k``; no forced blocks, and
no correction unless asked (``correction="rectify"``). Text keys are always attended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, register_method
from ..kernels import BlockLayout, num_blocks
from .base import SparseMethod
from .order import TokenOrder, checked_tile, fit_tile, tile_order
from .plan import Operands, Plan
from .pooling import pool_blocks


@dataclass(frozen=True)
class TopKConfig(SparseAttentionConfig):
    """Pooled top-k block selection: each query block keeps the key blocks whose mean key scores
    highest against its mean query. No correction by default; the quality benchmark's baseline.

    Attributes:
        density: the fraction of video key blocks every query block keeps (0.25); the kept count
            is ``max(1, round(density x blocks))``.
        tile: (frames, height, width) of one block in tokens, as for ``window3d``. Default: from
            ``block_size``, with the frame extent moved into space on grids with fewer frames
            (images: (1, 8, 16) for 128).
    """

    method: ClassVar[str] = "topk"

    density: float = 0.25
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.density
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1:
            raise ValueError(f"density must lie in (0, 1], got {d!r}")
        if self.tile is not None:
            object.__setattr__(self, "tile", checked_tile(self.tile, self.block_size))
        else:
            checked_tile(None, self.block_size)  # a block size without a default tile fails here


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool like ``scores`` (..., n): the ``k`` largest columns of every row."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(-1, scores.topk(k, dim=-1).indices, True)


class TopK(SparseMethod):
    config_cls: ClassVar[type[TopKConfig]] = TopKConfig

    def target_density(self, context) -> float:
        """The fraction of key blocks to keep in this call."""
        return self.config.density

    def blocks_kept(self, n_blocks: int, density: float) -> int:
        return max(1, min(n_blocks, round(density * n_blocks)))

    def tile(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.config.tile or fit_tile(checked_tile(None, self.config.block_size), grid)

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        grid = context.call.grid
        tile = self.tile(grid)
        return self.cache.get(("tiles", grid, tile, device), lambda: tile_order(grid, tile, device))

    def block_scores(self, x: Operands, context) -> torch.Tensor:
        """(B, H, n, n) float32: each query block's mean query against each key block's mean key."""
        bs = x.block_q
        q_mean = pool_blocks(x.q, bs, x.video_ok, "valid", torch.float32).mean
        k_mean = pool_blocks(x.k, bs, x.video_ok, "valid", torch.float32).mean
        return q_mean @ k_mean.transpose(-1, -2)

    def video_blocks(self, scores: torch.Tensor, context) -> torch.Tensor:
        """bool like ``scores``: the kept video key blocks of every query block."""
        return top_k_mask(scores, self.blocks_kept(scores.shape[-1], self.target_density(context)))

    def plan(self, x: Operands, context) -> Plan:
        bs = x.block_q
        video = self.video_blocks(self.block_scores(x, context), context)
        text = video.new_ones(*video.shape[:-1], num_blocks(x.num_text, bs))
        return Plan(BlockLayout.from_block_mask(torch.cat([video, text], dim=-1), bs, bs))


register_method(TopKConfig, TopK)
