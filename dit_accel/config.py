"""Configuration: one frozen dataclass per method, sharing the fields every method understands.

A config says *what* to compute; it holds no tensors and no state, so it can be logged, compared
and reused across pipelines. Validation happens at construction, with errors that name the field
and the allowed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

KERNEL_BACKENDS = ("auto", "triton", "torch")


def _as_int_tuple(value: Any, name: str, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,)
    try:
        items = tuple(int(v) for v in value)
    except TypeError as error:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from error
    if any(int(v) != v for v in value):
        raise TypeError(f"{name} must contain integers, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    return items


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Fields shared by every method.

    Attributes:
        block_size: tokens per attention block (query and key tiles). Default 128, the size the
            GPU kernels are tuned for; tests use smaller blocks on toy models.
        dense_steps: the number of first denoising steps that keep dense attention (default 0).
        dense_layers: indices of self-attention layers that always stay dense, counted in the
            order the adapter lists them (transformer blocks first, then single-stream blocks).
        kernel_backend: "auto" (Triton on CUDA when available, PyTorch otherwise), "triton" or
            "torch".
    """

    method: ClassVar[str] = ""

    block_size: int = 128
    dense_steps: int = 0
    dense_layers: tuple[int, ...] = ()
    kernel_backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not isinstance(self.dense_steps, int) or self.dense_steps < 0:
            raise ValueError(f"dense_steps must be a non-negative integer, got {self.dense_steps!r}")
        layers = _as_int_tuple(self.dense_layers, "dense_layers")
        if any(i < 0 for i in layers):
            raise ValueError(f"dense_layers must be non-negative layer indices, got {self.dense_layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")

    def replace(self, **overrides: Any) -> SparseAttentionConfig:
        """A copy with some fields changed; unknown field names raise a TypeError naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option(s) {unknown}; valid options: {sorted(valid)}"
            )
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class DenseConfig(SparseAttentionConfig):
    """Exact dense attention through dit-accel's whole path: the control for every comparison.

    Attributes:
        use_block_kernel: run dense attention through the block-sparse kernel with a full layout
            instead of PyTorch's scaled_dot_product_attention (checks the kernel path; slower).
    """

    method: ClassVar[str] = "dense"

    use_block_kernel: bool = False


@dataclass(frozen=True)
class Window3DConfig(SparseAttentionConfig):
    """A static 3D local window over the video token grid (Sliding-Tile-Attention, training-free).

    Video tokens are reordered into ``tile``-shaped groups of ``block_size`` tokens, so one block
    is one compact spatio-temporal tile. A query tile attends the key tiles of a window centred on
    it and shifted to stay inside the grid at borders, so every query tile sees the same number of
    key tiles. The window is tile-granular: each extent is rounded up to whole tiles.

    Attributes:
        window: (frames, height, width) extent of the window in latent tokens (after patchify).
            Axes longer than the grid are clamped, so a window at least as large as the grid is
            dense attention.
        tile: (frames, height, width) of one tile in tokens; the product must equal
            ``block_size``. Default: chosen from ``block_size`` (128 -> (2, 8, 8), 64 -> (1, 8, 8)).
    """

    method: ClassVar[str] = "window3d"

    window: tuple[int, int, int] = (9, 24, 24)
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        window = _as_int_tuple(self.window, "window", 3)
        if any(w < 1 for w in window):
            raise ValueError(f"window extents must be >= 1 token, got {self.window!r}")
        object.__setattr__(self, "window", window)
        tile = default_tile(self.block_size) if self.tile is None else _as_int_tuple(self.tile, "tile", 3)
        if any(t < 1 for t in tile) or tile[0] * tile[1] * tile[2] != self.block_size:
            raise ValueError(
                f"tile {tile} must have positive sides whose product equals block_size={self.block_size}"
            )
        object.__setattr__(self, "tile", tile)


_DEFAULT_TILES = {
    16: (1, 4, 4),
    32: (2, 4, 4),
    64: (1, 8, 8),
    128: (2, 8, 8),
    256: (4, 8, 8),
    512: (2, 16, 16),
}


def default_tile(block_size: int) -> tuple[int, int, int]:
    """A compact (frames, height, width) tile of ``block_size`` tokens, square in space."""
    if block_size not in _DEFAULT_TILES:
        raise ValueError(
            f"no default tile for block_size={block_size} (have {sorted(_DEFAULT_TILES)}); "
            "pass tile=(frames, height, width) whose product is block_size"
        )
    return _DEFAULT_TILES[block_size]


_REGISTRY: dict[str, type[SparseAttentionConfig]] = {}


def register_config(config_cls: type[SparseAttentionConfig]) -> type[SparseAttentionConfig]:
    """Make a config class reachable by its method name (``enable_sparse_attention("name")``)."""
    _REGISTRY[config_cls.method] = config_cls
    return config_cls


for _cls in (DenseConfig, Window3DConfig):
    register_config(_cls)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def resolve_config(method: str | SparseAttentionConfig, **overrides: Any) -> SparseAttentionConfig:
    """Turn ``"name"`` + keyword overrides, or a config object (+ overrides), into a config."""
    if isinstance(method, SparseAttentionConfig):
        return method.replace(**overrides) if overrides else method
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name or a config object, got {type(method).__name__}")
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    config_cls = _REGISTRY[method]
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no option(s) {unknown}; valid options: {sorted(valid)}")
    return config_cls(**overrides)


__all__ = [
    "DenseConfig",
    "SparseAttentionConfig",
    "Window3DConfig",
    "available_methods",
    "register_config",
    "resolve_config",
]
