"""The method protocol: what every attention algorithm provides, and the state it may keep.

A method turns (q, k, v) plus an ``AttentionContext`` into an attention output and the density
it actually computed. It never sees diffusers types: everything model-specific arrives through the
context. Warm-up rules shared by all methods (dense steps, dense layers) live here once.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..config import SparseAttentionConfig
from ..context import AttentionContext
from ..kernels import dense_attention


class StateStore:
    """Per-(layer, CFG branch) tensors a method keeps across denoising steps.

    Freed on a new generation and when sparse attention is disabled; its size is reported.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def get(self, layer: str, branch: str) -> dict[str, torch.Tensor]:
        return self._entries.setdefault((layer, branch), {})

    def clear(self) -> None:
        self._entries.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self._entries.values() for t in entry.values())

    def __len__(self) -> int:
        return len(self._entries)


class SparseMethod:
    """Base class: applies the shared warm-up rules, then defers to ``attend``."""

    config_cls: ClassVar[type[SparseAttentionConfig]] = SparseAttentionConfig

    def __init__(self, config: SparseAttentionConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.state = StateStore()

    @property
    def name(self) -> str:
        return self.config.method

    def keeps_dense(self, context: AttentionContext) -> bool:
        """True where the config asks for exact attention (warm-up steps, protected layers)."""
        return (
            context.call.step_index < self.config.dense_steps
            or context.layer.index in self.config.dense_layers
        )

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float | None,
        key_padding_mask: torch.Tensor | None,
        context: AttentionContext,
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Attention output (B, S, H, D) and the fraction of query x key blocks computed."""
        if self.keeps_dense(context):
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        return self.attend(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float | None,
        key_padding_mask: torch.Tensor | None,
        context: AttentionContext,
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything tied to one generation."""
        self.state.clear()
