"""Attention algorithms, model-agnostic: each module holds one method's config and code and
registers the pair (``config.register_method``); importing this package registers them all."""

from __future__ import annotations

from ..config import SparseAttentionConfig, method_class
from . import auto, dense, freeswim, rectified, rettention, topk, vmoba, window3d  # noqa: F401  (registration)
from .base import GridCache, SparseMethod, StateStore


def build_method(config: SparseAttentionConfig, cache: GridCache | None = None) -> SparseMethod:
    """The method object that serves ``config`` (looked up by config type)."""
    return method_class(config)(config, cache)


__all__ = ["GridCache", "SparseMethod", "StateStore", "build_method"]
