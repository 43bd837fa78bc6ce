"""Block-sparse attention kernels behind one functional entry point.

``block_sparse_attention`` is the contract every method calls. ``backend="auto"`` picks the
Triton kernel for CUDA tensors when Triton works, and the pure-PyTorch path everywhere else.
"""

from __future__ import annotations

from typing import Literal

import torch

from .dense import dense_attention
from .layout import BlockLayout, num_blocks
from .reference import AttentionResult, block_sparse_attention_torch

Backend = Literal["auto", "triton", "torch"]

__all__ = [
    "AttentionResult",
    "BlockLayout",
    "attention_with_stats",
    "block_sparse_attention",
    "dense_attention",
    "num_blocks",
]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention over the union of the key blocks listed for each query block.

    Args:
        q: (batch, seq_q, heads, head_dim).
        k, v: (batch, seq_k, heads, head_dim); same dtype and device as ``q``.
        layout: which key blocks each (batch, head, query block) attends; see ``BlockLayout``.
            Sequence lengths need not be multiples of the block sizes.
        scale: softmax scale; default ``head_dim ** -0.5``.
        key_padding_mask: optional bool (batch, seq_k), True = a real key, False = padding.
        return_lse: also return the natural-log sum-exp per row, fp32, (batch, heads, seq_q).
        backend: "auto", "triton" or "torch".

    Returns:
        The output (batch, seq_q, heads, head_dim) in ``q``'s dtype, and the LSE if asked.
        A row whose list is empty (or whose keys are all padding) gives zeros and LSE = -inf.
    """
    result = attention_with_stats(
        q, k, v, layout, scale=scale, key_padding_mask=key_padding_mask, backend=backend
    )
    return (result.out, result.lse) if return_lse else result.out


def attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> AttentionResult:
    """Like ``block_sparse_attention`` but returns output, LSE, row max and row sum together."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return block_sparse_attention_torch(q, k, v, layout, scale=scale, key_padding_mask=key_padding_mask)
