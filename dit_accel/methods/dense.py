"""The ``dense`` method: exact attention through dit-accel's whole path (hooks, context, backend).

It is the control for every comparison: with it enabled a pipeline must produce what the stock
pipeline produces. ``use_block_kernel`` sends the same computation through the block-sparse kernel
with a full layout, which checks that path end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import SparseAttentionConfig, register_method
from ..kernels import BlockLayout, dense_attention, num_blocks
from .base import SparseMethod
from .plan import Operands, Plan


@dataclass(frozen=True)
class DenseConfig(SparseAttentionConfig):
    """Exact dense attention through dit-accel's whole path: the control for every comparison.

    Attributes:
        use_block_kernel: run dense attention through the block-sparse kernel with a full layout
            instead of PyTorch's scaled_dot_product_attention (checks the kernel path; slower).
    """

    method: ClassVar[str] = "dense"

    use_block_kernel: bool = False


class Dense(SparseMethod):
    config_cls: ClassVar[type[DenseConfig]] = DenseConfig

    def own_correction(self):
        return None

    def refuses_correction(self, correction) -> str:
        return "dense attention drops nothing to correct"

    def attend(self, q, k, v, *, scale, key_padding_mask, context):
        if not self.config.use_block_kernel:
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        return super().attend(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    def plan(self, x: Operands, context) -> Plan:
        n_keys = num_blocks(x.keys.shape[1], x.block_k)
        return Plan(
            BlockLayout.full(
                num_blocks(x.q.shape[1], x.block_q), n_keys, x.block_q, x.block_k, device=x.q.device
            )
        )


register_method(DenseConfig, Dense)
