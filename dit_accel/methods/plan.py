"""What flows between the driver, a planner and a corrector: the video/text split of a joint
call, the call's operands in slot order, the plan the kernel computes, a corrector's result, and
the kernel call itself.

HunyuanVideo appends text tokens after the video tokens, CogVideoX puts them first; Wan and PixArt
have no text in self-attention. Methods sparsify video queries only: text queries stay dense and
text keys are always attended, so the split is the driver's, once for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..context import CallContext
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


@dataclass(frozen=True)
class JointSplit:
    video: slice
    text: slice
    num_text: int

    def join(self, video: torch.Tensor, text: torch.Tensor | None, first_text: bool) -> torch.Tensor:
        if text is None:
            return video
        return torch.cat([text, video] if first_text else [video, text], dim=1)


def split_joint(seq_len: int, call: CallContext) -> JointSplit:
    """Where video and text tokens sit in a sequence of ``seq_len`` tokens; raises on a mismatch."""
    n_video = call.num_video_tokens
    n_text = seq_len - n_video
    if n_text < 0 or (n_text > 0 and call.text_position == "none"):
        raise ValueError(
            f"attention sequence has {seq_len} tokens but the token grid {call.grid} has {n_video}; "
            "the adapter's grid does not match this model's attention input"
        )
    if call.text_position == "first":
        return JointSplit(slice(n_text, seq_len), slice(0, n_text), n_text)
    return JointSplit(slice(0, n_video), slice(n_video, seq_len), n_text)


def keys_with_text(
    video_k: torch.Tensor,
    video_v: torch.Tensor,
    text_k: torch.Tensor,
    text_v: torch.Tensor,
    video_ok: torch.Tensor | None,
    text_ok: torch.Tensor | None,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and values ``[video padded to whole blocks, text]`` and their validity (B, L).

    Padding the video keys makes the text keys start on a block boundary, so a key block is either
    video or text and a layout can list "every text block"; the padding slots are invalid keys.
    Without text nothing is padded (the last key block may be partial, as the queries' is).
    ``video_ok`` / ``text_ok``: bool (B, N) or None (all valid). ``text_k`` may have no tokens.
    """
    batch, n_video = video_k.shape[:2]
    padded = -(-n_video // block_size) * block_size if text_k.shape[1] else n_video

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = padded - n_video
        return torch.cat([x, x.new_zeros(batch, extra, *x.shape[2:])], dim=1) if extra else x

    valid = torch.zeros(batch, padded, dtype=torch.bool, device=video_k.device)
    valid[:, :n_video] = True if video_ok is None else video_ok
    text_valid = (
        text_ok
        if text_ok is not None
        else torch.ones(batch, text_k.shape[1], dtype=torch.bool, device=video_k.device)
    )
    return (
        torch.cat([pad(video_k), text_k], dim=1),
        torch.cat([pad(video_v), text_v], dim=1),
        torch.cat([valid, text_valid], dim=1),
    )
