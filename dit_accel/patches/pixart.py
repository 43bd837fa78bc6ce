"""PixArt-α and PixArt-Σ: ``PixArtTransformer2DModel``.

``transformer_blocks.N.attn1`` is image self-attention (``attn2`` is text cross-attention and
stays stock). Its stock ``AttnProcessor2_0`` calls SDPA directly, so a routed processor with the
same arithmetic is installed instead. Images are a one-frame grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .backend import IntegrationError
from .base import ModelAdapter
from .processors import SelfAttentionRoutedProcessor

_STOCK_PROCESSORS = ("AttnProcessor2_0",)


class PixArtAdapter(ModelAdapter):
    family = "PixArt"
    transformer_classes = ("PixArtTransformer2DModel",)
    text_position = "none"

    def routed_layers(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return [
            (f"transformer_blocks.{i}.attn1", b.attn1) for i, b in enumerate(transformer.transformer_blocks)
        ]

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p = transformer.config.patch_size
        _, _, height, width = hidden_states.shape
        return 1, height // p, width // p

    def route(self, module: torch.nn.Module, backend: Any) -> Callable[[], None]:
        original = module.processor
        if type(original).__name__ not in _STOCK_PROCESSORS:
            raise IntegrationError(
                f"PixArt self-attention uses {type(original).__name__}; "
                f"dit-accel routes only {_STOCK_PROCESSORS}"
            )
        SelfAttentionRoutedProcessor.check_module(module)
        module.processor = SelfAttentionRoutedProcessor(backend)
        return lambda: setattr(module, "processor", original)
