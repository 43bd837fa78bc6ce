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
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar

import torch

from ..config import FreeSwimConfig
from ..context import CURRENT_CALL, AttentionContext, CallContext, LayerContext
from ..kernels import BlockLayout, ElementMask, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod
from .freeswim_layout import window_layout
from .joint import keys_with_text, split_joint

logger = logging.getLogger(__name__)

#: True while a doubled (window + full) transformer forward runs.
DUAL_PATH: ContextVar[bool] = ContextVar("dit_accel_freeswim_dual", default=False)

#: The reference's scale: its training frame of 1560 tokens and a token ratio of 2, for any model.
_REFERENCE_LOG_RATIO = math.log(2 * 1560) / math.log(1560)


class FreeSwim(SparseMethod):
    config_cls: ClassVar[type[FreeSwimConfig]] = FreeSwimConfig

    def __init__(self, config: FreeSwimConfig) -> None:
        super().__init__(config)
        self._patch: dict[str, tuple[int, int]] = {}
        self._cross_layers: dict[str, int] = {}
        self._cache_device: torch.device | None = None
        self._cached: dict[tuple[str, str], set[str]] = {}  # layers stored, per (transformer, branch)
        self._logged_dense_axes: set[tuple] = set()
        self._joint_layouts: dict[tuple, tuple] = {}  # experimental joint models, per grid

    # ------------------------------------------------------------------------------ settings
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
        ph, pw = self._patch.get(call.transformer_name, (2, 2))
        base_h, base_w = cfg.base_resolution
        half_h = base_h // (cfg.vae_scale_factor * ph) // 2
        half_w = base_w // (cfg.vae_scale_factor * pw) // 2
        return 2 * half_h + 1, 2 * half_w + 1

    def dual_path(self) -> bool:
        return self.config.cross_attn_override

    def overrides_uncond(self) -> bool:
        """Whether the unconditional pass takes the full branch's cross-attention."""
        choice = self.config.override_uncond
        return (not self.config.cache) if choice is None else choice

    def overrides(self, call: CallContext) -> bool:
        """Whether this call's cross-attention comes from the full branch (now or from the cache)."""
        return self.dual_path() and (call.cfg_branch != "uncond" or self.overrides_uncond())

    def wants_dual(self, call: CallContext | None) -> bool:
        """Whether this transformer call runs the window and the full branch together."""
        if call is None or not self.dual_path():
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

    # ------------------------------------------------------------------------------ install
    def install_extras(self, installation: Any, backend: Any) -> list[Callable[[], None]]:
        """Wan: route ``attn2`` through the backend and double the batch in the forward."""
        transformer, adapter = installation.transformer, installation.adapter
        patch = transformer.config.patch_size
        self._patch[installation.name] = (
            (int(patch[-2]), int(patch[-1])) if isinstance(patch, list | tuple) else (int(patch), int(patch))
        )
        if adapter.family != "Wan":
            if not self.config.experimental:
                raise NotImplementedError(
                    f"FreeSwim is implemented for Wan (the reference); {adapter.family} has no "
                    "cross-attention to override. Pass experimental=True to run the window alone."
                )
            if self.config.cross_attn_override:
                raise NotImplementedError(
                    f"FreeSwim's dual path needs Wan's separate text cross-attention; on {adapter.family} "
                    "use experimental=True with cross_attn_override=False (the window alone)"
                )
            return []
        if not self.dual_path():
            return []
        cross = [(f"blocks.{i}.attn2", block.attn2) for i, block in enumerate(transformer.blocks)]
        if any(getattr(module, "add_k_proj", None) is not None for _, module in cross):
            raise NotImplementedError(
                "FreeSwim's cross-attention override is implemented for Wan text-to-video; this model's "
                "cross-attention also attends image tokens (I2V). Use cross_attn_override=False."
            )
        undo: list[Callable[[], None]] = []
        for index, (path, module) in enumerate(cross):
            undo.append(adapter.route(module, backend))
            installation.hook_layer(module, LayerContext(path, index, "cross"))
        self._cross_layers[installation.name] = len(cross)
        undo.append(_double_batch(transformer, self))
        return undo

    # ------------------------------------------------------------------------------ attention
    def __call__(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        if context.layer.kind == "cross":
            return self._cross_attention(q, k, v, scale, context), None
        return super().__call__(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        scale = self.attention_scale(q.shape[-1])
        if not DUAL_PATH.get():
            return self._window_attention(q, k, v, scale, key_padding_mask, context)
        half = q.shape[0] // 2
        kpm = (None, None) if key_padding_mask is None else (key_padding_mask[:half], key_padding_mask[half:])
        window_out, density = self._window_attention(q[:half], k[:half], v[:half], scale, kpm[0], context)
        full_out = dense_attention(q[half:], k[half:], v[half:], scale=scale, key_padding_mask=kpm[1])
        return torch.cat([window_out, full_out]), (density + 1.0) / 2

    def _window_attention(self, q, k, v, scale, key_padding_mask, context: AttentionContext):
        cfg, call = self.config, context.call
        grid = call.grid
        window = self.window(call)
        self._log_dense_axes(grid, window)
        wl = window_layout(grid, window, cfg.inward, cfg.order, cfg.block_size, q.device)
        split = split_joint(q.shape[1], call)
        qv, kv, vv = (x[:, split.video].index_select(1, wl.gather) for x in (q, k, v))
        video_ok = None if key_padding_mask is None else key_padding_mask[:, split.video][:, wl.gather]
        layout, element_mask, kv_partial = wl.layout, wl.element_mask, wl.kv_partial
        key_ok = video_ok
        if split.num_text:  # experimental joint models: every text key, text queries dense
            key = (grid, window, cfg.inward, cfg.order, cfg.block_size, q.device, split.num_text)
            if key not in self._joint_layouts:
                self._joint_layouts[key] = _joint_layout(wl, split.num_text)
            layout, element_mask, kv_partial = self._joint_layouts[key]
            text_ok = None if key_padding_mask is None else key_padding_mask[:, split.text]
            kv, vv, key_ok = keys_with_text(
                kv, vv, k[:, split.text], v[:, split.text], video_ok, text_ok, cfg.block_size
            )
        out = block_sparse_attention(
            qv,
            kv,
            vv,
            layout,
            scale=scale,
            key_padding_mask=key_ok,
            element_mask=element_mask,
            kv_partial=kv_partial,
            backend=cfg.kernel_backend,
        )
        video_out = out.index_select(1, wl.inverse)
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
        return split.join(video_out, text_out, call.text_position == "first"), layout.density()

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
    def _cross_attention(self, q, k, v, scale, context: AttentionContext) -> torch.Tensor:
        """The override: the full items' cross-attention output for every item (spec 3.4, 3.5)."""
        call = context.call
        key = (f"{call.transformer_name}.{context.layer.name}", call.cfg_branch)
        if DUAL_PATH.get():
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
        layers = self._cross_layers.get(call.transformer_name, 0)
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
        total = passes * cache_bytes(out, self._cross_layers.get(call.transformer_name, 1))
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
                f"({passes} CFG pass(es) x {self._cross_layers.get(call.transformer_name, 1)} blocks x "
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


def _double_batch(transformer: torch.nn.Module, method: FreeSwim) -> Callable[[], None]:
    """Hook the transformer call: on dual-path calls, run window and full items in one batch.

    Every tensor argument whose first dimension is the latent batch is repeated (hidden states,
    timesteps, text and image embeddings); the output keeps the first half. Forward hooks rather
    than a wrapped ``forward``: they run outside a compiled transformer (the decision and the flag
    live in context variables, which Dynamo cannot trace), so compiling adds no graph break.
    """
    import inspect

    signature = inspect.signature(transformer.forward)
    running: list[tuple[Any, int] | None] = []  # per call in progress: (flag token, batch) or None

    @torch.compiler.disable
    def enter(mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not method.wants_dual(CURRENT_CALL.get()):
            running.append(None)
            return None
        bound = signature.bind(*args, **kwargs)
        batch = bound.arguments["hidden_states"].shape[0]
        for name, value in bound.arguments.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                bound.arguments[name] = torch.cat([value, value])
        running.append((DUAL_PATH.set(True), batch))
        return bound.args, bound.kwargs

    @torch.compiler.disable
    def leave(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        entry = running.pop() if running else None
        if entry is None:
            return None
        token, batch = entry
        DUAL_PATH.reset(token)
        if output is None:  # the forward raised
            return None
        if isinstance(output, tuple):
            return (output[0][:batch], *output[1:])
        output.sample = output.sample[:batch]
        return output

    # Registered after the session's hooks: the call context is set when ``enter`` runs.
    pre = transformer.register_forward_pre_hook(enter, with_kwargs=True)
    post = transformer.register_forward_hook(leave, with_kwargs=True, always_call=True)

    def undo() -> None:
        pre.remove()
        post.remove()

    return undo


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
