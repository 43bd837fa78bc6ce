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
from typing import Any, ClassVar

import torch

from ..config import CorrectionConfig, SparseAttentionConfig
from ..context import TWIN_BRANCH, AttentionContext
from ..kernels import dense_attention
from .corrections import build_corrector
from .order import TokenOrder
from .plan import Corrected, Operands, Plan, keys_with_text, run_kernel, split_joint


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
        self.config = config
        self.state = StateStore()
        self.cache = GridCache() if cache is None else cache
        self.corrector = build_corrector(self, config.correction)
        self.video_corrector = self.corrector
        if isinstance(config.correction, str) and config.correction == "default":
            video = self.own_video_correction()
            if video != self.own_correction():
                self.video_corrector = build_corrector(self, video)
        #: Layers a policy kept dense, with the reason (shown by the report).
        self.dense_reasons: dict[str, str] = {}

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
        corrector = self.corrector_for(context)
        if corrector is not None:
            return corrector.phase(context)
        return "sparse", 0

    def own_video_correction(self) -> CorrectionConfig | None:
        """The default correction on video grids (more than one latent frame): ``own_correction``
        unless the video proxy measured another one best for this method."""
        return self.own_correction()

    def corrector_for(self, context: AttentionContext):
        """The corrector of this call: with ``correction="default"`` the grid picks the method's
        video or one-frame default; an explicit choice applies to every grid."""
        return self.video_corrector if context.call.grid[0] > 1 else self.corrector

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
        corrector = self.corrector_for(context)
        if corrector is None:
            result = Corrected(run_kernel(x, plan, self.config.kernel_backend), plan.layout.density())
        else:
            result = corrector.correct(x, plan, context, kind, since)
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
        self.dense_reasons.clear()

    def close(self) -> None:
        """Free everything: per-generation state and per-grid caches."""
        self.reset()
        self.cache.clear()
