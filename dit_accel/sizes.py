"""Frame sizes a model accepts: multiples of its pixels per token (VAE stride x patch size)."""

from __future__ import annotations


def nearest_valid_size(size: int, multiple: int = 16) -> int:
    """The multiple of ``multiple`` nearest to ``size`` (1080 -> 1088), at least ``multiple``."""
    return max(multiple, round(size / multiple) * multiple)


def check_frame_size(name: str, size: int, multiple: int) -> None:
    """Raise a ValueError naming the nearest valid size when ``size`` is not a multiple."""
    if size % multiple:
        raise ValueError(
            f"{name}={size} is not a multiple of {multiple} (this model's pixels per token); the nearest "
            f"valid {name} is {nearest_valid_size(size, multiple)}"
        )
