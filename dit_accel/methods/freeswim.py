"""FreeSwim: inward sliding-window self-attention with a full-attention cross-attention guide.

Self-attention of the *window branch*: every video query attends a training-sized spatial window
over all frames (``freeswim_layout``), through the block-sparse kernel with an in-kernel edge
predicate. The *dual path*: the transformer's batch is doubled inside its forward (window items,
then full items, from the same latent), the full items run dense self-attention, and in every block
the full items' text cross-attention output replaces the window items' (computed once, from the
full items' queries). The transformer returns the window items' prediction only, so any Wan
pipeline works unchanged: a scheduler acts per batch item and the full items are discarded each step.

Cache mode (spec 3.5): the conditional pass of every ``cache_steps``-th step is a guide step (dual
path, cross-attention outputs stored per block); the other conditional passes run the window branch
alone and reuse the stored outputs; the unconditional pass always runs the window branch alone with
its own cross-attention. Running "alone" is exact: in the reference the full items would copy the
window items' outputs there, so both items stay identical. ``override_uncond`` decides whether the
unconditional pass is overridden too (the reference: yes without cache mode, no with it); when it
is in cache mode, it gets guide steps and a cache of its own.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, as_int_tuple, positive_int, register_method
from ..context import TWIN_BRANCH, AttentionContext, CallContext
from ..kernels import BlockLayout, ElementMask, dense_attention, num_blocks
from .base import SparseMethod
from .freeswim_layout import WindowLayout, window_layout
from .order import TokenOrder
from .plan import Operands, Plan

logger = logging.getLogger(__name__)

#: The reference's scale: its training frame of 1560 tokens and a token ratio of 2, for any model.
_REFERENCE_LOG_RATIO = math.log(2 * 1560) / math.log(1560)


@dataclass(frozen=True)
class FreeSwimConfig(SparseAttentionConfig):
    """FreeSwim: render above the training resolution with inward sliding-window self-attention.

    Every video query attends a spatial window the size of the training-resolution token grid, over
    all frames, shifted inward at the borders so that every query sees a whole window. A second,
    full-attention branch runs on the same latent inside the transformer (the batch is doubled and
    only the window branch's prediction is returned), and its text cross-attention output replaces
    the window branch's in every block. Wan 2.1 / 2.2 text-to-video only (spec: the reference).

    Attributes:
        base_resolution: (height, width) in pixels the model was trained at ((480, 832) for Wan 2.1
            1.3B; (720, 1280) for 14B). With ``vae_scale_factor`` and the transformer's patch size it
            gives the window: ``(2 d_h + 1, 2 d_w + 1)`` tokens, ``d = base // (vae x patch) // 2``.
        vae_scale_factor: pixels per latent along height and width (8 for Wan 2.1 and 2.2 A14B, 16
            for Wan 2.2 TI2V-5B).
        window: (rows, cols) of the window in tokens; overrides ``base_resolution``.
        inward: shift windows inward at borders (True, the method); False clips them (the ablation).
        cross_attn_override: run the full-attention branch and use its cross-attention output in
            every block (True). False runs the window branch alone (no second branch).
        cache: cache mode: the full branch runs on guide steps only (every ``cache_steps``-th step,
            conditional pass); each block's cross-attention output is kept and reused on the steps
            in between, and the unconditional pass never runs the full branch (as the reference).
        cache_steps: guide-step period in cache mode (2, as the reference).
        override_uncond: whether the unconditional pass also takes the full branch's
            cross-attention. None (default) follows the reference, which overrides it without
            cache mode and not with it (spec quirk 6); True or False make both modes agree. True
            in cache mode keeps a second cache for the unconditional pass (twice the memory).
        cache_device: where the cache lives: "auto" (the activations' device while the cache fits
            in half of the free GPU memory, otherwise pinned host memory), "same" or "cpu".
        attention_scale: softmax scale of both self-attention branches: "reference" (default,
            ``sqrt(log(3120) / log(1560) / head_dim)``, the reference's constant), "default"
            (``head_dim ** -0.5``) or a number.
        order: token order of the window branch: "spatial" (default: all frames of a position
            adjacent, most visited tiles need no in-kernel mask) or "raster" (diffusers' order, for
            debugging).
        experimental: allow the window alone (no second branch) on HunyuanVideo, CogVideoX and
            PixArt: video queries attend the window plus every text key, text queries stay dense.
        dense_at_base: where the window spans the whole token grid (at or below the base
            resolution) run exactly the model's attention: no twin branch, the model's scale
            (True). The reference (``preset="reference"``: False) keeps its twin branch and its
            fixed ``sqrt(log 3120 / log 1560)`` scale there, which is meant only above the base.
    """

    method: ClassVar[str] = "freeswim"
    REFERENCE: ClassVar[dict] = {"dense_at_base": False}

    base_resolution: tuple[int, int] = (480, 832)
    vae_scale_factor: int = 8
    window: tuple[int, int] | None = None
    inward: bool = True
    cross_attn_override: bool = True
    cache: bool = False
    cache_steps: int = 2
    override_uncond: bool | None = None
    cache_device: str = "auto"
    attention_scale: str | float = "reference"
    order: str = "spatial"
    experimental: bool = False
    dense_at_base: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        base = as_int_tuple(self.base_resolution, "base_resolution", 2)
        if any(b < 1 for b in base):
            raise ValueError(f"base_resolution must be positive, got {self.base_resolution!r}")
        object.__setattr__(self, "base_resolution", base)
        positive_int(self.vae_scale_factor, "vae_scale_factor")
        if self.window is not None:
            window = as_int_tuple(self.window, "window", 2)
            if any(w < 1 for w in window):
                raise ValueError(f"window extents must be >= 1 token, got {self.window!r}")
            object.__setattr__(self, "window", window)
        positive_int(self.cache_steps, "cache_steps")
        if self.cache_device not in ("auto", "same", "cpu"):
            raise ValueError(f"cache_device must be 'auto', 'same' or 'cpu', got {self.cache_device!r}")
        scale = self.attention_scale
        if isinstance(scale, str):
            if scale not in ("reference", "default"):
                raise ValueError(f"attention_scale must be 'reference', 'default' or a number, got {scale!r}")
        elif not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(
                f"attention_scale must be 'reference', 'default' or a positive number, got {scale!r}"
            )
        if self.order not in ("spatial", "raster"):
            raise ValueError(f"order must be 'spatial' or 'raster', got {self.order!r}")
        if self.override_uncond is not None and not isinstance(self.override_uncond, bool):
            raise ValueError(f"override_uncond must be None, True or False, got {self.override_uncond!r}")
        if self.override_uncond and not self.cross_attn_override:
            raise ValueError("override_uncond=True needs cross_attn_override=True (the full branch)")
        if self.cache and not self.cross_attn_override:
            raise ValueError(
                "cache=True caches the full branch's cross-attention: it needs cross_attn_override=True"
            )


class FreeSwim(SparseMethod):
    config_cls: ClassVar[type[FreeSwimConfig]] = FreeSwimConfig
    twin_branch: ClassVar[bool] = True

    def __init__(self, config: FreeSwimConfig, cache=None) -> None:
        super().__init__(config, cache)
        self.patch: dict[str, tuple[int, int]] = {}  # (rows, cols) per token, per transformer
        self.cross_layers: dict[str, int] = {}  # routed cross-attention blocks, per transformer
        self._cache_device: torch.device | None = None
        self._cached: dict[tuple[str, str], set[str]] = {}  # layers stored, per (transformer, branch)
        self._logged_dense_axes: set[tuple] = set()

    def refuses_correction(self, correction) -> str:
        return "FreeSwim's full-attention twin branch is its correction"

    # ------------------------------------------------------------------------------ settings
    def scale(self, scale: float | None, q: torch.Tensor) -> float:
        return self.attention_scale(q.shape[-1])

    def attention_scale(self, head_dim: int) -> float:
        scale = self.config.attention_scale
        if scale == "reference":
            return math.sqrt(_REFERENCE_LOG_RATIO / head_dim)
        if scale == "default":
            return head_dim**-0.5
        return float(scale)

    def window(self, call: CallContext) -> tuple[int, int]:
        """(rows, cols) of the window in tokens for this transformer."""
        cfg = self.config
        if cfg.window is not None:
            return cfg.window
        ph, pw = self.patch.get(call.transformer_name, (2, 2))
        base_h, base_w = cfg.base_resolution
        half_h = base_h // (cfg.vae_scale_factor * ph) // 2
        half_w = base_w // (cfg.vae_scale_factor * pw) // 2
        return 2 * half_h + 1, 2 * half_w + 1

    def covers(self, call: CallContext) -> bool:
        """Whether this call is at or below the base resolution (the window spans the grid) and
        therefore runs exactly dense."""
        rows, cols = self.window(call)
        return self.config.dense_at_base and rows >= call.grid[1] and cols >= call.grid[2]

    def phase(self, context: AttentionContext) -> tuple[str, int]:
        return ("dense", 0) if self.covers(context.call) else super().phase(context)

    def dual_path(self) -> bool:
        """Whether the twin branch runs at all (``cross_attn_override``)."""
        return self.config.cross_attn_override

    def window_alone_allowed(self) -> bool:
        """Whether the window may run without a twin branch on a family that has none."""
        return self.config.experimental and not self.config.cross_attn_override

    def overrides_uncond(self) -> bool:
        """Whether the unconditional pass takes the full branch's cross-attention."""
        choice = self.config.override_uncond
        return (not self.config.cache) if choice is None else choice

    def overrides(self, call: CallContext) -> bool:
        """Whether this call's cross-attention comes from the full branch (now or from the cache)."""
        return self.dual_path() and (call.cfg_branch != "uncond" or self.overrides_uncond())

    def wants_dual(self, call: CallContext | None) -> bool:
        """Whether this transformer call runs the window and the full branch together."""
        if call is None or not self.dual_path() or self.covers(call):
            return False
        if call.cfg_branch == "cond_uncond" and (self.config.cache or not self.overrides_uncond()):
            raise NotImplementedError(
                "FreeSwim treats the conditional and unconditional passes differently here (cache mode "
                "or override_uncond=False): it needs them as separate transformer calls (Wan pipelines "
                "do this)"
            )
        if not self.overrides(call):
            return False
        if not self.config.cache:
            return True
        guide = call.step_index % self.config.cache_steps == 0
        return guide or not self._has_cache(call)

    # ------------------------------------------------------------------------------ the window
    def window_layout(self, context: AttentionContext, device: torch.device) -> WindowLayout:
        cfg, grid = self.config, context.call.grid
        window = self.window(context.call)
        self._log_dense_axes(grid, window)
        key = ("freeswim", grid, window, device)
        return self.cache.get(
            key, lambda: window_layout(grid, window, cfg.inward, cfg.order, cfg.block_size, device)
        )

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        return self.window_layout(context, device).order

    def plan(self, x: Operands, context) -> Plan:
        wl = self.window_layout(context, x.q.device)
        if not x.num_text:
            return Plan(wl.layout, element_mask=wl.element_mask, kv_partial=wl.kv_partial)
        # Experimental joint models: every text key, text queries dense (the driver).
        key = ("freeswim_joint", context.call.grid, self.window(context.call), x.q.device, x.num_text)
        layout, element_mask, kv_partial = self.cache.get(key, lambda: _joint_layout(wl, x.num_text))
        return Plan(layout, element_mask=element_mask, kv_partial=kv_partial)

    def _log_dense_axes(self, grid: tuple[int, int, int], window: tuple[int, int]) -> None:
        key = (grid, window)
        if key in self._logged_dense_axes:
            return
        self._logged_dense_axes.add(key)
        for name, size, extent in (("rows", grid[1], window[0]), ("columns", grid[2], window[1])):
            if extent >= size:
                logger.info(
                    "FreeSwim: the window covers all %d %s of the grid; that axis is dense", size, name
                )

    # ------------------------------------------------------------------------------ cross-attention
    def cross_attention(self, q, k, v, scale, context: AttentionContext) -> torch.Tensor:
        """The override: the full items' cross-attention output for every item (spec 3.4, 3.5)."""
        call = context.call
        if self.covers(call):
            return dense_attention(q, k, v, scale=scale)
        key = (f"{call.transformer_name}.{context.layer.name}", call.cfg_branch)
        if TWIN_BRANCH.get():
            half = q.shape[0] // 2
            out = dense_attention(q[half:], k[half:], v[half:], scale=scale)
            if self.config.cache:
                self.state.get(*key)["out"] = self._to_cache(out, call)
                self._cached.setdefault((call.transformer_name, call.cfg_branch), set()).add(
                    context.layer.name
                )
            return torch.cat([out, out])
        entry = self.state.get(*key).get("out") if self.config.cache and self.overrides(call) else None
        if entry is not None and entry.shape[0] == q.shape[0]:
            return entry.to(q.device, non_blocking=True, copy=True)  # a fresh tensor, never the cache
        return dense_attention(q, k, v, scale=scale)

    def _has_cache(self, call: CallContext) -> bool:
        layers = self.cross_layers.get(call.transformer_name, 0)
        return layers > 0 and len(self._cached.get((call.transformer_name, call.cfg_branch), ())) >= layers

    def _to_cache(self, out: torch.Tensor, call: CallContext) -> torch.Tensor:
        if self._cache_device is None:
            self._cache_device = self._choose_cache_device(out, call)
        if self._cache_device.type == "cpu" and out.is_cuda:
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            return host.copy_(out, non_blocking=True)
        return out.detach().to(self._cache_device)

    def _choose_cache_device(self, out: torch.Tensor, call: CallContext) -> torch.device:
        """Where the cross-attention cache goes; a MemoryError naming sizes when it fits nowhere."""
        passes = 2 if self.overrides_uncond() else 1  # a cache per overridden CFG pass
        total = passes * cache_bytes(out, self.cross_layers.get(call.transformer_name, 1))
        device = self.config.cache_device
        if device == "same" or (device == "auto" and not out.is_cuda):
            return out.device
        if device == "auto":
            free, _ = torch.cuda.mem_get_info(out.device)
            if total <= free // 2:
                return out.device
        available = _host_available_bytes()
        if available is not None and total > available:
            raise MemoryError(
                f"FreeSwim cache mode needs {total / 2**30:.1f} GiB for the cross-attention cache "
                f"({passes} CFG pass(es) x {self.cross_layers.get(call.transformer_name, 1)} blocks x "
                f"{tuple(out.shape)} "
                f"{out.dtype}) and neither the GPU nor host memory ({available / 2**30:.1f} GiB free) "
                "holds it; use cache=False"
            )
        return torch.device("cpu")

    def reset(self) -> None:
        super().reset()
        self._cache_device = None
        self._cached.clear()


def cache_bytes(out: torch.Tensor, layers: int) -> int:
    """Bytes of the cross-attention cache: one output like ``out`` per block."""
    return layers * out.numel() * out.element_size()


def _host_available_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def _joint_layout(wl, n_text: int) -> tuple[BlockLayout, ElementMask, torch.Tensor]:
    """Experimental joint models: the window layout with every text key block appended to every
    query tile (text keys start on a tile boundary, see ``keys_with_text``).

    The predicate is never evaluated on text tiles (not flagged), so its key coordinates there are
    placeholders. Static per grid: the method caches the result.
    """
    bs = wl.layout.block_size_k
    mask = wl.layout.to_block_mask()
    text_blocks = torch.ones(*mask.shape[:3], num_blocks(n_text, bs), dtype=torch.bool, device=mask.device)
    layout = BlockLayout.from_block_mask(torch.cat([mask, text_blocks], -1), wl.layout.block_size_q, bs)
    partial = torch.zeros(layout.num_q_blocks, layout.num_k_blocks + 1, dtype=torch.bool, device=mask.device)
    valid = torch.arange(wl.layout.width, device=mask.device) < wl.layout.kv_counts[0, 0, :, None]
    spare = layout.num_k_blocks  # entries that set nothing go to a spare last column
    target = torch.where(valid & wl.kv_partial[0, 0], wl.layout.kv_indices[0, 0].long(), spare)
    partial.scatter_(1, target, True)  # the video tiles that need the predicate; text tiles never
    q_block = torch.arange(layout.num_q_blocks, device=mask.device).view(1, 1, -1, 1)
    kv_partial = partial[q_block, layout.kv_indices.long()]
    em = wl.element_mask
    placeholders = num_blocks(em.seq_k, bs) * bs - em.seq_k + n_text
    k_coord = torch.cat([em.k_coord, em.k_coord.new_zeros(em.ndim, placeholders)], dim=1)
    return layout, ElementMask(em.q_lo, em.q_hi, k_coord, em.kind), kv_partial


register_method(FreeSwimConfig, FreeSwim)
