"""Re-ttention: an ultra-sparse static mask whose softmax statistics are reshaped from a full step.

Per step, by schedule (``phase``): warm-up steps run dense; a refresh step runs one pass over all
keys that yields the dense output, each row's share rho of the softmax mass inside the mask and the
kept-only output rho x O_S (``kernels.refresh``), and caches rho and the residual
delta = O_full - rho x O_S; a sparse step computes only the masked attention O_S and returns
(rho + drift x k) x O_S + delta, k counting the sparse steps since the refresh.

delta is kept before the attention output projection: ``to_out`` is linear, so
``to_out(rho O_S) + to_out(delta)`` is the reference's ``to_out(rho O_S) + Delta`` with its bias
cancelling exactly as it does there. State lives per (layer, CFG branch) in the method's store,
is reset with every new generation and freed on disable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, register_method
from .base import SparseMethod
from .corrections import RettentionCorrection
from .corrections import rettention_phase as phase
from .order import TokenOrder
from .plan import Operands, Plan
from .rettention_layouts import StaticSparseLayout, band_layout, frame_window_layout, window3d_layout

RETTENTION_MASKS = (None, "band", "frame_window", "window3d")


@dataclass(frozen=True)
class RettentionConfig(SparseAttentionConfig):
    """Re-ttention: a very sparse static mask, reshaped with statistics of the last full step.

    At refresh steps attention runs dense and records, per query row, the share rho of the softmax
    mass inside the static mask and the residual delta = (full output - rho x masked output). At
    sparse steps only the mask is computed and the output is rho x masked output + delta, with rho
    raised by ``drift`` after every sparse step. Schedules are in denoising steps.

    Attributes:
        sparsity: the static window as a fraction of the tokens (0.125, the measured best on the
            proxies; the paper's 0.03125 under ``preset="reference"``): a 1-D band of
            int(N x sparsity) positions ("band"), a per-frame window of int(H x W x sparsity)
            in-frame positions in every frame ("frame_window"), or a 3D window whose per-axis
            extent is sparsity ** (1/3) of the grid ("window3d", a dit-accel extension).
        mask: which static mask: "band", "frame_window", "window3d", or None for the family
            default (PixArt band, CogVideoX frame window as the reference; Wan and HunyuanVideo
            the 3D window); outside a pipeline, a band for one-frame grids, else the 3D window.
        use_ratio: scale the masked output by rho (True); False is the plain masked softmax.
        use_residual: add the cached residual delta (True).
        drift: added to rho after each sparse step (0.04).
        fix_text_rows: the reference drifts text rows too (their outputs are scaled by 1.04,
            1.08, ... between refreshes); True leaves text rows unscaled. Default False (parity).
        warmup_fraction: dense steps at the start, as a fraction of the denoising steps; None uses
            the family default (PixArt 5/20, CogVideoX 15/50 as in the reference; Wan and
            HunyuanVideo 0.3, not published by the reference).
        refresh_every: steps between refreshes after the warm-up (5): the first step after the
            warm-up is a refresh, then every ``refresh_every``-th.
        state_dtype: dtype of the cached residual: None (the activations' dtype), "float32",
            "bfloat16" or "float16". rho is always float32.
        state_device: "auto" (default) keeps the state next to the activations unless that would
            leave less than a quarter of the GPU's memory free, then in host memory; "same" always
            next to the activations; "cpu" always in host memory (for CogVideoX-2B the state is
            about 4.1 GB, for a 14B Wan at 720p about 60 GB in bf16).
        correction: "default" = Re-ttention's correction with the fields above (they are
            ``RettentionCorrection``'s); another choice (e.g. "rectify" or None) replaces it on
            the same static mask.
    """

    method: ClassVar[str] = "rettention"
    #: The paper's ultra-sparse 3.125 % mask (``preset="reference"``).
    REFERENCE: ClassVar[dict] = {"sparsity": 0.03125}

    sparsity: float = 0.125
    mask: str | None = None
    use_ratio: bool = True
    use_residual: bool = True
    drift: float = 0.04
    fix_text_rows: bool = False
    warmup_fraction: float | None = None
    refresh_every: int = 5
    state_dtype: str | None = None
    state_device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.sparsity, bool)
            or not isinstance(self.sparsity, int | float)
            or not 0.0 < self.sparsity <= 1.0
        ):
            raise ValueError(f"sparsity must lie in (0, 1], got {self.sparsity!r}")
        if self.mask not in RETTENTION_MASKS:
            raise ValueError(f"mask must be one of {RETTENTION_MASKS}, got {self.mask!r}")
        self.own_correction()  # validates the correction's fields

    def own_correction(self) -> RettentionCorrection:
        """Re-ttention's correction with this config's fields."""
        return RettentionCorrection(**{f.name: getattr(self, f.name) for f in fields(RettentionCorrection)})


class Rettention(SparseMethod):
    config_cls: ClassVar[type[RettentionConfig]] = RettentionConfig

    def own_correction(self) -> RettentionCorrection:
        return self.config.own_correction()

    def static_layout(
        self, grid: tuple[int, int, int], num_text: int, device: torch.device
    ) -> StaticSparseLayout:
        """The static mask (``mask``), built once per grid."""
        cfg = self.config
        mask = cfg.mask or ("band" if grid[0] == 1 else "window3d")

        def build() -> StaticSparseLayout:
            frames, height, width = grid
            # 64-key tiles halve the visited area of a thin band or window against 128 (spec 4a).
            blocks = dict(block_q=cfg.block_size, block_k=min(64, cfg.block_size), device=device)
            if mask == "band":
                return band_layout(frames * height * width, cfg.sparsity, num_text, **blocks)
            if mask == "frame_window":
                return frame_window_layout(grid, cfg.sparsity, num_text, **blocks)
            side = cfg.sparsity ** (1 / 3)
            window = tuple(max(1, math.ceil(g * side)) for g in grid)
            return window3d_layout(grid, window, None, cfg.block_size, num_text, device)

        return self.cache.get(("rettention", mask, grid, num_text, device), build)

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        return self.static_layout(context.call.grid, num_text, device).order

    def key_block(self, context) -> int:
        cfg = self.config
        return (
            cfg.block_size
            if (cfg.mask or ("band" if context.call.grid[0] == 1 else "window3d")) == "window3d"
            else min(64, cfg.block_size)
        )

    def plan(self, x: Operands, context) -> Plan:
        static = self.static_layout(context.call.grid, x.num_text, x.q.device)
        return Plan(static.layout, element_mask=static.element_mask, kv_partial=static.kv_partial)


register_method(RettentionConfig, Rettention)

__all__ = ["Rettention", "RettentionConfig", "phase"]
