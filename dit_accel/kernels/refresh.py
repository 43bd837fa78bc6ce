"""Re-ttention's refresh step: dense attention plus the sparse layout's share of it, in one pass.

At a refresh step Re-ttention needs the exact dense output ``O_full = softmax(s) V`` and, for the
same rows, the fraction ``rho`` of the softmax mass that the sparse layout keeps and the kept keys'
contribution ``rho * O_S`` (so that ``O_full - rho * O_S`` is the residual to cache). All three
share one row max, so one pass over every key with two accumulators gives them exactly; a separate
sparse pass would recompute the kept scores. ``ratio_from_lse`` is the two-pass fallback for kernels
that only return log-sum-exps.

Like ``reference.py`` this works per chunk of query blocks (and, when one block row is too large,
per group of batch*head rows), so memory stays bounded and no (S x S) matrix is ever built.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .element_mask import ElementMask
from .layout import BlockLayout, num_blocks
from .reference import _CHUNK_BYTES, _key_validity, _pad_blocks, _partial_flags, check_attention_inputs

__all__ = ["RefreshResult", "ratio_from_lse", "refresh_attention_torch"]


class RefreshResult(NamedTuple):
    """Outputs of a refresh step.

    ``out_full``: dense attention ``(B, S_q, H, D)`` in ``q``'s dtype.
    ``rho``: ``(B, H, S_q)``, kept softmax mass over total mass, float32 (float64 for float64
        inputs); 0 for a row with no kept key (and for a row with no key at all).
    ``kept_out``: ``rho * O_S`` ``(B, S_q, H, D)``, the kept keys' part of ``out_full``, ``q``'s dtype.
    A row with no valid key at all has ``out_full = kept_out = 0`` and ``rho = 0``.
    """

    out_full: torch.Tensor
    rho: torch.Tensor
    kept_out: torch.Tensor


def ratio_from_lse(lse_kept: torch.Tensor, lse_full: torch.Tensor) -> torch.Tensor:
    """``rho = exp(lse_kept - lse_full)``: the two-pass formula (rho is invariant to the row max).

    A row with no kept key (``lse_kept = -inf``) gets 0, also when ``lse_full`` is -inf too, where
    the plain formula would give NaN.
    """
    kept = lse_kept > float("-inf")
    diff = torch.where(kept, lse_kept - lse_full, torch.zeros_like(lse_kept))
    return torch.where(kept, torch.exp(diff), torch.zeros_like(diff))


def _block_masks(
    layout: BlockLayout, partial: torch.Tensor | None, bh: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Boolean ``(B*H, n_qb, n_kb)`` listed blocks, and the listed blocks the predicate applies to.

    Built by scatter (no loop over blocks, no host sync); padding entries go to a spare column
    that is cut off, exactly as ``BlockLayout.to_block_mask`` does.
    """
    n_qb, n_kb = layout.num_q_blocks, layout.num_k_blocks
    listed = layout.to_block_mask().reshape(bh, n_qb, n_kb)
    if partial is None:
        return listed, None
    valid = torch.arange(layout.width, device=layout.device) < layout.kv_counts.unsqueeze(-1)
    target = torch.where(valid & partial, layout.kv_indices.long(), n_kb).reshape(bh, n_qb, -1)
    flagged = torch.zeros(bh, n_qb, n_kb + 1, dtype=torch.bool, device=layout.device)
    flagged.scatter_(-1, target, True)
    return listed, flagged[..., :n_kb]


def refresh_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
) -> RefreshResult:
    """Dense attention, ``rho`` and ``rho * O_S`` for ``layout`` in one pass over all keys.

    Arguments mean what they mean for ``block_sparse_attention_torch``: a key is *kept* for query
    ``i`` when its block is listed for ``i``'s query block, it passes ``element_mask`` where
    ``kv_partial`` flags that entry (every entry when ``kv_partial`` is None), and it is not
    padding. Padding keys (``key_padding_mask`` False) count in neither sum.

    No host synchronisation: unlike the sparse path there is no list width to trim to, and the
    padding mask is applied whenever padding can exist (known from the shapes alone).
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    layout.check_compatible(seq_q, seq_k, batch, heads)
    partial = _partial_flags(element_mask, kv_partial, layout, seq_q, seq_k, batch, heads)
    bq, bk = layout.block_size_q, layout.block_size_k
    n_qb, n_kb = num_blocks(seq_q, bq), num_blocks(seq_k, bk)
    n_keys = n_kb * bk
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device
    bh = batch * heads

    qb = _pad_blocks(q.to(compute), n_qb, bq) * scale  # (bh, n_qb, bq, dim)
    kf = _pad_blocks(k.to(compute), n_kb, bk).reshape(bh, n_keys, dim)
    vf = _pad_blocks(v.to(compute), n_kb, bk).reshape(bh, n_keys, dim)
    key_ok = _key_validity(batch, heads, seq_k, n_kb, bk, key_padding_mask, dev).reshape(bh, 1, n_keys)
    mask_keys = key_padding_mask is not None or n_keys != seq_k
    listed, flagged = _block_masks(layout.expand(batch, heads), partial, bh)

    q_pos = torch.arange(n_qb * bq, device=dev).clamp_max(seq_q - 1).view(n_qb, bq, 1)
    k_pos = torch.arange(n_keys, device=dev).clamp_max(seq_k - 1).view(1, n_keys)

    # Per query-block row of one batch*head: scores, kept probabilities, kept flags, predicate.
    elem = torch.finfo(compute).bits // 8
    per_row = bq * n_keys * (2 * elem + 1 + (2 if element_mask is not None else 0))
    if per_row * bh <= _CHUNK_BYTES:
        group, chunk = bh, max(1, min(n_qb, _CHUNK_BYTES // (per_row * bh)))
    else:
        group, chunk = max(1, _CHUNK_BYTES // per_row), 1

    out_full = torch.empty(bh, n_qb, bq, dim, dtype=compute, device=dev)
    kept_out = torch.empty_like(out_full)
    rho = torch.empty(bh, n_qb, bq, dtype=compute, device=dev)
    for start in range(0, n_qb, chunk):
        stop = min(start + chunk, n_qb)
        span = stop - start
        pred = None
        if element_mask is not None:  # shared by every batch element and head
            pred = element_mask.allowed(q_pos[start:stop], k_pos.view(1, 1, n_keys)).view(
                1, span, bq, n_kb, bk
            )
        for g0 in range(0, bh, group):
            g1 = min(g0 + group, bh)
            n = g1 - g0
            scores = torch.bmm(qb[g0:g1, start:stop].reshape(n, span * bq, dim), kf[g0:g1].transpose(1, 2))
            if mask_keys:
                scores.masked_fill_(~key_ok[g0:g1], float("-inf"))
            m = scores.amax(-1, keepdim=True)
            # A row with no key at all has max -inf; shifting by 0 keeps exp() at 0, not NaN.
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = scores.sub_(m).exp_()
            l_all = p.sum(-1, keepdim=True)
            acc_all = torch.bmm(p, vf[g0:g1])

            kept = listed[g0:g1, start:stop, None, :, None]  # (n, span, 1, n_kb, 1)
            if pred is not None:
                kept = kept & (pred | ~flagged[g0:g1, start:stop, None, :, None])
            kept = kept.expand(n, span, bq, n_kb, bk).reshape(n, span * bq, n_keys)
            p_kept = p.mul_(kept)  # padding keys already have p = 0
            l_kept = p_kept.sum(-1, keepdim=True)
            acc_kept = torch.bmm(p_kept, vf[g0:g1])

            inv = torch.where(l_all > 0, l_all, torch.ones_like(l_all)).reciprocal_()
            out_full[g0:g1, start:stop] = (acc_all * inv).view(n, span, bq, dim)
            kept_out[g0:g1, start:stop] = (acc_kept * inv).view(n, span, bq, dim)
            rho[g0:g1, start:stop] = (l_kept * inv).view(n, span, bq)

    def to_bshd(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n_qb * bq, dim)[:, :, :seq_q].transpose(1, 2).to(q.dtype)

    rho = rho.reshape(batch, heads, n_qb * bq)[..., :seq_q]
    return RefreshResult(to_bshd(out_full), rho, to_bshd(kept_out))
