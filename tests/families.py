"""A config as enabling it on a model of ``family`` would complete it (the adapter's defaults)."""

from __future__ import annotations

from dit_accel.patches import adapter_named


def resolved(config, family: str):
    return adapter_named(family).resolve(config)
