"""CogVideoX 1.0 and 1.5: ``CogVideoXTransformer3DModel``.

``transformer_blocks.N.attn1`` is joint attention over [text (first), video]. The stock processor
calls SDPA directly, so a routed processor with the same arithmetic is installed instead.
"""

from __future__ import annotations

import torch

from .base import ProcessorSwapAdapter
from .processors import CogVideoXRoutedProcessor


class CogVideoXAdapter(ProcessorSwapAdapter):
    family = "CogVideoX"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    attention_paths = (("transformer_blocks", "attn1"),)
    text_position = "first"
    stock_processors = ("CogVideoXAttnProcessor2_0",)
    routed_processor = CogVideoXRoutedProcessor

    reference_defaults = {
        # The reference scripts: 5 dense steps.
        "rectified": dict(sa_drop_rate=0.75, dense_steps=5, dense_layers=(), first_frame="none"),
        # The reference: 15 of 50 steps dense, the per-frame window (text first in the sequence).
        "rettention": dict(warmup_fraction=15 / 50, mask="frame_window"),
    }
    # dit-accel's defaults: the reference scripts' values; on the trained proxies only the warm-up
    # was varied (benchmarks/results/quality_*.md), and no variation beat them at equal density.
    method_defaults = reference_defaults

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t or 1
        _, frames, _, height, width = hidden_states.shape
        return frames // p_t, height // p, width // p
