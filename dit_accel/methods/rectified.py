"""Rectified SpaAttn: pooled top-p block-sparse attention, rectified toward full attention.

Per call (no state across steps): video tokens go to curve order (``curve_order``) so a block of
``block_size`` tokens is a compact 3D region; pooled block statistics estimate each key block's
share of a query block's full-attention mass (``rectified_pooling``); each query block keeps its
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

from ..config import RECTIFIED_DEFAULTS, RectifiedSpaAttnConfig
from ..context import AttentionContext, CallContext
from ..kernels import BlockLayout, attention_with_stats, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod
from .curve_order import block_neighbours, curve_order
from .joint import keys_with_text, split_joint
from .rectified_pooling import (
    PooledBlocks,
    estimated_block_mass,
    gapr_trusted,
    per_row_rectify,
    pool_blocks,
    rectification,
    top_k_floor,
    top_p_with_floor,
)


@dataclass(frozen=True)
class BlockSelection:
    """One call's selection: the kernel layout and what the rectification needs.

    ``kept_columns``: bool (B, H, n_v, C) on the estimated-mass columns (video blocks, then the
    merged text column when there is text); ``mass``: p~ on the same columns.
    """

    layout: BlockLayout
    kept_columns: torch.Tensor
    mass: torch.Tensor
    pooled_q: PooledBlocks
    pooled_k: PooledBlocks


def _per_row(per_block: torch.Tensor, block_size: int, rows: int) -> torch.Tensor:
    """(B, H, n_blocks, ...) block values -> (B, rows, H, ...) values of each block's rows."""
    return per_block.repeat_interleave(block_size, dim=2)[:, :, :rows].transpose(1, 2)


class RectifiedSpaAttn(SparseMethod):
    config_cls: ClassVar[type[RectifiedSpaAttnConfig]] = RectifiedSpaAttnConfig

    def family_defaults(self, call: CallContext) -> tuple[float, int, tuple[int, ...], str]:
        """(sa_drop_rate, dense steps, dense layers, first_frame) after the config's overrides."""
        cfg = self.config
        drop, steps, layers, first = RECTIFIED_DEFAULTS.get(call.family, RECTIFIED_DEFAULTS["PixArt"])
        return (
            drop if cfg.sa_drop_rate is None else cfg.sa_drop_rate,
            steps if cfg.dense_steps is None else cfg.dense_steps,
            layers if cfg.dense_layers is None else cfg.dense_layers,
            first if cfg.first_frame is None else cfg.first_frame,
        )

    def keeps_dense(self, context: AttentionContext) -> bool:
        _, steps, layers, _ = self.family_defaults(context.call)
        return context.call.step_index < steps or context.layer.index in layers

    def forced_blocks(self, call: CallContext, device: torch.device) -> torch.Tensor:
        """bool (n_v, n_v): block pairs every selection keeps (neighbours, first-frame square)."""
        cfg = self.config
        grid, bs = call.grid, cfg.block_size
        n_v = num_blocks(call.num_video_tokens, bs)
        forced = (
            block_neighbours(grid, bs, device)
            if cfg.neighbours
            else torch.eye(n_v, dtype=torch.bool, device=device)
        )
        first = self.family_defaults(call)[3]
        if first != "none":
            square = torch.zeros(n_v, dtype=torch.bool, device=device)
            if first == "curve":
                square[: n_v // grid[0]] = True
            else:  # the blocks that hold latent frame 0's tokens
                square[curve_order(grid, device).inverse[: grid[1] * grid[2]] // bs] = True
            forced = forced | (square[:, None] & square[None, :])
        return forced

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        cfg, call = self.config, context.call
        split = split_joint(q.shape[1], call)
        order = curve_order(call.grid, q.device)
        n_video, dim = call.num_video_tokens, q.shape[3]
        bs = cfg.block_size
        n_v = num_blocks(n_video, bs)
        scale = dim**-0.5 if scale is None else scale

        qv, kv, vv = (order.to_curve(x[:, split.video]) for x in (q, k, v))
        video_ok = text_ok = None
        if key_padding_mask is not None:
            video_ok = order.to_curve(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]
        text_k = k[:, split.text] if split.num_text else None

        sel = self.select(qv, kv, video_ok, text_k, text_ok, call, scale)
        keys, values, key_valid = keys_with_text(
            kv, vv, k[:, split.text], v[:, split.text], video_ok, text_ok, bs
        )
        masks = dict(scale=scale, key_padding_mask=key_valid, backend=cfg.kernel_backend)
        if not (cfg.ipar or cfg.gapr):
            out = block_sparse_attention(qv, keys, values, sel.layout, **masks)
        else:
            vp = pool_blocks(vv, bs, video_ok, cfg.pooled_means, sel.pooled_q.mean.dtype)
            trusted = gapr_trusted(sel.pooled_q, sel.pooled_k) if cfg.gapr else None
            if cfg.rectify == "per_row":
                res = attention_with_stats(qv, keys, values, sel.layout, **masks)
                dropped = ~sel.kept_columns[..., :n_v]
                compensated = dropped & trusted if cfg.gapr else dropped
                out = per_row_rectify(
                    res.out, res.row_max, res.row_sum, qv, sel.pooled_k, vp.mean, compensated, bs, scale
                )
            else:  # spec 3.4: O = R x O_sparse + C per query block
                out = block_sparse_attention(qv, keys, values, sel.layout, **masks)
                r, c = rectification(
                    sel.mass, sel.kept_columns, trusted, vp.mean, ipar=cfg.ipar, gapr=cfg.gapr
                )
                compute = torch.promote_types(q.dtype, torch.float32)
                rows = _per_row(r.to(compute), bs, n_video).unsqueeze(-1)
                out = (out.to(compute) * rows + _per_row(c.to(compute), bs, n_video)).to(q.dtype)

        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
        return split.join(
            order.from_curve(out), text_out, call.text_position == "first"
        ), sel.layout.density()

    def select(self, qv, kv, video_ok, text_k, text_ok, call: CallContext, scale: float) -> BlockSelection:
        """Pooled estimates and the block mask (spec 3.3) for curve-ordered video queries and keys.

        qv, kv: (B, N_v, H, D) in curve order; video_ok: bool (B, N_v) or None; text_k: (B, T, H, D)
        or None; text_ok: bool (B, T) or None.
        """
        cfg = self.config
        bs = cfg.block_size
        batch, n_video, heads, _ = qv.shape
        n_v = num_blocks(n_video, bs)
        dtype = torch.promote_types(qv.dtype, torch.float32) if cfg.pooled_dtype == "float32" else qv.dtype
        qp = pool_blocks(qv, bs, None, cfg.pooled_means, dtype)
        kp = pool_blocks(kv, bs, video_ok, cfg.pooled_means, dtype)
        mass = estimated_block_mass(qp.mean, kp.mean, kp.weight, scale, text_k, text_ok)
        keep = top_p_with_floor(mass, cfg.top_p, top_k_floor(n_v, self.family_defaults(call)[0]))
        video_keep = keep[..., :n_v] | self.forced_blocks(call, qv.device)
        kept_columns = torch.cat([video_keep, keep[..., n_v:] | True], dim=-1)  # text column: always on
        n_text_blocks = num_blocks(text_k.shape[1], bs) if text_k is not None else 0
        text_blocks = torch.ones(batch, heads, n_v, n_text_blocks, dtype=torch.bool, device=qv.device)
        layout = BlockLayout.from_block_mask(torch.cat([video_keep, text_blocks], dim=-1), bs, bs)
        return BlockSelection(layout, kept_columns, mass, qp, kp)
