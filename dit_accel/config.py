"""Configuration: the fields every method shares, validation helpers, and the method registry.

A config says *what* to compute; it holds no tensors and no state, so it can be logged, compared
and reused across pipelines. Validation happens at construction, with errors that name the field
and the allowed values. Each method's own config class lives next to its code in ``methods/`` and
registers itself (config type -> method class) with ``register_method``: adding a method is one
module.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, ClassVar

KERNEL_BACKENDS = ("auto", "triton", "torch")
CORRECTION_NAMES = ("default", "rectify", "rettention")
PRESETS = ("default", "reference")


def positive_int(value: object, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name``; bools are refused although they are ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def as_int_tuple(value: Any, name: str, length: int | None = None) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ints; lists from JSON too) as a tuple of ints."""
    if isinstance(value, int):
        value = (value,)
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from error
    if any(isinstance(v, bool) or int(v) != v for v in value):
        raise TypeError(f"{name} must contain integers, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    return items


class CorrectionConfig:
    """Base of the correction configs (``methods/corrections.py``); ``kind`` names the correction."""

    kind: ClassVar[str] = ""


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Fields shared by every method.

    Attributes:
        block_size: tokens per attention block (query and key tiles). Default 128, the size the
            GPU kernels are tuned for; tests use smaller blocks on toy models.
        dense_steps: the number of first denoising steps that keep dense attention. None (the
            default) takes the model family's default for the method (0 for most).
        dense_layers: indices of self-attention layers that always stay dense, counted in the
            order the adapter lists them (transformer blocks first, then single-stream blocks).
            None takes the family's default for the method (none for most).
        kernel_backend: "auto" (Triton on CUDA when available, PyTorch otherwise), "triton" or
            "torch".
        correction: what corrects the sparse output: "default" (the method's measured best,
            per grid: for ``rectified``, ``window3d``, ``vmoba``'s fast mode and ``auto``,
            Re-ttention's residual on video grids and per-row rectification on one-frame grids;
            Re-ttention's for ``rettention``, none for ``topk`` and ``dense``; under
            ``preset="reference"`` each method's own on every grid), None (no correction), "rectify",
            "rettention", or a ``RectifyCorrection`` / ``RettentionCorrection`` with its options.
        preset: "default" (dit-accel's defaults, each chosen with ``benchmarks/quality.py`` on
            the trained proxies: ``benchmarks/results/quality_*.md``) or "reference" (every
            field left at its default takes the value of the method's reference code, and the
            family tables take the reference scripts' values: the paper's exact behaviour, which
            the parity tests check).
    """

    method: ClassVar[str] = ""
    #: The reference code's value of each field whose dit-accel default differs (per method).
    REFERENCE: ClassVar[dict[str, Any]] = {}
    #: Whether ``dense_steps=None`` stays None (the method derives it from its budget: ``auto``).
    BUDGETED_STEPS: ClassVar[bool] = False

    block_size: int = 128
    dense_steps: int | None = None
    dense_layers: tuple[int, ...] | None = None
    kernel_backend: str = "auto"
    correction: str | CorrectionConfig | None = "default"
    preset: str = "default"

    def __new__(cls, *args: Any, **kwargs: Any) -> SparseAttentionConfig:
        # The fields given explicitly: the reference preset fills only the others.
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))
        return self

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.preset == "reference":
            for name, value in self.REFERENCE.items():
                if name not in self._given:
                    object.__setattr__(self, name, value)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        steps = self.dense_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"dense_steps must be a non-negative integer, got {steps!r}")
        if self.dense_layers is not None:
            layers = as_int_tuple(self.dense_layers, "dense_layers")
            if any(i < 0 for i in layers):
                raise ValueError(
                    f"dense_layers must be non-negative layer indices, got {self.dense_layers!r}"
                )
            object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")
        c = self.correction
        if not (
            c is None or isinstance(c, CorrectionConfig) or (isinstance(c, str) and c in CORRECTION_NAMES)
        ):
            raise ValueError(
                f"correction must be None, one of {CORRECTION_NAMES} or a correction config, got {c!r}"
            )

    def replace(self, **overrides: Any) -> SparseAttentionConfig:
        """A copy with some fields changed; unknown field names raise a TypeError naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option(s) {unknown}; valid options: {sorted(valid)}"
            )
        if overrides.get("preset", self.preset) != self.preset:
            # A new preset: rebuild from the fields given explicitly, the preset fills the rest.
            given = {name: getattr(self, name) for name in self._given if name != "preset"}
            return type(self)(**{**given, **overrides})
        copy = dataclasses.replace(self, **overrides)
        # dataclasses.replace passes every field: the explicit ones are the original's and the overrides.
        object.__setattr__(copy, "_given", self._given | frozenset(overrides))
        return copy


_BY_NAME: dict[str, type[SparseAttentionConfig]] = {}
_METHODS: dict[type[SparseAttentionConfig], type] = {}


def register_method(config_cls: type[SparseAttentionConfig], method_cls: type) -> None:
    """Make a method reachable by its name (``enable_sparse_attention("name")``) and its config type."""
    _BY_NAME[config_cls.method] = config_cls
    _METHODS[config_cls] = method_cls


def method_class(config: SparseAttentionConfig) -> type:
    """The method class that serves ``config`` (by config type). ``import dit_accel`` imports
    every method module, which registers it."""
    for cls in type(config).__mro__:
        if cls in _METHODS:
            return _METHODS[cls]
    raise ValueError(f"no method implementation for config {type(config).__name__}")


def available_methods() -> list[str]:
    return sorted(_BY_NAME)


def resolve_config(method: str | SparseAttentionConfig, **overrides: Any) -> SparseAttentionConfig:
    """Turn ``"name"`` + keyword overrides, or a config object (+ overrides), into a config."""
    if isinstance(method, SparseAttentionConfig):
        return method.replace(**overrides) if overrides else method
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name or a config object, got {type(method).__name__}")
    if method not in _BY_NAME:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    config_cls = _BY_NAME[method]
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no option(s) {unknown}; valid options: {sorted(valid)}")
    return config_cls(**overrides)


__all__ = [
    "CorrectionConfig",
    "SparseAttentionConfig",
    "available_methods",
    "method_class",
    "positive_int",
    "register_method",
    "resolve_config",
]
