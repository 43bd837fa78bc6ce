"""Wan 2.1 / 2.2 (T2V, I2V, A14B with two experts, TI2V-5B): ``WanTransformer3DModel``.

Self-attention is ``blocks.N.attn1`` (video tokens only); ``attn2`` is text/image cross-attention
and stays stock, except under a method that asks for the full-attention twin branch (FreeSwim),
which routes it. The stock processor already calls ``dispatch_attention_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..context import LayerContext
from .base import ModelAdapter
from .twin import double_batch


class WanAdapter(ModelAdapter):
    family = "Wan"
    transformer_classes = ("WanTransformer3DModel",)
    attention_paths = (("blocks", "attn1"),)
    text_position = "none"
    reference_defaults = {
        # The reference scripts: 5 dense steps, blocks 0-1 of each transformer dense, the
        # "first frame" square.
        "rectified": dict(sa_drop_rate=0.75, dense_steps=5, dense_layers=(0, 1), first_frame="curve"),
        # Not published by the reference for Wan: 30 % dense warm-up, the 3D window.
        "rettention": dict(warmup_fraction=0.3, mask="window3d"),
    }
    # dit-accel's defaults, measured on the shipped video proxy (benchmarks/results/
    # quality_video*.md): Rectified SpaAttn without the reference's dense steps and layers, its
    # video correction (Re-ttention's, with its 30 % warm-up) paying for the first steps instead
    # (35.8 dB at density 0.61 against 36.0 at 0.75 with them).
    method_defaults = {
        **reference_defaults,
        "rectified": dict(sa_drop_rate=0.75, dense_steps=0, dense_layers=(), first_frame="curve"),
    }

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p_t, p_h, p_w = transformer.config.patch_size
        _, _, frames, height, width = hidden_states.shape
        return frames // p_t, height // p_h, width // p_w

    def install_twin_branch(self, installation: Any, backend: Any, method: Any) -> list[Callable[[], None]]:
        """Route every block's text cross-attention ``attn2`` and double the batch on the calls the
        method wants (``method.wants_dual``); T2V only (I2V cross-attention also attends image tokens)."""
        transformer = installation.transformer
        method.patch[installation.name] = self.patch_hw(transformer)
        if not method.dual_path():
            return []
        cross = [(f"blocks.{i}.attn2", block.attn2) for i, block in enumerate(transformer.blocks)]
        if any(getattr(module, "add_k_proj", None) is not None for _, module in cross):
            raise NotImplementedError(
                "FreeSwim's cross-attention override is implemented for Wan text-to-video; this model's "
                "cross-attention also attends image tokens (I2V). Use cross_attn_override=False."
            )
        undo: list[Callable[[], None]] = []
        for index, (path, module) in enumerate(cross):
            undo.append(self.route(module, backend))
            installation.hook_layer(module, LayerContext(path, index, "cross"))
        method.cross_layers[installation.name] = len(cross)
        undo.append(double_batch(transformer, lambda call: method.wants_dual(call)))
        return undo
