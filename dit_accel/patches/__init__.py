"""Model-specific integration: one adapter per transformer family, nothing algorithmic."""

from __future__ import annotations

import torch

from .base import Installation, ModelAdapter, UnsupportedModelError
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .pixart import PixArtAdapter
from .wan import WanAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (WanAdapter, HunyuanVideoAdapter, CogVideoXAdapter, PixArtAdapter)


def supported_families() -> list[str]:
    return [adapter.family for adapter in ADAPTERS]


def adapter_named(family: str) -> ModelAdapter:
    """The adapter of a family by name ("Wan", ...): benchmarks and tests complete configs with it."""
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter()
    raise UnsupportedModelError(
        f"no adapter for family {family!r}; supported: {', '.join(supported_families())}"
    )


def adapter_for(transformer: torch.nn.Module) -> ModelAdapter:
    """The adapter for this transformer, or an error naming the supported families."""
    for adapter in ADAPTERS:
        if adapter.matches(transformer):
            return adapter()
    raise UnsupportedModelError(
        f"{type(transformer).__name__} has no dit-accel adapter; supported: {', '.join(supported_families())}"
    )


__all__ = [
    "ADAPTERS",
    "Installation",
    "UnsupportedModelError",
    "adapter_for",
    "adapter_named",
    "supported_families",
]
