"""What flows between the driver, a planner and a corrector: the call's operands in slot order,
the plan the kernel computes, a corrector's result, and the kernel call itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..kernels import BlockLayout, ElementMask, attention_with_stats, block_sparse_attention
from ..kernels.row_chunk_mask import RowChunkMask


@dataclass(frozen=True)
class Plan:
    """What the kernel computes for one call.

    Queries are the video slots; keys are the video slots padded to whole key blocks, then the
    text keys. ``element_mask``/``kv_partial``: the exact rule inside partial tiles (FreeSwim's
    window, Re-ttention's band); ``row_chunk_mask``: VMoBA's per-query selection (parity mode,
    PyTorch path); ``pooled``: statistics the planner computed that a corrector may reuse.
    """

    layout: BlockLayout
    element_mask: ElementMask | None = None
    kv_partial: torch.Tensor | None = None
    row_chunk_mask: RowChunkMask | None = None
    pooled: Any = None


@dataclass(frozen=True)
class Operands:
    """One call's video part in slot order, its text part, and the kernel's key set.

    q, k, v: (B, S, H, D) video slots; video_ok: bool (B, S) real, unpadded keys; text_k,
    text_v: (B, T, H, D); text_ok: bool (B, T); keys, values: (B, S_k + T, H, D) with
    key_valid (B, S_k + T), ``S_k`` = S rounded up to whole ``block_k`` blocks.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    video_ok: torch.Tensor
    text_k: torch.Tensor
    text_v: torch.Tensor
    text_ok: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    key_valid: torch.Tensor
    scale: float
    block_q: int
    block_k: int

    @property
    def num_text(self) -> int:
        return self.text_k.shape[1]


@dataclass(frozen=True)
class Corrected:
    """A corrector's result: the video output in slot order, the density it cost, and the scale
    the reference applies to the (dense) text rows (Re-ttention's drift; 1 otherwise)."""

    out: torch.Tensor
    density: torch.Tensor | float
    text_scale: float = 1.0


def run_kernel(x: Operands, plan: Plan, backend: str, *, stats: bool = False):
    """The block-sparse kernel over ``plan``; the output, or an ``AttentionResult`` with ``stats``."""
    masks = dict(
        scale=x.scale,
        key_padding_mask=x.key_valid,
        element_mask=plan.element_mask,
        kv_partial=plan.kv_partial,
    )
    if plan.row_chunk_mask is not None:  # per-row selection: only the PyTorch path has it
        from ..kernels.reference import block_sparse_attention_torch

        result = block_sparse_attention_torch(
            x.q, x.keys, x.values, plan.layout, row_chunk_mask=plan.row_chunk_mask, **masks
        )
        return result if stats else result.out
    if stats:
        return attention_with_stats(x.q, x.keys, x.values, plan.layout, backend=backend, **masks)
    return block_sparse_attention(x.q, x.keys, x.values, plan.layout, backend=backend, **masks)
