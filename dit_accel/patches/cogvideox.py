"""CogVideoX 1.0 and 1.5: ``CogVideoXTransformer3DModel``.

``transformer_blocks.N.attn1`` is joint attention over [text (first), video]. The stock processor
calls SDPA directly, so a routed processor with the same arithmetic is installed instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .backend import IntegrationError
from .base import ModelAdapter
from .processors import CogVideoXRoutedProcessor

_STOCK_PROCESSORS = ("CogVideoXAttnProcessor2_0",)


class CogVideoXAdapter(ModelAdapter):
    family = "CogVideoX"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    text_position = "first"

    def routed_layers(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return [
            (f"transformer_blocks.{i}.attn1", b.attn1) for i, b in enumerate(transformer.transformer_blocks)
        ]

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t or 1
        _, frames, _, height, width = hidden_states.shape
        return frames // p_t, height // p, width // p

    def route(self, module: torch.nn.Module, backend: Any) -> Callable[[], None]:
        original = module.processor
        if type(original).__name__ not in _STOCK_PROCESSORS:
            raise IntegrationError(
                f"CogVideoX attention uses {type(original).__name__}; "
                f"dit-accel routes only {_STOCK_PROCESSORS} "
                "(unfuse QKV projections or reset the default processor first)"
            )
        module.processor = CogVideoXRoutedProcessor(backend)
        return lambda: setattr(module, "processor", original)
