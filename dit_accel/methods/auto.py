"""``auto``: the policy behind ``enable_sparse_attention()``: one budget knob, every other choice
made from measurements.

Within a budget ``density`` (the target mean fraction of dense attention compute over steps,
dense steps counting 1), ``auto`` runs the regime that measured best for the grid. Every grid
takes tokens along Rectified SpaAttn's 3D curve (compact blocks) and keeps, for every query
block, the blocks it touches plus the best-scoring ones, so that the budget's share is
computed. The grids part in how the best are counted and in the correction:

- **video grids** (more than one latent frame; the Wan proxy): every row keeps its top-p blocks
  (best first until their estimated share of its mass passes ``p``), with one ``p`` for all
  layers fitted to the budget, so layers and rows with spread attention get more blocks; where
  the touching blocks alone exceed the sparse steps' share, plain pooled top-k instead. Dense
  warm-up steps for a share of the budget that grows with it (``VIDEO_WARMUP_SHARES``); the
  output corrected with Re-ttention's residual: every ``refresh_every`` steps one dense step
  caches, per row, the kept share of the softmax mass and the residual, which the sparse steps
  in between add back. Warm-up and refreshes are paid from the budget.
- **one-frame grids** (images; the PixArt proxy): every row its ``m`` best blocks, one ``m`` per
  call; below the touching blocks' own share, the touching blocks first; no warm-up; per-row
  rectification (the dropped blocks' pooled contribution, renormalised with the kernel's exact
  row sum).

A ``warmup_share`` of the budget buys dense warm-up steps; the measured best share is 0 on
one-frame grids and rises with the budget on video grids. Each piece is the best measured on the
trained proxies (``benchmarks/results/quality_*.md``: the "auto" rows against every method and
both top-k baselines). Below ``min_tokens`` no sparse kernel beats the backend's dense attention,
so every call stays exactly dense and the report says why.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, register_method
from ..context import AttentionContext
from ..kernels import dense_attention
from .calibration import CALIBRATION_STEPS, Calibration, kept_mass_curves
from .corrections import VIDEO_CORRECTION, RectifyCorrection, RettentionCorrection
from .corrections import Rettention as RettentionCorrector
from .curve_order import block_neighbours, curve_order
from .order import TokenOrder
from .topk import TopK, top_k_mask

#: The budget when none is given: the knee of ``auto``'s measured PSNR-vs-density curve on the
#: image proxy (``benchmarks/results/quality_image_auto.md``): below 0.35 each 0.1 of density buys
#: about 3.4 dB, above it 2.4 dB.
BALANCED_DENSITY = 0.35
#: Share of the budget spent on dense warm-up steps on one-frame grids. Measured on the image
#: proxy at equal density (``benchmarks/results/quality_image_auto.md``): 0 beats 0.25 and 0.75 at
#: budget 0.25 and ties 0.25 at 0.5.
WARMUP_SHARE = 0.0
#: The same on video grids, by budget: (budget, share) points, linear in between, constant
#: outside. On the video proxy (20 steps) the best share rises with the budget: 0 at 0.25, 0.25
#: at 0.35, 0.5 at 0.5 (``benchmarks/results/quality_video_auto.md``: shares 0, 0.25, 0.5 and
#: 0.75 at each budget), 0.5 at 0.61 (0.35, 0.5 and 0.61 tried) and 0.75 at 0.75 (0.5, 0.6 and
#: 0.75 tried; ``quality_video_auto_planner.md``). The first steps decide a video's trajectory:
#: without them PSNR stops rising above 0.5 while the per-step error keeps falling.
VIDEO_WARMUP_SHARES = ((0.25, 0.0), (0.35, 0.25), (0.5, 0.5), (0.61, 0.5), (0.75, 0.75))
#: Points of the top-p curves on video grids (``Auto.top_p_blocks``, ``_tail_at``).
P_GRID = 64
#: Sparse steps never go below this density (fewer kept blocks than this lose the picture).
MIN_SPARSE_DENSITY = 0.05
#: Sequence length below which the block-sparse path loses to dense attention, per backend:
#: the Triton kernel against cuDNN SDPA on an H100 (``benchmarks/results/h100.md``: 0.79x at
#: 15,600 tokens, 1.71x at 31,200; 20,000 is interpolated) and the PyTorch path against SDPA's CPU
#: kernel (``benchmarks/results/cpu.md``: 0.47 of dense time at 8,192 tokens and density 0.25, the
#: shortest length measured there).
BREAK_EVEN_TOKENS = {"cuda": 20_000, "cpu": 8_192}


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
            blocks on the other steps). None = the measured best per grid: ``WARMUP_SHARE`` (0)
            on one-frame grids, ``video_warmup_share(density)`` on video grids (0 up to 0.25,
            0.25 at 0.35, then equal to the budget up to 0.75).
        dense_steps: None (default) = from the budget (``warmup_share``); a number fixes them.
        dense_layers: layers that always stay dense (none by default; not counted in the budget).
        correction: "default" = per grid, the measured best: Re-ttention's residual on video
            grids (``VIDEO_CORRECTION``, refreshes paid from the budget), per-row
            rectification (``RectifyCorrection()``) on one-frame grids. An explicit choice
            applies to every grid.
        calibrate: False (default), True, or the path of a JSON file. With calibration the first
            denoising step of the first generation on a grid runs dense (paid from the budget)
            and measures, per layer and head, how much softmax mass each number of kept key
            blocks keeps; every later sparse step spends the same mean budget per layer and head
            where it keeps the most. With a path the measurements are saved there (one entry per
            grid and block size) and a later run that finds its grid in the file loads them and
            measures nothing. ``methods/calibration.py``.
    """

    method: ClassVar[str] = "auto"
    BUDGETED_STEPS: ClassVar[bool] = True

    density: float | None = None
    min_tokens: int | None = None
    warmup_share: float | None = None
    calibrate: bool | str | os.PathLike = False

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.calibrate
        if not isinstance(c, bool | str | os.PathLike) or (isinstance(c, str) and not c.strip()):
            raise ValueError(f"calibrate must be True, False or the path of a JSON file, got {c!r}")
        if isinstance(c, os.PathLike):
            object.__setattr__(self, "calibrate", os.fspath(c))
        d = self.density
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1):
            raise ValueError(f"density must be None or lie in (0, 1], got {d!r}")
        m = self.min_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ValueError(f"min_tokens must be None or a non-negative integer, got {m!r}")
        w = self.warmup_share
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < 1):
            raise ValueError(f"warmup_share must be None or lie in [0, 1), got {w!r}")


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


def video_warmup_share(budget: float) -> float:
    """The warm-up share of a budget on video grids: ``VIDEO_WARMUP_SHARES`` interpolated."""
    points = VIDEO_WARMUP_SHARES
    if budget <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if budget <= x1:
            return y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
    return points[-1][1]


def _near(grid: tuple[int, int, int], block_size: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """The touching-blocks mask of a grid and its mean count per row (read once per grid)."""
    near = block_neighbours(grid, block_size, device)
    return near, float(near.sum(-1, dtype=torch.float32).mean())


class Auto(TopK):
    """One planner (curve blocks, the touching blocks plus the best-scoring ones, counted to the
    budget) and two measured regimes, chosen per grid (``correction="default"``):

    - **one-frame grids** (images; measured on the PixArt proxy): one count ``m`` per call, per-row
      rectification; below the touching blocks' own share, they come first;
    - **video grids** (more than one latent frame; measured on the Wan proxy): every row's top-p
      blocks with one ``p`` over the layers (``top_p_blocks``), Re-ttention's residual from
      dense refresh steps, the refreshes paid from the budget (per-row rectification lost up to
      0.9 dB there, the residual gained more than 6 dB); below the touching blocks' own share,
      plain top-k (the touching blocks first lost 3.8-4.8 dB).

    An explicit ``correction=`` applies to both."""

    config_cls: ClassVar[type[AutoConfig]] = AutoConfig

    def __init__(self, config: AutoConfig, cache=None) -> None:
        super().__init__(config, cache)
        c = config.calibrate
        self.calibration = None if c is False else Calibration(None if c is True else c)
        #: Grids whose curves this generation measures (its first step is dense for it).
        self.measuring: set[str] = set()
        #: Each layer's latest top-p curve in this generation (``top_p_blocks``), by grid and layer.
        self.curves: dict[tuple, torch.Tensor] = {}

    def calibration_key(self, context: AttentionContext) -> str:
        return Calibration.key(context.call.grid, self.config.block_size)

    def calibrating(self, context: AttentionContext) -> bool:
        """Whether this call's generation measures its grid: it found no plan at its first step."""
        if self.calibration is None:
            return False
        key = self.calibration_key(context)
        if key not in self.measuring and context.call.step_index == 0 and not self.calibration.planned(key):
            self.measuring.add(key)
        return key in self.measuring

    def head_counts(self, context: AttentionContext, n: int, heads: int) -> torch.Tensor | None:
        """Calibrated kept blocks per head (int64 (H,)) of this call, or None (no plan)."""
        if self.calibration is None:
            return None
        key = self.calibration_key(context)
        if self.calibration.measuring(key):
            self.calibration.finish(key)  # the first sparse step after the measured ones
        if not self.calibration.planned(key):
            return None
        layer = f"{context.call.transformer_name}.{context.layer.name}"
        minimum = self.blocks_kept(n, MIN_SPARSE_DENSITY)
        return self.calibration.counts(key, layer, self.target_density(context), minimum, heads)

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

    def warmup_share(self, context: AttentionContext) -> float:
        """The configured warm-up share, or the measured best for the grid and budget."""
        if self.config.warmup_share is not None:
            return self.config.warmup_share
        return video_warmup_share(self.budget()) if self.is_video(context) else WARMUP_SHARE

    def _schedule(self, context: AttentionContext) -> tuple[int, int, float]:
        share = self.warmup_share(context)
        dense_steps = self.config.dense_steps
        if self.calibrating(context):  # the measured steps are dense, paid from the budget
            warm = (
                dense_steps
                if dense_steps is not None
                else math.floor(share * self.budget() * (context.call.num_inference_steps or 0) + 1e-9)
            )
            dense_steps = max(warm, CALIBRATION_STEPS)
        return schedule(
            self.budget(),
            context.call.num_inference_steps,
            share,
            dense_steps,
            self.refresh_every(context),
        )

    def target_density(self, context: AttentionContext) -> float:
        return self._schedule(context)[2]

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        grid = context.call.grid
        return self.cache.get(("curve", grid, device), lambda: curve_order(grid, device))

    def block_scores(self, x, context) -> torch.Tensor:
        """``topk``'s pooled scores times the softmax scale: pooled logits, whose softmax over a
        row estimates each key block's share of the row's attention mass (the top-p rule's)."""
        return super().block_scores(x, context) * x.scale

    def video_blocks(self, scores: torch.Tensor, context) -> torch.Tensor:
        """The kept key blocks: for every query block the blocks it touches plus its best-scoring
        ones, so that the mean kept share is the budget. Below the neighbourhood's own share,
        exactly the budget per row: the neighbours first on one-frame grids, plain top-k on video
        grids (the neighbours first lost 3.8-4.8 dB there, ``quality_video_auto_planner.md``).
        Above it, one-frame grids keep every row's ``m`` best blocks, one ``m`` per call
        (``quality_image.md``: this beats the neighbours first in a fixed per-row budget; a top-p
        rule lost 2-3.5 dB); video grids keep every row's top-p blocks (``top_p_blocks``). No
        host synchronisation per call: ``m`` and ``p`` are tensors; the neighbourhood's size is
        read once per grid."""
        n = scores.shape[-1]
        video = self.is_video(context)
        counts = self.head_counts(context, n, scores.shape[1])
        near, near_blocks = self.neighbours(context, scores.device)
        if counts is not None:
            counts = counts.to(scores.device).view(1, -1, 1, 1)
            return _calibrated_blocks(scores, near, near_blocks, counts, near_first=not video)
        density = self.target_density(context)
        k = self.blocks_kept(n, density)
        if near_blocks > density * n:  # below the neighbourhood's own share: exactly k per row
            return top_k_mask(scores if video else scores.masked_fill(near, math.inf), k)
        if video:
            return self.top_p_blocks(scores, near, density * n, context)
        rank = _rank(scores)
        m = torch.tensor(float(k), device=scores.device)
        for _ in range(3):  # the overlap with the neighbours shrinks as m does: a few fixed-point steps
            kept = (rank < m) | near
            m = (m - (kept.sum(-1, dtype=torch.float32).mean() - density * n).round()).clamp(0, n)
        return (rank < m) | near

    def top_p_blocks(
        self, scores: torch.Tensor, near: torch.Tensor, target: float, context: AttentionContext
    ) -> torch.Tensor:
        """Video grids: every row keeps the touching blocks and its best blocks until their
        estimated share of its mass (softmax of the pooled logits) passes ``p``, with one ``p``
        for all layers, fitted so that the layers' mean kept count is ``target``.

        Why: a row whose mass is spread gets more blocks and a local one only its neighbours, so
        the budget flows to the layers and rows that need it. At budget 0.61 on the video proxy
        (mean of three seeds) this gets 36.7 dB where one ``m`` per call got 34.8 and Rectified
        SpaAttn's default (top-p 0.3 with a floor of 8 blocks) 35.1; ``p`` fitted per call
        instead lost 2 dB on seed 0, because it gives every layer the same share
        (``quality_video_auto_planner.md``). Each
        layer's kept count as a function of ``p`` (``P_GRID + 1`` points) is recorded at every
        planned call and at the last warm-up step, so the first refresh already knows every
        layer; ``p`` comes from the latest curves of all layers of the grid."""
        after, rank = _mass_after(scores), _rank(scores)
        self.curves[self.curve_key(context)] = _top_p_curve(after, rank, near)
        grid = context.call.grid
        layers = torch.stack([c for key, c in self.curves.items() if key[0] == grid]).mean(0)
        n_keep = (after >= _tail_for(layers, target)).sum(-1, keepdim=True) + 1
        return (rank < n_keep) | near

    @staticmethod
    def curve_key(context: AttentionContext) -> tuple:
        return context.call.grid, context.call.transformer_name, context.layer.name

    def record_curve(self, q, k, v, scale, key_padding_mask, context: AttentionContext) -> None:
        """At the last warm-up step: this layer's top-p curve (``top_p_blocks``), from its
        queries and keys, for the first planned step."""
        x, _, _ = self.prepare(q, k, v, self.scale(scale, q), key_padding_mask, context)
        scores = self.block_scores(x, context)
        near = self.neighbours(context, q.device)[0]
        self.curves[self.curve_key(context)] = _top_p_curve(_mass_after(scores), _rank(scores), near)

    def neighbours(self, context: AttentionContext, device: torch.device) -> tuple[torch.Tensor, float]:
        grid, bs = context.call.grid, self.config.block_size
        return self.cache.get(("curve_neighbours", grid, bs, device), lambda: _near(grid, bs, device))

    def last_warmup_step(self, context: AttentionContext) -> bool:
        """Whether this call is in the last dense warm-up step of a layer that is planned later."""
        step, dense_layers = context.call.step_index, self.config.dense_layers or ()
        return step == self._schedule(context)[0] - 1 and context.layer.index not in dense_layers

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
        if self.calibrating(context) and context.call.step_index < CALIBRATION_STEPS:
            self.measure(q, k, v, scale, key_padding_mask, context)
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        if self.is_video(context) and self.last_warmup_step(context):
            self.record_curve(q, k, v, scale, key_padding_mask, context)
        return super().attend(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    def measure(self, q, k, v, scale, key_padding_mask, context: AttentionContext) -> None:
        """One calibration call: the kept-mass curves of this layer in the planner's ranking
        (one-frame grids: the touching blocks first, as they are always kept; video grids: the
        scores alone, as below the touching blocks' share they are not)."""
        x, _, _ = self.prepare(q, k, v, self.scale(scale, q), key_padding_mask, context)
        ranking = self.block_scores(x, context)
        if not self.is_video(context):
            ranking = ranking.masked_fill(self.neighbours(context, q.device)[0], math.inf)
        layer = f"{context.call.transformer_name}.{context.layer.name}"
        self.calibration.add(self.calibration_key(context), layer, kept_mass_curves(x, ranking))
        self.dense_reasons.setdefault(
            context.layer.name,
            f"step(s) < {CALIBRATION_STEPS}: calibration (measures the mass each block budget keeps)",
        )

    def reset(self) -> None:
        super().reset()
        self.measuring.clear()
        self.curves.clear()

    def close(self) -> None:
        super().close()
        if self.calibration is not None:
            self.calibration.clear()


def _mass_after(scores: torch.Tensor) -> torch.Tensor:
    """Per row, its blocks sorted best first: the estimated mass (softmax of the pooled logits)
    of the blocks after each one. A row keeps its best blocks while the mass after them is at
    least ``1 - p``: the top-p rule, summed from the tail so that tiny tails do not round away
    and ``p = 1`` keeps every block."""
    mass = torch.softmax(scores.float(), dim=-1).sort(dim=-1, descending=True).values
    from_here = mass.flip(-1).cumsum(-1).flip(-1)
    return torch.cat([from_here[..., 1:], torch.zeros_like(from_here[..., :1])], dim=-1)


def _tail_at(x: torch.Tensor) -> torch.Tensor:
    """The remaining mass ``1 - p`` at point ``x`` (0..P_GRID) of the top-p curves: halving every
    4 points (1 at 0, 2e-5 at P_GRID - 1), then linear to 0 at P_GRID, so that points are dense
    where a row's last blocks carry little mass and ``p = 1`` (every block) is the last point."""
    last = P_GRID - 1
    return torch.where(x <= last, 2.0 ** (-x / 4), 2.0 ** (-last / 4) * (P_GRID - x))


def _top_p_curve(after: torch.Tensor, rank: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """(P_GRID + 1,) float32: the mean kept blocks per row at each point of ``_tail_at`` (the
    row's best blocks while the mass after them is at least the point's, at least one, plus
    the touching blocks), without building a mask per point: the touching blocks outside the
    best ``n_keep`` are counted from their sorted ranks."""
    n = after.shape[-1]
    tails = _tail_at(torch.arange(P_GRID + 1, device=after.device, dtype=after.dtype))
    # n_keep = #(after >= tail) + 1; -after is ascending, as searchsorted wants
    n_keep = torch.searchsorted(-after, (-tails).expand(*after.shape[:-1], -1).contiguous(), right=True)
    n_keep = (n_keep + 1).clamp(max=n)
    near = near.expand_as(rank)
    near_ranks = rank.masked_fill(~near, n).sort(dim=-1).values
    outside = near.sum(-1, keepdim=True) - torch.searchsorted(near_ranks, n_keep)
    return (n_keep + outside).float().flatten(0, -2).mean(0)


def _tail_for(curve: torch.Tensor, target: float) -> torch.Tensor:
    """The remaining mass ``1 - p`` at which a (P_GRID + 1,) kept-count curve reaches ``target``
    (linear between its points; every block where even p = 1 falls short), as a tensor: no
    host synchronisation."""
    hi = torch.searchsorted(curve, curve.new_tensor([target])).clamp(1, P_GRID)
    lo_count, hi_count = curve[hi - 1], curve[hi]
    step = ((target - lo_count) / (hi_count - lo_count).clamp_min(1e-9)).clamp(0, 1)
    return _tail_at(hi - 1 + step).squeeze(0)


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Each column's rank in its row, 0 = highest score."""
    return scores.argsort(dim=-1, descending=True).argsort(dim=-1)


def _calibrated_blocks(
    scores: torch.Tensor, near: torch.Tensor, near_blocks: float, counts: torch.Tensor, near_first: bool
) -> torch.Tensor:
    """The selection with calibrated per-head counts (1, H, 1, 1): the uncalibrated one (touching
    blocks plus each head's best ``m_h``, ``m_h`` fitted so the mean kept count is the head's),
    or exactly the count where it is below the touching blocks' own (the touching blocks first
    with ``near_first``, one-frame grids; plain top-k without, video grids)."""
    n = scores.shape[-1]
    target = counts.to(torch.float32)
    rank = _rank(scores)
    m = target.clone()
    for _ in range(3):
        kept = (rank < m) | near
        m = (
            m - (kept.sum(-1, dtype=torch.float32).mean((0, 2), keepdim=True)[..., None] - target).round()
        ).clamp(0, n)
    few = _rank(scores.masked_fill(near, math.inf) if near_first else scores) < counts
    return torch.where(target < near_blocks, few, (rank < m) | near)


register_method(AutoConfig, Auto)
