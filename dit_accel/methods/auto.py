"""``auto``: the policy behind ``enable_sparse_attention()``: one budget knob, every other choice
made from measurements.

Within a budget ``density`` (the target mean fraction of dense attention compute over steps,
dense steps counting 1), ``auto`` runs the regime that measured best for the grid:

- **video grids** (more than one latent frame; the Wan proxy): pooled top-k over ``topk``'s
  tiles, corrected with Re-ttention's residual: every ``refresh_every`` steps one dense step
  caches, per row, the kept share of the softmax mass and the residual, which the sparse steps
  in between add back. The refreshes are paid from the budget.
- **one-frame grids** (images; the PixArt proxy): tokens along Rectified SpaAttn's 3D curve
  (compact blocks), for every query block the blocks it touches plus the best-scoring ones so
  that exactly the budget's share is computed, and per-row rectification (the dropped blocks'
  pooled contribution, renormalised with the kernel's exact row sum).

A ``warmup_share`` of the budget can buy dense warm-up steps instead; the measured best share is
0. Each piece is the best measured on the trained proxies (``benchmarks/results/quality_*.md``:
the "auto" rows against every method and both top-k baselines). Below ``min_tokens`` no sparse
kernel beats the backend's dense attention, so every call stays exactly dense and the report
says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, register_method
from ..context import AttentionContext
from ..kernels import dense_attention
from .corrections import RectifyCorrection, RettentionCorrection
from .corrections import Rettention as RettentionCorrector
from .curve_order import block_neighbours, curve_order
from .order import TokenOrder, checked_tile, fit_tile
from .topk import TopK, top_k_mask

#: The budget when none is given: the knee of ``auto``'s measured PSNR-vs-density curve on the
#: image proxy (``benchmarks/results/quality_image_auto.md``): below 0.35 each 0.1 of density buys
#: about 3.4 dB, above it 2.4 dB.
BALANCED_DENSITY = 0.35
#: Share of the budget spent on dense warm-up steps. Measured on the image proxy at equal density
#: (``benchmarks/results/quality_image_auto.md``): 0 beats 0.25 and 0.75 at budget 0.25 and ties
#: 0.25 at 0.5.
WARMUP_SHARE = 0.0
#: Sparse steps never go below this density (fewer kept blocks than this lose the picture).
MIN_SPARSE_DENSITY = 0.05
#: Sequence length below which the block-sparse path loses to dense attention, per backend:
#: the Triton kernel against cuDNN SDPA on an H100 (``benchmarks/results/h100.md``: 0.79x at
#: 15,600 tokens, 1.71x at 31,200; 20,000 is interpolated) and the PyTorch path against SDPA's CPU
#: kernel (``benchmarks/results/cpu.md``: 0.47 of dense time at 8,192 tokens and density 0.25, the
#: shortest length measured there).
BREAK_EVEN_TOKENS = {"cuda": 20_000, "cpu": 8_192}
#: The correction of video grids: Re-ttention's residual, its refreshes paid from the budget and
#: its warm-up the budget's (``warmup_share``). Measured on the video proxy
#: (``benchmarks/results/auto_video_exploration.md``, then the "auto" rows of ``quality_video.md``).
VIDEO_CORRECTION = RettentionCorrection(warmup_fraction=0.0)


@dataclass(frozen=True)
class AutoConfig(SparseAttentionConfig):
    """The ``auto`` policy.

    Attributes:
        density: target mean fraction of dense attention compute over the denoising steps
            (about 1 / attention speed-up), in (0, 1]. None = ``BALANCED_DENSITY``.
        min_tokens: sequences with fewer video tokens stay exactly dense. None = the measured
            break-even of the backend in use (``BREAK_EVEN_TOKENS``: 20,000 on CUDA with the
            Triton kernel, 8,192 on the CPU's PyTorch path). 0 = always sparse.
        warmup_share: share of the budget spent on dense warm-up steps (the rest on top-k
            blocks on the other steps). None = ``WARMUP_SHARE``.
        dense_steps: None (default) = from the budget (``warmup_share``); a number fixes them.
        dense_layers: layers that always stay dense (none by default; not counted in the budget).
        correction: "default" = per grid, the measured best: Re-ttention's residual on video
            grids (``VIDEO_CORRECTION``, refreshes paid from the budget), per-row
            rectification (``RectifyCorrection()``) on one-frame grids. An explicit choice
            applies to every grid.
    """

    method: ClassVar[str] = "auto"
    BUDGETED_STEPS: ClassVar[bool] = True

    density: float | None = None
    min_tokens: int | None = None
    warmup_share: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.density
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1):
            raise ValueError(f"density must be None or lie in (0, 1], got {d!r}")
        m = self.min_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ValueError(f"min_tokens must be None or a non-negative integer, got {m!r}")
        w = self.warmup_share
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < 1):
            raise ValueError(f"warmup_share must be None or lie in [0, 1), got {w!r}")
        checked_tile(None, self.block_size)  # video grids use topk's tiles: the size needs a default tile


def schedule(
    density: float,
    steps: int | None,
    warmup_share: float,
    dense_steps: int | None,
    refresh_every: int = 0,
) -> tuple[int, int, float]:
    """(dense warm-up steps, steps between refreshes, density of the sparse steps) that spend
    ``density`` over ``steps``.

    Warm-up takes ``warmup_share`` of the budget (whole steps, rounded down) unless the caller
    fixed ``dense_steps``. A corrector that needs dense refresh steps asks for one every
    ``refresh_every`` steps at most: the first step after the warm-up and every interval after
    it refresh, at the shortest interval the budget can pay with sparse steps at
    ``MIN_SPARSE_DENSITY`` (measured on the video proxy, ``benchmarks/results/
    auto_video_exploration.md``: refreshes every 5 steps with 2 of 32 blocks beat every 10 steps
    with 5 of 32 by about 3 dB at density 0.25). The sparse steps get
    the rest, at least ``MIN_SPARSE_DENSITY``. Without a step count (a pipeline that does not say)
    there is no warm-up unless fixed and the refreshes' share is 1 / ``refresh_every``.
    """
    if not steps:
        share = 1 / refresh_every if refresh_every else 0.0
        sparse = (density - share) / (1 - share) if share < 1 else 1.0
        return (dense_steps or 0), refresh_every, min(1.0, max(MIN_SPARSE_DENSITY, sparse))
    warm = dense_steps if dense_steps is not None else math.floor(warmup_share * density * steps + 1e-9)
    warm = min(warm, steps)
    every, refreshes = 0, 0
    if refresh_every and warm < steps:
        for every in range(refresh_every, steps - warm + 1):
            refreshes = -(-(steps - warm) // every)
            cost = warm + refreshes + MIN_SPARSE_DENSITY * (steps - warm - refreshes)
            if cost <= density * steps + 1e-9:
                break
        else:
            every, refreshes = steps - warm, 1  # one refresh: the residual needs a first one
    if warm + refreshes >= steps:
        return warm, every, 1.0
    sparse = (density * steps - warm - refreshes) / (steps - warm - refreshes)
    return warm, every, min(1.0, max(MIN_SPARSE_DENSITY, sparse))


def _near(grid: tuple[int, int, int], block_size: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """The touching-blocks mask of a grid and its mean count per row (read once per grid)."""
    near = block_neighbours(grid, block_size, device)
    return near, float(near.sum(-1, dtype=torch.float32).mean())


class Auto(TopK):
    """Two measured regimes, chosen per grid (``correction="default"``):

    - **one-frame grids** (images; measured on the PixArt proxy): curve blocks, the budget-
      calibrated floor plus touching blocks, per-row rectification;
    - **video grids** (more than one latent frame; measured on the Wan proxy): ``topk``'s tiles
      and plain pooled top-k, corrected with Re-ttention's residual from dense refresh steps,
      the refreshes paid from the budget. There, curve blocks lost 1.4-2.5 dB to tiles and
      per-row rectification lost up to 0.9 dB, while the residual gained more than 6 dB.

    An explicit ``correction=`` applies to both."""

    config_cls: ClassVar[type[AutoConfig]] = AutoConfig

    def own_correction(self) -> RectifyCorrection:
        return RectifyCorrection()

    def own_video_correction(self) -> RettentionCorrection:
        return VIDEO_CORRECTION

    @staticmethod
    def is_video(context: AttentionContext) -> bool:
        return context.call.grid[0] > 1

    def budget(self) -> float:
        return BALANCED_DENSITY if self.config.density is None else self.config.density

    def min_tokens(self, device: torch.device) -> int:
        if self.config.min_tokens is not None:
            return self.config.min_tokens
        return BREAK_EVEN_TOKENS["cuda" if device.type == "cuda" else "cpu"]

    def refresh_every(self, context: AttentionContext) -> int:
        """The corrector's shortest interval between dense refreshes (0 = it needs none)."""
        corrector = self.corrector_for(context)
        return corrector.config.refresh_every if isinstance(corrector, RettentionCorrector) else 0

    def _schedule(self, context: AttentionContext) -> tuple[int, int, float]:
        share = WARMUP_SHARE if self.config.warmup_share is None else self.config.warmup_share
        return schedule(
            self.budget(),
            context.call.num_inference_steps,
            share,
            self.config.dense_steps,
            self.refresh_every(context),
        )

    def target_density(self, context: AttentionContext) -> float:
        return self._schedule(context)[2]

    def tile(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        return fit_tile(checked_tile(None, self.config.block_size), grid)

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        if self.is_video(context):
            return super().order(context, device, num_text)
        grid = context.call.grid
        return self.cache.get(("curve", grid, device), lambda: curve_order(grid, device))

    def video_blocks(self, scores: torch.Tensor, context) -> torch.Tensor:
        """The kept key blocks. Video grids: plain top-k (``topk``'s). One-frame grids: for
        every query block its ``m`` best-scoring blocks plus the blocks it touches, with one ``m``
        per call chosen so that the mean kept share is the budget (within a block; below the
        neighbourhood's own share, the neighbours first and exactly the budget per row). Rows
        whose neighbours already score high keep fewer blocks and the others more, as Rectified
        SpaAttn's floor-plus-neighbours selection does. Measured on the image proxy at equal
        density, with per-row rectification: this beats putting the neighbours first in a fixed
        per-row budget (``quality_image.md``), and curve blocks beat ``topk``'s tiles by 0.7-1.4 dB.
        No host synchronisation per call: ``m`` is a tensor; the neighbourhood's size is read once
        per grid."""
        if self.is_video(context):
            return super().video_blocks(scores, context)
        grid, n, bs = context.call.grid, scores.shape[-1], self.config.block_size
        near, near_blocks = self.cache.get(
            ("curve_neighbours", grid, bs, scores.device), lambda: _near(grid, bs, scores.device)
        )
        density = self.target_density(context)
        k = self.blocks_kept(n, density)
        if near_blocks > density * n:
            # Budgets below the neighbourhood's own share: the neighbours first, exactly k per row.
            return top_k_mask(scores.masked_fill(near, math.inf), k)
        rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
        m = torch.tensor(float(k), device=scores.device)
        for _ in range(3):  # the overlap with the neighbours shrinks as m does: a few fixed-point steps
            kept = (rank < m) | near
            m = (m - (kept.sum(-1, dtype=torch.float32).mean() - density * n).round()).clamp(0, n)
        return (rank < m) | near

    def phase(self, context: AttentionContext) -> tuple[str, int]:
        """Warm-up steps and protected layers dense; after the warm-up, a refresh at the
        schedule's interval when the corrector needs them (its own warm-up is the budget's)."""
        step = context.call.step_index
        warm, every, _ = self._schedule(context)
        if step < warm or context.layer.index in (self.config.dense_layers or ()):
            return "dense", 0
        if every:
            since = (step - warm) % every
            return ("refresh", 0) if since == 0 else ("sparse", since)
        return "sparse", 0

    def attend(self, q, k, v, *, scale, key_padding_mask, context):
        n, limit = context.call.num_video_tokens, self.min_tokens(q.device)
        if n < limit:  # exactly the model's attention
            self.dense_reasons.setdefault(
                context.layer.name,
                f"{n} video tokens < min_tokens={limit} (below it the block-sparse {q.device.type} "
                "path loses to dense attention)",
            )
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        return super().attend(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)


register_method(AutoConfig, Auto)
