"""Workflows around the attention methods: FreeSwim's draft-then-refine high-resolution rendering."""

from __future__ import annotations

from .freeswim import FreeSwimResult, freeswim_cache_bytes, freeswim_generate, nearest_valid_size

__all__ = ["FreeSwimResult", "freeswim_cache_bytes", "freeswim_generate", "nearest_valid_size"]
