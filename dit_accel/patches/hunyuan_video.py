"""HunyuanVideo (T2V and I2V): ``HunyuanVideoTransformer3DModel``.

Dual-stream blocks (``transformer_blocks.N.attn``) and single-stream blocks
(``single_transformer_blocks.N.attn``) run joint attention over [video, text] with padded text
keys masked; both are routed. The token refiner's attention stays stock. HunyuanVideo 1.5 is a
different class with a different token layout and is not covered by this adapter.
"""

from __future__ import annotations

import torch

from .base import ModelAdapter


class HunyuanVideoAdapter(ModelAdapter):
    family = "HunyuanVideo"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    attention_paths = (("transformer_blocks", "attn"), ("single_transformer_blocks", "attn"))
    text_position = "last"

    reference_defaults = {
        # The reference scripts: a higher drop rate, no warm-up.
        "rectified": dict(sa_drop_rate=0.8, dense_steps=0, dense_layers=(), first_frame="none"),
        # Not published by the reference for HunyuanVideo: 30 % dense warm-up, the 3D window.
        "rettention": dict(warmup_fraction=0.3, mask="window3d"),
    }
    # dit-accel's defaults: the reference scripts' values; on the trained proxies only the warm-up
    # was varied (benchmarks/results/quality_*.md), and no variation beat them at equal density.
    method_defaults = reference_defaults

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, frames, height, width = hidden_states.shape
        return frames // p_t, height // p, width // p
