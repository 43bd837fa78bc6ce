"""Block-sparse attention kernels behind one functional entry point.

``block_sparse_attention`` is the contract every method calls. ``backend="auto"`` picks the
Triton kernel for CUDA tensors when Triton works (and supports the inputs), and the pure-PyTorch
path everywhere else. Triton is imported lazily, on the first call that could use it, so importing
this package needs neither Triton nor a GPU.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from .dense import dense_attention
from .element_mask import ElementMask
from .layout import BlockLayout, num_blocks
from .reference import AttentionResult, block_sparse_attention_torch
from .refresh import RefreshResult, refresh_attention_torch

Backend = Literal["auto", "triton", "torch"]

__all__ = [
    "AttentionResult",
    "BlockLayout",
    "ElementMask",
    "RefreshResult",
    "attention_with_stats",
    "block_sparse_attention",
    "dense_attention",
    "num_blocks",
    "refresh_attention",
    "triton_available",
]

_log = logging.getLogger(__name__)
_TRITON = None  # the imported triton_attention module, or the import error (first use)


def _triton_module():
    """The Triton kernel module, or None when Triton cannot be imported (reason logged once)."""
    global _TRITON
    if _TRITON is None:
        try:
            from . import triton_attention

            _TRITON = triton_attention
        except Exception as exc:  # ImportError, or a broken install raising anything at import
            _TRITON = exc
            _log.info(
                "dit_accel: Triton unavailable (%s: %s); block-sparse attention uses the PyTorch path",
                type(exc).__name__,
                exc,
            )
    return None if isinstance(_TRITON, Exception) else _TRITON


def triton_available() -> bool:
    """True when the Triton kernel module imports (not whether a GPU is present)."""
    return _triton_module() is not None


def _use_triton(q: torch.Tensor, layout: BlockLayout, scale: float | None, backend: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto" and not q.is_cuda:
        return False
    mod = _triton_module()
    if mod is None:
        if backend == "triton":
            raise RuntimeError(
                f"backend='triton' but Triton failed to import: {_TRITON!r}; install it with "
                "pip install 'dit-accel[triton]' (Linux CUDA builds of torch bring it), or use 'torch'"
            )
        return False
    if backend == "triton":
        if not q.is_cuda and not mod.interpreter_active():
            raise RuntimeError(
                "backend='triton' needs CUDA tensors; for CPU tensors run Triton's "
                "interpreter (set TRITON_INTERPRET=1 before triton is first imported), "
                "or use backend='torch'"
            )
        mod.check_supported(q, layout, scale)  # raises a clear TypeError/ValueError
        return True
    try:
        mod.check_supported(q, layout, scale)
    except (TypeError, ValueError) as exc:
        _log.debug("dit_accel: PyTorch path for this call: %s", exc)
        return False
    return True


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention over the union of the key blocks listed for each query block.

    Args:
        q: (batch, seq_q, heads, head_dim).
        k, v: (batch, seq_k, heads, head_dim); same dtype and device as ``q``.
        layout: which key blocks each (batch, head, query block) attends; see ``BlockLayout``.
            Sequence lengths need not be multiples of the block sizes.
        scale: softmax scale; default ``head_dim ** -0.5``.
        key_padding_mask: optional bool (batch, seq_k), True = a real key, False = padding.
        element_mask: optional per-token predicate inside partially attended tiles; see
            ``ElementMask``.
        kv_partial: bool, shaped like ``layout.kv_indices`` (B/H may be 1): the entries the
            ``element_mask`` applies to (the others are attended whole). None = every entry;
            ``element_mask.kv_partial(layout)`` gives the same result with full tiles left fast.
        return_lse: also return the natural-log sum-exp per row, fp32, (batch, heads, seq_q).
        backend: "auto", "triton" or "torch". "triton" on CPU tensors runs only under Triton's
            interpreter (TRITON_INTERPRET=1), and raises a clear error otherwise.

    Returns:
        The output (batch, seq_q, heads, head_dim) in ``q``'s dtype, and the LSE if asked.
        A row whose list is empty (or whose keys are all padding) gives zeros and LSE = -inf.
    """
    result = _dispatch(
        q,
        k,
        v,
        layout,
        scale,
        key_padding_mask,
        element_mask,
        kv_partial,
        backend,
        stats="lse" if return_lse else "none",
    )
    return (result.out, result.lse) if return_lse else result.out


def attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> AttentionResult:
    """Like ``block_sparse_attention`` but returns output, LSE, row max and row sum together."""
    return _dispatch(
        q,
        k,
        v,
        layout,
        scale,
        key_padding_mask,
        element_mask,
        kv_partial,
        backend,
        stats="all",
    )


def _dispatch(
    q, k, v, layout, scale, key_padding_mask, element_mask, kv_partial, backend, *, stats: str
) -> AttentionResult:
    masks = dict(key_padding_mask=key_padding_mask, element_mask=element_mask, kv_partial=kv_partial)
    if _use_triton(q, layout, scale, backend):
        return _triton_module().triton_block_sparse_attention(
            q, k, v, layout, scale=scale, stats=stats, **masks
        )
    return block_sparse_attention_torch(q, k, v, layout, scale=scale, **masks)


def refresh_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> RefreshResult:
    """Dense output, the layout's share rho of each row's softmax mass, and rho x O_S (Re-ttention).

    One pass over every key with two accumulators on both paths (``kernels.refresh`` in PyTorch,
    ``kernels.triton_refresh`` in Triton): about the cost of one dense attention plus a P V
    product on the kept tiles. Arguments as for ``block_sparse_attention``; see ``RefreshResult``.
    """
    masks = dict(key_padding_mask=key_padding_mask, element_mask=element_mask, kv_partial=kv_partial)
    if _use_triton(q, layout, scale, backend):
        from .triton_refresh import triton_refresh_attention

        return triton_refresh_attention(q, k, v, layout, scale=scale, **masks)
    return refresh_attention_torch(q, k, v, layout, scale=scale, **masks)
