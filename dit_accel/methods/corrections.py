"""Corrections that compose with any planner: ``correction="rectify"`` and ``"rettention"``.

A correction turns the sparse output of whatever layout a planner chose into a better estimate of
full attention:

- **rectify** (Rectified SpaAttn's correction): from pooled block statistics, add what the dropped
  key blocks would have contributed. ``mode="per_row"`` weighs each dropped block by the row's own
  logit to its pooled key and renormalises with the kernel's exact row sum; ``"per_block"`` (the
  reference) scales each query block's output by its estimated kept mass (IPAR) and adds trusted
  dropped blocks' pooled values (GAPR). Partial tiles (an in-tile predicate) count as kept.
- **rettention** (Re-ttention's correction): at refresh steps compute dense attention and cache,
  per row, the share rho of the softmax mass inside the layout and the residual
  ``delta = O_full - rho O_S``; at sparse steps return ``(rho + drift k) O_S + delta``. With a
  dynamic planner the layout of a sparse step is the planner's new one.

Each has a small frozen config; ``correction="rectify"`` means ``RectifyCorrection()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import CorrectionConfig
from ..context import AttentionContext
from ..kernels import num_blocks, refresh_attention
from .plan import Corrected, Operands, Plan, run_kernel
from .pooling import (
    PooledBlocks,
    estimated_block_mass,
    gapr_trusted,
    per_row_rectify,
    pool_blocks,
    rectification,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RectifyCorrection(CorrectionConfig):
    """Rectified SpaAttn's correction on any block layout.

    Attributes:
        mode: "per_row" (default: every row adds the dropped blocks' pooled values weighted by its
            own logits, renormalised with the kernel's row sum) or "per_block" (the reference:
            ``R x O_sparse + C`` per query block).
        ipar: per-block mode: scale each query block's output by its estimated kept mass.
        gapr: compensate only the dropped blocks whose pooled logit passes the gain-versus-pooling-
            error test (the reference); False compensates every dropped block.
        pooled_means: "valid" (default: block means over real tokens) or "padded" (the reference's).
    """

    kind = "rectify"

    mode: str = "per_row"
    ipar: bool = True
    gapr: bool = False
    pooled_means: str = "valid"

    def __post_init__(self) -> None:
        if self.mode not in ("per_row", "per_block"):
            raise ValueError(f"mode must be 'per_row' or 'per_block', got {self.mode!r}")
        if self.pooled_means not in ("valid", "padded"):
            raise ValueError(f"pooled_means must be 'valid' or 'padded', got {self.pooled_means!r}")
        for name in ("ipar", "gapr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RettentionCorrection(CorrectionConfig):
    """Re-ttention's correction on any block layout (see ``RettentionConfig`` for the fields)."""

    kind = "rettention"

    use_ratio: bool = True
    use_residual: bool = True
    drift: float = 0.04
    fix_text_rows: bool = False
    warmup_fraction: float | None = None
    refresh_every: int = 5
    state_dtype: str | None = None
    state_device: str = "auto"

    def __post_init__(self) -> None:
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1], got {self.warmup_fraction!r}")
        if (
            isinstance(self.refresh_every, bool)
            or not isinstance(self.refresh_every, int)
            or self.refresh_every < 1
        ):
            raise ValueError(f"refresh_every must be a positive integer, got {self.refresh_every!r}")
        if self.state_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(
                f"state_dtype must be None, 'float32', 'bfloat16' or 'float16', got {self.state_dtype!r}"
            )
        if self.state_device not in ("auto", "same", "cpu"):
            raise ValueError(f"state_device must be 'auto', 'same' or 'cpu', got {self.state_device!r}")


CORRECTIONS = {"rectify": RectifyCorrection, "rettention": RettentionCorrection}
#: The default correction on video grids (more than one latent frame) of ``auto`` and ``vmoba``'s
#: fast mode: Re-ttention's residual, refreshed every 5 steps from the first sparse step (no
#: warm-up of its own: ``auto`` pays its warm-up from the budget). On the shipped video proxy
#: (``quality_video.md``) it lifts VMoBA's default 2.6 dB over top-k and ``auto``'s 3.0-4.0 dB at
#: 0.25-0.35; per-row rectification in its place loses 3.0-3.9 dB in ``auto``
#: (``quality_video_auto.md``). Without dense warm-up it stops near 28.8 dB, so ``window3d`` and
#: ``rectified`` take it with Re-ttention's warm-up (``RettentionCorrection()``, 30 % of the steps
#: dense on the video families): +2.4 and +3.8 dB over top-k on their selections
#: (``quality_video_combinations.md``).
VIDEO_CORRECTION = RettentionCorrection(warmup_fraction=0.0)


def resolve_correction(method: Any, choice: Any) -> CorrectionConfig | None:
    """The correction a config asks for: "default" = the method's own, a name = that correction's
    defaults, a config object as given, None = none."""
    if isinstance(choice, str) and choice == "default":
        return method.own_correction()
    if isinstance(choice, str):
        return CORRECTIONS[choice]()
    return choice


def build_corrector(method: Any, choice: Any) -> Corrector | None:
    """The corrector for a ``correction=`` choice (see ``resolve_correction``), or None."""
    correction = resolve_correction(method, choice)
    if correction is None:
        return None
    reason = method.refuses_correction(correction)
    if reason:
        raise ValueError(f"{type(method).__name__} cannot take correction={correction.kind!r}: {reason}")
    return {"rectify": Rectify, "rettention": Rettention}[correction.kind](method, correction)


class Corrector:
    def __init__(self, method: Any, config: CorrectionConfig) -> None:
        self.method, self.config = method, config

    def phase(self, context: AttentionContext) -> tuple[str, int]:
        return "sparse", 0

    def correct(self, x: Operands, plan: Plan, context: AttentionContext, kind: str, since: int) -> Corrected:
        raise NotImplementedError


@dataclass(frozen=True)
class PooledStats:
    """Pooled queries and keys of one call and the estimated block mass with the kept columns
    (B, H, n_q, C): video key blocks, then one merged text column when there is text."""

    q: PooledBlocks
    k: PooledBlocks
    mass: torch.Tensor
    kept: torch.Tensor


def pooled_stats(x: Operands, plan: Plan, means: str) -> PooledStats:
    """The statistics of ``x`` for ``plan``'s layout (any planner), in float32."""
    dtype = torch.promote_types(x.q.dtype, torch.float32)
    qp = pool_blocks(x.q, x.block_q, x.video_ok, means, dtype)
    kp = pool_blocks(x.k, x.block_k, x.video_ok, means, dtype)
    text = x.text_k if x.num_text else None
    mass = estimated_block_mass(qp.mean, kp.mean, kp.weight, x.scale, text, x.text_ok if x.num_text else None)
    batch, heads = x.q.shape[0], x.q.shape[2]
    n_kv = num_blocks(x.k.shape[1], x.block_k)
    kept = plan.layout.to_block_mask()[..., :n_kv].expand(batch, heads, -1, -1)
    if x.num_text:
        kept = torch.cat([kept, kept.new_ones(*kept.shape[:3], 1)], dim=-1)
    return PooledStats(qp, kp, mass, kept)


def _per_row(per_block: torch.Tensor, block_size: int, rows: int) -> torch.Tensor:
    """(B, H, n_blocks, ...) block values -> (B, rows, H, ...) values of each block's rows."""
    return per_block.repeat_interleave(block_size, dim=2)[:, :, :rows].transpose(1, 2)


class Rectify(Corrector):
    config: RectifyCorrection

    def correct(self, x, plan, context, kind, since):
        cfg, backend = self.config, self.method.config.kernel_backend
        stats = plan.pooled if plan.pooled is not None else pooled_stats(x, plan, cfg.pooled_means)
        n_kv = stats.k.mean.shape[2]
        vp = pool_blocks(x.v, x.block_k, x.video_ok, cfg.pooled_means, stats.q.mean.dtype)
        trusted = gapr_trusted(stats.q, stats.k) if cfg.gapr else None
        density = plan.layout.density()
        if cfg.mode == "per_row":
            res = run_kernel(x, plan, backend, stats=True)
            dropped = ~stats.kept[..., :n_kv]
            compensated = dropped & trusted if cfg.gapr else dropped
            out = per_row_rectify(
                res.out, res.row_max, res.row_sum, x.q, stats.k, vp.mean, compensated, x.block_q, x.scale
            )
            return Corrected(out, density)
        out = run_kernel(x, plan, backend)
        r, c = rectification(stats.mass, stats.kept, trusted, vp.mean, ipar=cfg.ipar, gapr=cfg.gapr)
        compute = torch.promote_types(x.q.dtype, torch.float32)
        n = x.q.shape[1]
        rows = _per_row(r.to(compute), x.block_q, n).unsqueeze(-1)
        out = (out.to(compute) * rows + _per_row(c.to(compute), x.block_q, n)).to(x.q.dtype)
        return Corrected(out, density)


def rettention_phase(
    step: int, num_steps: int | None, warmup_fraction: float, refresh_every: int
) -> tuple[str, int]:
    """("dense" | "refresh" | "sparse", sparse steps since the last refresh) for a denoising step.

    With ``num_steps`` unknown the warm-up is taken at 50 steps (the reference's video length).
    """
    warmup = round(warmup_fraction * (num_steps if num_steps else 50))
    if step < warmup:
        return "dense", 0
    since = (step - warmup) % refresh_every
    return ("refresh", 0) if since == 0 else ("sparse", since)


class Rettention(Corrector):
    config: RettentionCorrection

    def phase(self, context):
        cfg = self.config
        warmup = 0.3 if cfg.warmup_fraction is None else cfg.warmup_fraction
        call = context.call
        return rettention_phase(call.step_index, call.num_inference_steps, warmup, cfg.refresh_every)

    def correct(self, x, plan, context, kind, since):
        cfg, call = self.config, context.call
        backend = self.method.config.kernel_backend
        batch = x.q.shape[0]
        # float32 arithmetic for the correction (float64 inputs, the test oracle, stay float64).
        compute = torch.promote_types(x.q.dtype, torch.float32)
        # Keyed by transformer too: Wan 2.2's two experts have the same layer names.
        state = self.method.state.get(f"{call.transformer_name}.{context.layer.name}", call.cfg_branch)
        stale = (
            "delta" not in state
            or state["delta"].shape[0] != batch
            or state["delta"].shape[1] != x.q.shape[1]
        )
        if kind == "refresh" or stale:
            refreshed = refresh_attention(
                x.q,
                x.keys,
                x.values,
                plan.layout,
                scale=x.scale,
                key_padding_mask=x.key_valid,
                element_mask=plan.element_mask,
                kv_partial=plan.kv_partial,
                backend=backend,
            )
            # Without the ratio the cached residual is against the plain masked softmax O_S = kept / rho.
            kept = refreshed.kept_out if cfg.use_ratio else _masked_softmax_output(refreshed)
            store_dtype = _DTYPES[cfg.state_dtype] if cfg.state_dtype else x.q.dtype
            old = sum(t.numel() * t.element_size() for t in state.values() if t.device == x.q.device)
            new = refreshed.out_full.numel() * store_dtype.itemsize + refreshed.rho.numel() * 4
            store_device = state_device(cfg.state_device, x.q.device, new - old)
            state["rho"] = refreshed.rho.to(store_device, compute)
            state["delta"] = (refreshed.out_full.to(compute) - kept.to(compute)).to(store_device, store_dtype)
            return Corrected(refreshed.out_full, 1.0, 1.0)
        sparse = run_kernel(x, plan, backend)
        rho = state["rho"].to(x.q.device) + cfg.drift * (since - 1) if cfg.use_ratio else None
        out = sparse.to(compute) * _row_stat(rho) if rho is not None else sparse.to(compute)
        if cfg.use_residual:
            out = out + state["delta"].to(x.q.device, compute)
        text_scale = 1.0 if cfg.fix_text_rows else 1.0 + cfg.drift * (since - 1)
        return Corrected(out.to(x.q.dtype), plan.layout.density(), text_scale)


def state_device(choice: str, device: torch.device, nbytes: int) -> torch.device:
    """Where a refresh's state goes: "same" / "cpu" as told; "auto" keeps it next to the
    activations unless that would leave less than a quarter of the GPU's memory free (for a
    14B Wan at 720p the residuals of 40 layers x 2 CFG branches are about 60 GB in bf16), and
    puts it in host memory then."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "auto" and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if free - nbytes < total // 4:
            return torch.device("cpu")
    return device


def _masked_softmax_output(refreshed) -> torch.Tensor:
    """O_S = (rho x O_S) / rho, and 0 for rows that keep no key."""
    rho = _row_stat(refreshed.rho)
    return torch.where(rho > 0, refreshed.kept_out / torch.where(rho > 0, rho, 1), torch.zeros_like(rho))


def _row_stat(rho: torch.Tensor) -> torch.Tensor:
    """(B, H, S) row statistic -> (B, S, H, 1), broadcastable over (B, S, H, D) outputs."""
    return rho.transpose(1, 2).unsqueeze(-1)


__all__ = ["CORRECTIONS", "RectifyCorrection", "RettentionCorrection"]
