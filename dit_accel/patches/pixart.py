"""PixArt-α and PixArt-Σ: ``PixArtTransformer2DModel``.

``transformer_blocks.N.attn1`` is image self-attention (``attn2`` is text cross-attention and
stays stock). Its stock ``AttnProcessor2_0`` calls SDPA directly, so a routed processor with the
same arithmetic is installed instead. Images are a one-frame grid.
"""

from __future__ import annotations

import torch

from .base import ProcessorSwapAdapter
from .processors import SelfAttentionRoutedProcessor


class PixArtAdapter(ProcessorSwapAdapter):
    family = "PixArt"
    transformer_classes = ("PixArtTransformer2DModel",)
    attention_paths = (("transformer_blocks", "attn1"),)
    text_position = "none"
    stock_processors = ("AttnProcessor2_0",)
    routed_processor = SelfAttentionRoutedProcessor

    reference_defaults = {
        # Not in the reference (dit-accel extension): no warm-up.
        "rectified": dict(sa_drop_rate=0.75, dense_steps=0, dense_layers=(), first_frame="none"),
        # The reference: 5 of 20 steps dense, a 1-D band over the image tokens.
        "rettention": dict(warmup_fraction=5 / 20, mask="band"),
    }
    # dit-accel's defaults: the reference scripts' values; on the trained proxies only the warm-up
    # was varied (benchmarks/results/quality_*.md), and no variation beat them at equal density.
    method_defaults = reference_defaults

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p = transformer.config.patch_size
        _, _, height, width = hidden_states.shape
        return 1, height // p, width // p
