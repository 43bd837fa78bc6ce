"""Tile primitives shared by the Triton attention kernels (``triton_attention``, ``triton_refresh``).

Each is a ``@triton.jit`` function inlined into its caller, so splitting them out costs nothing at
run time; it keeps the two kernels' score, mask and P V arithmetic identical by construction.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_LN2 = tl.constexpr(LN2)  # globals read inside a kernel must be constexpr


@triton.jit
def _box_term(lo_ptr, hi_ptr, kc_ptr, d, rows, cols, seq_q, seq_k):
    """Coordinate d's part of the ElementMask predicate: lo[d, q] <= coord[d, k] < hi[d, q]."""
    lo = tl.load(lo_ptr + d * seq_q + rows, mask=rows < seq_q, other=0)
    hi = tl.load(hi_ptr + d * seq_q + rows, mask=rows < seq_q, other=0)
    kc = tl.load(kc_ptr + d * seq_k + cols, mask=cols < seq_k, other=0)
    return (kc[None, :] >= lo[:, None]) & (kc[None, :] < hi[:, None])


@triton.jit
def _element_predicate(lo_ptr, hi_ptr, kc_ptr, rows, cols, seq_q, seq_k, MASK_NDIM: tl.constexpr):
    """The ElementMask predicate on one tile: the conjunction of its per-coordinate box terms."""
    ok = _box_term(lo_ptr, hi_ptr, kc_ptr, 0, rows, cols, seq_q, seq_k)
    for d in tl.static_range(1, MASK_NDIM):
        ok = ok & _box_term(lo_ptr, hi_ptr, kc_ptr, d, rows, cols, seq_q, seq_k)
    return ok


@triton.jit
def _accumulate_pv(acc, p, v, DOT_F32: tl.constexpr):
    """acc + P V, with P rounded to V's dtype first as in every flash kernel."""
    if DOT_F32:
        return tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v, acc)


@triton.jit
def _load_kv(
    ptrs, cols, offs_d, seq_k, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BOUNDARY: tl.constexpr
):
    if BOUNDARY:
        return tl.load(ptrs, mask=(cols < seq_k)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif HEAD_DIM == BLOCK_D:
        return tl.load(ptrs)  # interior tile of an unpadded head: no mask at all
    else:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _tile_scores(
    q,
    k_ptrs,
    cols,
    offs_d,
    kpm_base,
    seq_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BOUNDARY: tl.constexpr,
    HAS_KPM: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Unscaled scores q k^T of one key tile, -inf at keys past the end and at padding keys."""
    k = _load_kv(k_ptrs, cols, offs_d, seq_k, HEAD_DIM, BLOCK_D, BOUNDARY)
    if DOT_F32:
        # fp32 inputs: full-precision products (no tf32), so fp32 results match the oracle. Also
        # bf16 under the interpreter, whose tl.dot reads bf16 as raw uint16 (the casts are exact).
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    if BOUNDARY:
        qk = tl.where((cols < seq_k)[None, :], qk, float("-inf"))
    if HAS_KPM:
        keep = tl.load(kpm_base + cols, mask=cols < seq_k, other=0)
        qk = tl.where((keep != 0)[None, :], qk, float("-inf"))
    return qk
