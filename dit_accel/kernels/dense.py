"""Dense attention on the (batch, seq, heads, head_dim) layout, through PyTorch's SDPA.

The exact path used wherever a method keeps attention dense (warm-up steps, protected layers,
text queries), so that "dense" inside dit-accel is the same arithmetic as stock diffusers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA on (batch, seq, heads, head_dim) tensors; keys are masked where the mask is False."""
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)
