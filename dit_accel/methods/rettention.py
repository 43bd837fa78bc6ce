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
from typing import ClassVar

import torch

from ..config import RETTENTION_WARMUP, RettentionConfig
from ..context import AttentionContext, CallContext
from ..kernels import block_sparse_attention, dense_attention, refresh_attention
from .base import SparseMethod
from .joint import split_joint
from .rettention_layouts import StaticSparseLayout, band_layout, frame_window_layout, window3d_layout

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def phase(step: int, num_steps: int | None, warmup_fraction: float, refresh_every: int) -> tuple[str, int]:
    """("dense" | "refresh" | "sparse", sparse steps since the last refresh) for a denoising step.

    With ``num_steps`` unknown the warm-up is taken at 50 steps (the reference's video length).
    """
    warmup = round(warmup_fraction * (num_steps if num_steps else 50))
    if step < warmup:
        return "dense", 0
    since = (step - warmup) % refresh_every
    return ("refresh", 0) if since == 0 else ("sparse", since)


class Rettention(SparseMethod):
    config_cls: ClassVar[type[RettentionConfig]] = RettentionConfig

    def warmup_fraction(self, call: CallContext) -> float:
        cfg = self.config
        return (
            cfg.warmup_fraction
            if cfg.warmup_fraction is not None
            else RETTENTION_WARMUP.get(call.family, 0.3)
        )

    def static_layout(self, call: CallContext, num_text: int, device: torch.device) -> StaticSparseLayout:
        """The family's static mask: a 1-D band for images, a per-frame window with text for
        text-first joint attention, a 3D window otherwise (cached by the builders)."""
        cfg = self.config
        frames, height, width = call.grid
        # 64-key tiles halve the visited area of a thin band or window against 128 (spec 4a).
        blocks = dict(block_q=cfg.block_size, block_k=min(64, cfg.block_size), device=device)
        if frames == 1 and num_text == 0:
            return band_layout(height * width, cfg.sparsity, 0, **blocks)
        if call.text_position == "first":
            return frame_window_layout(call.grid, cfg.sparsity, num_text, **blocks)
        side = cfg.sparsity ** (1 / 3)
        window = tuple(max(1, math.ceil(g * side)) for g in call.grid)
        return window3d_layout(call.grid, window, None, cfg.block_size, num_text, device)

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        cfg, call = self.config, context.call
        kind, since = phase(
            call.step_index, call.num_inference_steps, self.warmup_fraction(call), cfg.refresh_every
        )
        if kind == "dense":
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        split = split_joint(q.shape[1], call)
        static = self.static_layout(call, split.num_text, q.device)
        batch = q.shape[0]
        valid = static.order_valid
        if valid is None:  # identity order, no padding slots
            valid = torch.ones(call.num_video_tokens, dtype=torch.bool, device=q.device)
        video_ok = valid.expand(batch, -1)
        text_ok = torch.ones(batch, split.num_text, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            video_ok = video_ok & static.to_order(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]
        qv = static.to_order(q[:, split.video])
        keys = torch.cat([static.to_order(k[:, split.video]), k[:, split.text]], dim=1)
        values = torch.cat([static.to_order(v[:, split.video]), v[:, split.text]], dim=1)
        masks = dict(
            scale=scale,
            key_padding_mask=torch.cat([video_ok, text_ok], dim=1),
            element_mask=static.element_mask,
            kv_partial=static.kv_partial,
        )
        # float32 arithmetic for the correction (float64 inputs, the test oracle, stay float64).
        compute = torch.promote_types(q.dtype, torch.float32)
        # Keyed by transformer too: Wan 2.2's two experts have the same layer names.
        state = self.state.get(f"{call.transformer_name}.{context.layer.name}", call.cfg_branch)
        stale = (
            "delta" not in state or state["delta"].shape[0] != batch or state["delta"].shape[1] != qv.shape[1]
        )
        if kind == "refresh" or stale:
            refreshed = refresh_attention(
                qv, keys, values, static.layout, backend=cfg.kernel_backend, **masks
            )
            # Without the ratio the cached residual is against the plain masked softmax O_S = kept / rho.
            kept = refreshed.kept_out if cfg.use_ratio else _masked_softmax_output(refreshed)
            store_dtype = _DTYPES[cfg.state_dtype] if cfg.state_dtype else q.dtype
            store_device = torch.device("cpu") if cfg.state_device == "cpu" else q.device
            state["rho"] = refreshed.rho.to(store_device, compute)
            state["delta"] = (refreshed.out_full.to(compute) - kept.to(compute)).to(store_device, store_dtype)
            video_out, density, text_scale = refreshed.out_full, 1.0, 1.0
        else:
            sparse = block_sparse_attention(
                qv, keys, values, static.layout, backend=cfg.kernel_backend, **masks
            )
            rho = state["rho"].to(q.device) + cfg.drift * (since - 1) if cfg.use_ratio else None
            out = sparse.to(compute) * _per_row(rho) if rho is not None else sparse.to(compute)
            if cfg.use_residual:
                out = out + state["delta"].to(q.device, compute)
            video_out, density = out.to(q.dtype), static.layout.density()
            text_scale = 1.0 if cfg.fix_text_rows else 1.0 + cfg.drift * (since - 1)
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
            if text_scale != 1.0:
                text_out = text_out * text_scale
        return split.join(static.from_order(video_out), text_out, call.text_position == "first"), density


def _masked_softmax_output(refreshed) -> torch.Tensor:
    """O_S = (rho x O_S) / rho, and 0 for rows that keep no key."""
    rho = _per_row(refreshed.rho)
    return torch.where(rho > 0, refreshed.kept_out / torch.where(rho > 0, rho, 1), torch.zeros_like(rho))


def _per_row(rho: torch.Tensor) -> torch.Tensor:
    """(B, H, S) row statistic -> (B, S, H, 1), broadcastable over (B, S, H, D) outputs."""
    return rho.transpose(1, 2).unsqueeze(-1)
