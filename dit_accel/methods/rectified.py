"""Rectified SpaAttn: pooled top-p block-sparse attention, rectified toward full attention.

Per call (no state across steps): video tokens go to curve order (``curve_order``) so a block of
``block_size`` tokens is a compact 3D region; pooled block statistics estimate each key block's
share of a query block's full-attention mass (``pooling``); each query block keeps its
top-p blocks (with a top-k floor), its 26-neighbourhood blocks, all text blocks and, for Wan, a
"first frame" square; the block-sparse kernel computes O_sparse over them; the output of a query
block is ``R x O_sparse + C`` (IPAR scale and GAPR compensation). Text queries stay dense.

The video keys are padded to whole blocks (padding masked in the kernel) so that text keys start
on a block boundary and a key block is either video or text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, register_method
from ..kernels import BlockLayout, num_blocks
from .base import SparseMethod
from .corrections import PooledStats, RectifyCorrection, RettentionCorrection
from .curve_order import block_neighbours, curve_order
from .order import TokenOrder
from .plan import Operands, Plan
from .pooling import estimated_block_mass, pool_blocks, top_k_floor, top_p_with_floor

RECTIFIED_POOLED_MEANS = ("padded", "valid")
RECTIFIED_FIRST_FRAME = ("none", "curve", "true_frame0")


@dataclass(frozen=True)
class RectifiedSpaAttnConfig(SparseAttentionConfig):
    """Rectified SpaAttn: pooled top-p block selection, with the sparse output rectified toward full
    attention from the same pooled estimate.

    Video tokens are reordered along a 3D space-filling curve so that a block of ``block_size``
    tokens is compact. Each query block keeps the key blocks with the largest estimated
    full-attention mass (pooled queries and keys; text keys pooled individually and weighted as
    single tokens) until ``top_p`` is reached, at least ``int((1 - sa_drop_rate) x n_blocks)``,
    plus its 26-neighbourhood blocks and the text blocks (Wan: a "first frame" square of blocks).
    The output of a query block is then ``R x O_sparse + C``: IPAR scales the sparse output by the
    estimated mass it stands for, GAPR adds the pooled values of dropped blocks whose pooled logit
    is trusted. Text queries stay dense.

    Attributes:
        sa_drop_rate: sets the top-k floor. None = the family default (HunyuanVideo 0.8, Wan 0.75,
            CogVideoX 0.75, as in the reference scripts; PixArt 0.75, a dit-accel extension).
        top_p: cumulative estimated mass a query block keeps at least (0.3, as the reference).
        ipar: scale each query block's sparse output by the estimated mass of its kept blocks
            (plus, with ``gapr``, of the dropped blocks GAPR does not trust). False: no scaling.
        gapr: compensate only the dropped blocks whose pooled logit passes the gain-versus-
            pooling-error test (True, the reference); False (default) compensates every dropped
            block. ``ipar=gapr=False`` is plain pooled top-p attention.
        neighbours: always keep the blocks within one token (26-neighbourhood) of a query block.
        pooled_means: "valid" (default: a partial last block is averaged over its real tokens) or
            "padded" (the reference: over ``block_size`` slots with zeros).
        pooled_dtype: "float32" (default: stable selection) or "model" (the activations' dtype,
            as the reference's bf16 pooled math).
        rectify: "per_row" (default; spec section 4, not in the reference): every row adds the
            compensated blocks' pooled values weighted by its own logits and renormalises with
            the kernel's exact row sum; compensated = the dropped blocks GAPR trusts (every
            dropped block with ``gapr=False``); ``ipar=gapr=False`` stays plain. "per_block"
            (the reference): ``R x O_sparse + C`` with one R and C per query block, from its
            mean query. The defaults are the measured best (``benchmarks/results/quality_*.md``:
            "rectified default" against "rectified reference"); ``preset="reference"`` restores
            the reference's per-block IPAR + GAPR on padded means.
        first_frame: a square of blocks every query block of it keeps. "curve" (the reference,
            for Wan): the first ``n_blocks // frames`` blocks of the curve order, which are not
            exactly latent frame 0; "true_frame0": the blocks holding frame 0's tokens; "none".
            None = the family default ("curve" for Wan, "none" for the others).
        dense_steps / dense_layers: None = the family default (CogVideoX 5 steps; Wan, HunyuanVideo
            and PixArt none: on Wan the video correction's warm-up replaces the reference's 5
            steps and layers 0-1, which ``preset="reference"`` restores); otherwise as for every
            method. Wan I2V in the reference keeps only the layers: pass ``dense_steps=0``; its
            Wan 2.2 T2V A14B keeps 3 of 40 steps: ``dense_steps=3``.
        correction: "default" = the rectification above (``rectify``, ``ipar``, ``gapr``,
            ``pooled_means``) on one-frame grids; on video grids Re-ttention's correction with its
            warm-up (``RettentionCorrection()``: 35.8 dB at density 0.61 on the shipped video
            proxy, +3.8 over top-k, where per-row rectification on the same selection is -1.0,
            ``benchmarks/results/quality_video_combinations.md``; the reference gets 29.4 at 0.68)
            unless the reference preset or an explicit rectification option asks for the
            paper's. Any other choice replaces both.
    """

    method: ClassVar[str] = "rectified"
    #: The reference's per-block IPAR + GAPR on zero-padded block means (``preset="reference"``).
    REFERENCE: ClassVar[dict] = {"gapr": True, "pooled_means": "padded", "rectify": "per_block"}

    sa_drop_rate: float | None = None
    top_p: float = 0.3
    ipar: bool = True
    gapr: bool = False
    neighbours: bool = True
    pooled_means: str = "valid"
    pooled_dtype: str = "float32"
    rectify: str = "per_row"
    first_frame: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sa_drop_rate is not None and not 0.0 <= self.sa_drop_rate <= 1.0:
            raise ValueError(f"sa_drop_rate must lie in [0, 1], got {self.sa_drop_rate!r}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1], got {self.top_p!r}")
        if self.pooled_means not in RECTIFIED_POOLED_MEANS:
            raise ValueError(
                f"pooled_means must be one of {RECTIFIED_POOLED_MEANS}, got {self.pooled_means!r}"
            )
        if self.pooled_dtype not in ("float32", "model"):
            raise ValueError(f"pooled_dtype must be 'float32' or 'model', got {self.pooled_dtype!r}")
        if self.rectify not in ("per_block", "per_row"):
            raise ValueError(f"rectify must be 'per_block' or 'per_row', got {self.rectify!r}")
        if self.first_frame is not None and self.first_frame not in RECTIFIED_FIRST_FRAME:
            raise ValueError(f"first_frame must be one of {RECTIFIED_FIRST_FRAME}, got {self.first_frame!r}")


class RectifiedSpaAttn(SparseMethod):
    config_cls: ClassVar[type[RectifiedSpaAttnConfig]] = RectifiedSpaAttnConfig

    #: Outside a pipeline (no adapter to fill the family defaults): the PixArt defaults.
    FALLBACK_DROP_RATE = 0.75

    def own_correction(self) -> RectifyCorrection | None:
        cfg = self.config
        if not (cfg.ipar or cfg.gapr):
            return None
        return RectifyCorrection(
            mode=cfg.rectify, ipar=cfg.ipar, gapr=cfg.gapr, pooled_means=cfg.pooled_means
        )

    def own_video_correction(self) -> RectifyCorrection | RettentionCorrection | None:
        """Video grids: Re-ttention's correction with its own dense warm-up (30 % of the steps,
        ``RettentionCorrection``'s default), unless the reference preset or an explicit
        rectification option (``rectify``, ``ipar``, ``gapr``, ``pooled_means``) asks for the
        paper's correction. On the
        shipped video proxy, with no dense steps or layers of its own (Wan's default), it gets
        35.8 dB at density 0.61 (+3.8 over top-k), where the reference's 5 dense steps and 2 dense
        layers with the residual got 36.0 at 0.75 (+0.0; ``quality_video.md``,
        ``quality_video_combinations.md``)."""
        own = set(self.config._given) & {"rectify", "ipar", "gapr", "pooled_means"}
        if self.config.preset == "reference" or own or self.own_correction() is None:
            return self.own_correction()
        return RettentionCorrection()

    def drop_rate(self) -> float:
        return self.FALLBACK_DROP_RATE if self.config.sa_drop_rate is None else self.config.sa_drop_rate

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        return self.order_of(context.call.grid, device)

    def forced_blocks(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """bool (n_v, n_v): block pairs every selection keeps (neighbours, first-frame square)."""

        def build() -> torch.Tensor:
            cfg = self.config
            bs = cfg.block_size
            n_v = num_blocks(grid[0] * grid[1] * grid[2], bs)
            forced = (
                block_neighbours(grid, bs, device)
                if cfg.neighbours
                else torch.eye(n_v, dtype=torch.bool, device=device)
            )
            first = cfg.first_frame or "none"
            if first != "none":
                square = torch.zeros(n_v, dtype=torch.bool, device=device)
                if first == "curve":
                    square[: n_v // grid[0]] = True
                else:  # the blocks that hold latent frame 0's tokens
                    square[self.order_of(grid, device).inverse[: grid[1] * grid[2]] // bs] = True
                forced = forced | (square[:, None] & square[None, :])
            return forced

        return self.cache.get(("rectified_forced", grid, device), build)

    def order_of(self, grid, device) -> TokenOrder:
        return self.cache.get(("curve", grid, device), lambda: curve_order(grid, device))

    def plan(self, x: Operands, context) -> Plan:
        """Pooled estimates and the block mask (spec 3.3) for curve-ordered video queries and keys."""
        cfg = self.config
        bs = cfg.block_size
        batch, n_video, heads, _ = x.q.shape
        n_v = num_blocks(n_video, bs)
        dtype = torch.promote_types(x.q.dtype, torch.float32) if cfg.pooled_dtype == "float32" else x.q.dtype
        qp = pool_blocks(x.q, bs, None, cfg.pooled_means, dtype)
        kp = pool_blocks(x.k, bs, x.video_ok, cfg.pooled_means, dtype)
        text_k = x.text_k if x.num_text else None
        text_ok = x.text_ok if x.num_text else None
        mass = estimated_block_mass(qp.mean, kp.mean, kp.weight, x.scale, text_k, text_ok)
        keep = top_p_with_floor(mass, cfg.top_p, top_k_floor(n_v, self.drop_rate()))
        video_keep = keep[..., :n_v] | self.forced_blocks(context.call.grid, x.q.device)
        kept_columns = torch.cat([video_keep, keep[..., n_v:] | True], dim=-1)  # text column: always on
        text_blocks = torch.ones(
            batch, heads, n_v, num_blocks(x.num_text, bs), dtype=torch.bool, device=x.q.device
        )
        layout = BlockLayout.from_block_mask(torch.cat([video_keep, text_blocks], dim=-1), bs, bs)
        return Plan(layout, pooled=PooledStats(qp, kp, mass, kept_columns))


register_method(RectifiedSpaAttnConfig, RectifiedSpaAttn)
