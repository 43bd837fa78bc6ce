"""Attention algorithms, model-agnostic; one module per method, one registry line each."""

from __future__ import annotations

from ..config import SparseAttentionConfig
from .base import SparseMethod, StateStore
from .dense import Dense
from .freeswim import FreeSwim
from .rectified import RectifiedSpaAttn
from .rettention import Rettention
from .topk import TopK
from .vmoba import VMoBA
from .window3d import Window3D

_METHODS: dict[str, type[SparseMethod]] = {
    "dense": Dense,
    "window3d": Window3D,
    "topk": TopK,
    "vmoba": VMoBA,
    "rettention": Rettention,
    "rectified": RectifiedSpaAttn,
    "freeswim": FreeSwim,
}


def build_method(config: SparseAttentionConfig) -> SparseMethod:
    """The method object that serves ``config``."""
    try:
        return _METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"no method implementation for config {type(config).__name__}") from None


__all__ = ["SparseMethod", "StateStore", "build_method"]
