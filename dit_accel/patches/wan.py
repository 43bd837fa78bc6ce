"""Wan 2.1 / 2.2 (T2V, I2V, A14B with two experts, TI2V-5B): ``WanTransformer3DModel``.

Self-attention is ``blocks.N.attn1`` (video tokens only); ``attn2`` is text/image cross-attention
and stays stock. The stock processor already calls ``dispatch_attention_fn``.
"""

from __future__ import annotations

import torch

from .base import ModelAdapter


class WanAdapter(ModelAdapter):
    family = "Wan"
    transformer_classes = ("WanTransformer3DModel",)
    attention_paths = (("blocks", "attn1"),)
    text_position = "none"

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, frames, height, width = hidden_states.shape
        return frames // p_t, height // p_h, width // p_w
