"""The method contract and the one driver every method runs through.

A method is four small things:

- a token **order** per grid (``order``; built once per grid, cached by the session),
- a **planner** (``plan``: ordered queries and keys -> a ``Plan``: the ``BlockLayout`` with any
  partial-tile predicate),
- an optional **corrector** (``correction``: sparse output + the kernel's row statistics + its
  own state -> corrected output; ``corrections.py``),
- a **schedule** (``phase``: which steps and layers run dense or refresh).

The driver (``SparseMethod.__call__``) does everything else, once, in this order: schedule ->
split video/text -> order -> keys with text -> plan -> kernel (with the statistics the corrector
asks for) -> correct -> unorder -> dense text rows -> density. No method repeats any of it. A
method never sees diffusers types: everything model-specific arrives resolved in its config (the
adapter fills family defaults at enable time) or through the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import CorrectionConfig, SparseAttentionConfig
from ..context import TWIN_BRANCH, AttentionContext
from ..kernels import BlockLayout, ElementMask, attention_with_stats, block_sparse_attention, dense_attention
from ..kernels.row_chunk_mask import RowChunkMask
from .joint import keys_with_text, split_joint
from .order import TokenOrder


class StateStore:
    """Per-(layer, CFG branch) tensors a method keeps across denoising steps.

    Freed on a new generation and when sparse attention is disabled; its size is reported.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def get(self, layer: str, branch: str) -> dict[str, torch.Tensor]:
        return self._entries.setdefault((layer, branch), {})

    def clear(self) -> None:
        self._entries.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self._entries.values() for t in entry.values())

    def __len__(self) -> int:
        return len(self._entries)


class GridCache:
    """What a method builds once per grid (orders, static layouts, partitions), owned by the
    session and freed when sparse attention is disabled."""

    def __init__(self) -> None:
        self._entries: dict[tuple, Any] = {}

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key not in self._entries:
            self._entries[key] = build()
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Plan:
    """What the kernel computes for one call.

    Queries are the video slots; keys are the video slots padded to whole key blocks, then the
    text keys. ``element_mask``/``kv_partial``: the exact rule inside partial tiles (FreeSwim's
    window, Re-ttention's band); ``row_chunk_mask``: VMoBA's per-query selection (parity mode,
    PyTorch path); ``pooled``: statistics the planner computed that a corrector may reuse.
    """

    layout: BlockLayout
    element_mask: ElementMask | None = None
    kv_partial: torch.Tensor | None = None
    row_chunk_mask: RowChunkMask | None = None
    pooled: Any = None


@dataclass(frozen=True)
class Operands:
    """One call's video part in slot order, its text part, and the kernel's key set.

    q, k, v: (B, S, H, D) video slots; video_ok: bool (B, S) real, unpadded keys; text_k,
    text_v: (B, T, H, D); text_ok: bool (B, T); keys, values: (B, S_k + T, H, D) with
    key_valid (B, S_k + T), ``S_k`` = S rounded up to whole ``block_k`` blocks.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    video_ok: torch.Tensor
    text_k: torch.Tensor
    text_v: torch.Tensor
    text_ok: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    key_valid: torch.Tensor
    scale: float
    block_q: int
    block_k: int

    @property
    def num_text(self) -> int:
        return self.text_k.shape[1]


@dataclass(frozen=True)
class Corrected:
    """A corrector's result: the video output in slot order, the density it cost, and the scale
    the reference applies to the (dense) text rows (Re-ttention's drift; 1 otherwise)."""

    out: torch.Tensor
    density: torch.Tensor | float
    text_scale: float = 1.0


def run_kernel(x: Operands, plan: Plan, backend: str, *, stats: bool = False):
    """The block-sparse kernel over ``plan``; the output, or an ``AttentionResult`` with ``stats``."""
    masks = dict(
        scale=x.scale,
        key_padding_mask=x.key_valid,
        element_mask=plan.element_mask,
        kv_partial=plan.kv_partial,
    )
    if plan.row_chunk_mask is not None:  # per-row selection: only the PyTorch path has it
        from ..kernels.reference import block_sparse_attention_torch

        result = block_sparse_attention_torch(
            x.q, x.keys, x.values, plan.layout, row_chunk_mask=plan.row_chunk_mask, **masks
        )
        return result if stats else result.out
    if stats:
        return attention_with_stats(x.q, x.keys, x.values, plan.layout, backend=backend, **masks)
    return block_sparse_attention(x.q, x.keys, x.values, plan.layout, backend=backend, **masks)


class SparseMethod:
    """Base class: the driver, a default (frame-major) order and the shared schedule."""

    config_cls: ClassVar[type[SparseAttentionConfig]] = SparseAttentionConfig
    #: Whether the method needs the adapter's full-attention twin branch (FreeSwim).
    twin_branch: ClassVar[bool] = False

    def __init__(self, config: SparseAttentionConfig, cache: GridCache | None = None) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        from .corrections import build_corrector

        self.config = config
        self.state = StateStore()
        self.cache = GridCache() if cache is None else cache
        self.corrector = build_corrector(self, config)

    @property
    def name(self) -> str:
        return self.config.method

    # ------------------------------------------------------------------ the contract
    def order(self, context: AttentionContext, device: torch.device, num_text: int = 0) -> TokenOrder:
        """The slot order of this call's video tokens (default: frame-major); ``num_text`` text
        keys follow the video keys."""
        n = context.call.num_video_tokens
        return self.cache.get(("frame_major", n, device), lambda: TokenOrder.frame_major(n, device))

    def key_block(self, context: AttentionContext) -> int:
        """Key block size of this call's layout (default: ``block_size``)."""
        return self.config.block_size

    def plan(self, x: Operands, context: AttentionContext) -> Plan:
        raise NotImplementedError

    def own_correction(self) -> CorrectionConfig | None:
        """The correction ``correction="default"`` means for this method (none unless overridden)."""
        return None

    def refuses_correction(self, correction: CorrectionConfig) -> str:
        """Why ``correction`` cannot work with this method ("" when it can)."""
        return ""

    def phase(self, context: AttentionContext) -> tuple[str, int]:
        """("dense" | "sparse" | "refresh", sparse steps since the last refresh) for this call."""
        cfg = self.config
        if context.call.step_index < (cfg.dense_steps or 0) or context.layer.index in (
            cfg.dense_layers or ()
        ):
            return "dense", 0
        if self.corrector is not None:
            return self.corrector.phase(context)
        return "sparse", 0

    def keeps_dense(self, context: AttentionContext) -> bool:
        return self.phase(context)[0] == "dense"

    # ------------------------------------------------------------------ the driver
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float | None,
        key_padding_mask: torch.Tensor | None,
        context: AttentionContext,
    ) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """Attention output (B, S, H, D) and the fraction of query x key blocks computed."""
        if context.layer.kind == "cross":
            return self.cross_attention(q, k, v, scale, context), None
        if TWIN_BRANCH.get() and self.phase(context)[0] != "dense":
            # The adapter doubled the batch: [method items, full-attention items].
            half = q.shape[0] // 2
            masks = (
                (None, None)
                if key_padding_mask is None
                else (key_padding_mask[:half], key_padding_mask[half:])
            )
            out, density = self.attend(
                q[:half], k[:half], v[:half], scale=scale, key_padding_mask=masks[0], context=context
            )
            full = dense_attention(
                q[half:], k[half:], v[half:], scale=self.scale(scale, q), key_padding_mask=masks[1]
            )
            return torch.cat([out, full]), (density + 1.0) / 2
        return self.attend(q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    def scale(self, scale: float | None, q: torch.Tensor) -> float:
        """The softmax scale (FreeSwim overrides it)."""
        return q.shape[-1] ** -0.5 if scale is None else scale

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        kind, since = self.phase(context)
        if kind == "dense":  # warm-up steps and protected layers: exactly the model's attention
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        scale = self.scale(scale, q)
        x, order, split = self.prepare(q, k, v, scale, key_padding_mask, context)
        plan = self.plan(x, context)
        if self.corrector is None:
            result = Corrected(run_kernel(x, plan, self.config.kernel_backend), plan.layout.density())
        else:
            result = self.corrector.correct(x, plan, context, kind, since)
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
            if result.text_scale != 1.0:
                text_out = text_out * result.text_scale
        video = order.from_slots(result.out)
        return split.join(video, text_out, context.call.text_position == "first"), result.density

    def prepare(self, q, k, v, scale: float, key_padding_mask, context: AttentionContext):
        """(Operands, order, split) of one call: video slots in this method's order, text, the
        kernel's key set; what ``plan`` and a corrector receive."""
        split = split_joint(q.shape[1], context.call)
        order = self.order(context, q.device, split.num_text)
        batch, block_k = q.shape[0], self.key_block(context)
        video_ok = order.valid_slots(batch)
        text_ok = torch.ones(batch, split.num_text, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            video_ok = video_ok & order.to_slots(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]
        qv, kv, vv = (order.to_slots(t[:, split.video]) for t in (q, k, v))
        text_k, text_v = k[:, split.text], v[:, split.text]
        keys, values, key_valid = keys_with_text(kv, vv, text_k, text_v, video_ok, text_ok, block_k)
        x = Operands(
            qv,
            kv,
            vv,
            video_ok,
            text_k,
            text_v,
            text_ok,
            keys,
            values,
            key_valid,
            scale,
            self.config.block_size,
            block_k,
        )
        return x, order, split

    def cross_attention(self, q, k, v, scale, context: AttentionContext) -> torch.Tensor:
        """Routed cross-attention (only methods with a twin branch route it)."""
        return dense_attention(q, k, v, scale=scale)

    def reset(self) -> None:
        """Forget everything tied to one generation."""
        self.state.clear()

    def close(self) -> None:
        """Free everything: per-generation state and per-grid caches."""
        self.reset()
        self.cache.clear()
