"""``topk``: pooled top-k block selection, the simplest dynamic planner and the quality baseline.

Video tokens go to tile order (one tile = one block, as ``window3d``); each query block keeps the
``k = max(1, round(density x n))`` key blocks whose mean key scores highest against its mean query
(float32, padding slots excluded from the means). Every query block keeps exactly ``k`` video
blocks, so the realized density is the target up to the rounding of ``k``; no correction, no
forced blocks. Text keys are always attended and text queries stay dense.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..config import TopKConfig
from ..context import AttentionContext
from ..kernels import BlockLayout, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod
from .joint import split_joint
from .tiles import tile_order


def block_means(x: torch.Tensor, valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, L, H, D) tile-ordered, ``valid`` bool (B, L) -> float32 (B, H, n_blocks, D) means over
    each block's valid tokens (zero for a block without any)."""
    batch, length, heads, dim = x.shape
    n = num_blocks(length, block_size)
    weight = valid.to(torch.float32).reshape(batch, n, block_size, 1, 1)
    sums = (x.to(torch.float32).reshape(batch, n, block_size, heads, dim) * weight).sum(2)
    means = sums / weight.sum(2).clamp_min(1.0)
    return means.permute(0, 2, 1, 3)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool like ``scores`` (..., n): the ``k`` largest columns of every row."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(-1, scores.topk(k, dim=-1).indices, True)


class TopK(SparseMethod):
    config_cls: ClassVar[type[TopKConfig]] = TopKConfig

    def blocks_kept(self, n_blocks: int) -> int:
        return max(1, min(n_blocks, round(self.config.density * n_blocks)))

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        call, bs = context.call, self.config.block_size
        split = split_joint(q.shape[1], call)
        order = tile_order(call.grid, self.config.tile, q.device)
        batch = q.shape[0]
        video_ok = order.valid.expand(batch, -1)
        text_ok = torch.ones(batch, split.num_text, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            video_ok = video_ok & order.to_tiles(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]
        qv, kv = order.to_tiles(q[:, split.video]), order.to_tiles(k[:, split.video])
        scores = block_means(qv, order.valid.expand(batch, -1), bs) @ block_means(kv, video_ok, bs).transpose(
            -1, -2
        )
        video_keep = top_k_mask(scores, self.blocks_kept(scores.shape[-1]))
        text_blocks = num_blocks(split.num_text, bs)
        text_keep = video_keep.new_ones(*video_keep.shape[:-1], text_blocks)
        layout = BlockLayout.from_block_mask(torch.cat([video_keep, text_keep], dim=-1), bs, bs)

        def keys_of(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([order.to_tiles(x[:, split.video]), x[:, split.text]], dim=1)

        out = block_sparse_attention(
            qv,
            keys_of(k),
            keys_of(v),
            layout,
            scale=scale,
            key_padding_mask=torch.cat([video_ok, text_ok], dim=1),
            backend=self.config.kernel_backend,
        )
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
        return split.join(order.from_tiles(out), text_out, call.text_position == "first"), layout.density()
