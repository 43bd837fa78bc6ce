"""The ``dense`` method: exact attention through dit-accel's whole path (hooks, context, backend).

It is the control for every comparison: with it enabled a pipeline must produce what the stock
pipeline produces. ``use_block_kernel`` sends the same computation through the block-sparse kernel
with a full layout, which checks that path end to end.
"""

from __future__ import annotations

from typing import ClassVar

from ..config import DenseConfig
from ..context import AttentionContext
from ..kernels import BlockLayout, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod


class Dense(SparseMethod):
    config_cls: ClassVar[type[DenseConfig]] = DenseConfig

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        if not self.config.use_block_kernel:
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        block = self.config.block_size
        layout = BlockLayout.full(
            num_blocks(q.shape[1], block), num_blocks(k.shape[1], block), block, block, device=q.device
        )
        out = block_sparse_attention(
            q,
            k,
            v,
            layout,
            scale=scale,
            key_padding_mask=key_padding_mask,
            backend=self.config.kernel_backend,
        )
        return out, 1.0
