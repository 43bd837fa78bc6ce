"""Re-ttention's refresh step as one Triton pass: dense output, rho and rho x O_S together.

Same tiling as ``triton_attention`` (one program per query tile and batch * head, online softmax in
fp32 with exp2), but the loop runs over *every* key tile and keeps two accumulators that share
the running max: ``(acc, l)`` over all keys and ``(acc_kept, l_kept)`` over the layout's keys. At
the end ``O_full = acc / l``, ``rho = l_kept / l`` and ``rho * O_S = acc_kept / l`` — exactly the
PyTorch one-pass path (``refresh.py``), and what ``ratio_from_lse`` gets from two passes.

The cost is one dense attention plus a P V product on the kept tiles only (a uniform branch per
tile), instead of a dense pass plus a sparse pass that recomputes the kept scores. Two fp32
accumulators double the register footprint of a query tile, so a program covers ``BLOCK_M`` rows
of a layout query block (``BLOCK_M`` divides ``block_size_q``; 64 by default).

Which key blocks are kept comes from a per-(query block, key block) code built once per call on
the device (``block_kinds``), not from walking the index lists, so the kernel does not depend on
the lists being sorted.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .element_mask import ElementMask
from .layout import BlockLayout
from .reference import _partial_flags, check_attention_inputs
from .refresh import RefreshResult
from .triton_attention import (
    _autotune_enabled,
    _checked_out,
    _last_dim_contiguous,
    block_d_for,
    check_supported,
    interpreter_active,
    mask_arguments,
    stride_alignment,
)
from .triton_tiles import LOG2E, _accumulate_pv, _element_predicate, _load_kv, _tile_scores

DROPPED, KEPT, KEPT_WHERE_PREDICATE = 0, 1, 2


@triton.jit
def _refresh_tiles(
    acc,
    acc_kept,
    m_i,
    l_i,
    l_kept,
    q,
    rows,
    offs_n,
    offs_d,
    kind_ptr,
    lo,
    hi,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    kpm_base,
    box_lo,
    box_hi,
    box_kc,
    seq_q,
    seq_k,
    qk_scale,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BOUNDARY: tl.constexpr,
    HAS_KPM: tl.constexpr,
    MASK_NDIM: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Accumulate key blocks ``[lo, hi)`` into both accumulators; each block is BLOCK_K // BLOCK_N tiles."""
    for it in range(lo * (BLOCK_K // BLOCK_N), hi * (BLOCK_K // BLOCK_N)):
        start_n = it * BLOCK_N
        cols = start_n + offs_n
        kind = tl.load(kind_ptr + it // (BLOCK_K // BLOCK_N))
        k_ptrs = k_base + start_n.to(tl.int64) * stride_kn + (offs_n[:, None] * stride_kn + offs_d[None, :])
        v_ptrs = v_base + start_n.to(tl.int64) * stride_vn + (offs_n[:, None] * stride_vn + offs_d[None, :])
        qk = _tile_scores(
            q, k_ptrs, cols, offs_d, kpm_base, seq_k, HEAD_DIM, BLOCK_D, BOUNDARY, HAS_KPM, DOT_F32
        )
        # One running max for both sums: the kept sum is a sub-sum of the full one, so sharing the
        # shift keeps l_kept <= l exactly and rho needs no second rescaling.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        if BOUNDARY or HAS_KPM:  # noqa: SIM108 (compile-time branch)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys masked so far: no NaN
        else:
            m_use = m_new
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_kv(v_ptrs, cols, offs_d, seq_k, HEAD_DIM, BLOCK_D, BOUNDARY)
        acc = _accumulate_pv(acc * alpha[:, None], p, v, DOT_F32)
        acc_kept = acc_kept * alpha[:, None]
        l_kept = l_kept * alpha
        if kind != 0:  # uniform per tile: dropped blocks cost no second P V product
            if MASK_NDIM > 0:  # noqa: SIM102 (compile-time test outside, runtime branch inside)
                if kind == 2:
                    ok = _element_predicate(box_lo, box_hi, box_kc, rows, cols, seq_q, seq_k, MASK_NDIM)
                    p = tl.where(ok, p, 0.0)
            l_kept = l_kept + tl.sum(p, 1)
            acc_kept = _accumulate_pv(acc_kept, p, v, DOT_F32)
        m_i = m_new
    return acc, acc_kept, m_i, l_i, l_kept


@triton.jit
def _refresh_fwd(
    Q,
    K,
    V,
    OutFull,
    OutKept,
    RHO,
    KIND,
    KPM,
    BOX_LO,
    BOX_HI,
    BOX_KC,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_fb,
    stride_fs,
    stride_fh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_tb,
    stride_th,
    stride_tm,
    stride_kpm,
    num_heads,
    seq_q,
    seq_k,
    qk_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_KPM: tl.constexpr,
    MASK_NDIM: tl.constexpr,
    DOT_F32: tl.constexpr,
    ALIGN: tl.constexpr,
):
    # Strides arrive divided by ALIGN: see _sparse_attn_fwd (16-byte alignment hints).
    stride_qb, stride_qs, stride_qh = stride_qb * ALIGN, stride_qs * ALIGN, stride_qh * ALIGN
    stride_kb, stride_ks, stride_kh = stride_kb * ALIGN, stride_ks * ALIGN, stride_kh * ALIGN
    stride_vb, stride_vs, stride_vh = stride_vb * ALIGN, stride_vs * ALIGN, stride_vh * ALIGN
    stride_fb, stride_fs, stride_fh = stride_fb * ALIGN, stride_fs * ALIGN, stride_fh * ALIGN
    stride_ob, stride_os, stride_oh = stride_ob * ALIGN, stride_os * ALIGN, stride_oh * ALIGN
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    start_m = pid_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tile_rows = tl.arange(0, BLOCK_M)[:, None]

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + start_m.to(tl.int64) * stride_qs
    q_mask = (rows < seq_q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptrs + (tile_rows * stride_qs + offs_d[None, :]), mask=q_mask, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    kpm_base = KPM + off_b * stride_kpm
    kind_ptr = KIND + off_b * stride_tb + off_h * stride_th + (start_m // BLOCK_Q) * stride_tm

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    l_kept = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_kept = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Whole key blocks unmasked, then the partial last block (if any) with boundary masks; the
    # static loop unrolls into the two specialised loops.
    n_whole = seq_k // BLOCK_K
    for boundary in tl.static_range(2):
        acc, acc_kept, m_i, l_i, l_kept = _refresh_tiles(
            acc,
            acc_kept,
            m_i,
            l_i,
            l_kept,
            q,
            rows,
            offs_n,
            offs_d,
            kind_ptr,
            n_whole if boundary else 0,
            tl.cdiv(seq_k, BLOCK_K) if boundary else n_whole,
            k_base,
            v_base,
            stride_ks,
            stride_vs,
            kpm_base,
            BOX_LO,
            BOX_HI,
            BOX_KC,
            seq_q,
            seq_k,
            qk_scale,
            BLOCK_N,
            BLOCK_K,
            HEAD_DIM,
            BLOCK_D,
            boundary == 1,
            HAS_KPM,
            MASK_NDIM,
            DOT_F32,
        )

    # Rows with no valid key: l = 0 -> both outputs 0 and rho 0, never NaN.
    inv = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
    f_ptrs = OutFull + off_b * stride_fb + off_h * stride_fh + start_m.to(tl.int64) * stride_fs
    tl.store(
        f_ptrs + (tile_rows * stride_fs + offs_d[None, :]),
        (acc * inv[:, None]).to(OutFull.dtype.element_ty),
        mask=q_mask,
    )
    o_ptrs = OutKept + off_b * stride_ob + off_h * stride_oh + start_m.to(tl.int64) * stride_os
    kept_out = (acc_kept * inv[:, None]).to(OutKept.dtype.element_ty)
    tl.store(o_ptrs + (tile_rows * stride_os + offs_d[None, :]), kept_out, mask=q_mask)
    tl.store(RHO + pid_bh.to(tl.int64) * seq_q + rows, l_kept * inv, mask=rows < seq_q)


# --------------------------------------------------------------------------------- autotuning
# (BLOCK_M, BLOCK_N, warps, stages). Two accumulators: a 128-row tile with head_dim 128 would need
# 2 x 64 KiB of fp32 registers, so rows are split into 64-row programs unless the head is small.
_TUNE_SPACE = [
    (64, 64, 4, 2),
    (64, 64, 4, 3),
    (64, 64, 8, 3),
    (64, 128, 8, 2),
    (128, 64, 8, 2),
    (128, 64, 8, 3),
]


def _fits(block_m: int, block_n: int, warps: int, block_q: int, block_k: int, block_d: int) -> bool:
    """Rows divide the layout's query block, columns its key block, registers stay below spilling."""
    regs = block_m * (2 * block_d + block_n) // (32 * warps)  # two fp32 accumulators + score tile
    return block_q % block_m == 0 and block_k % block_n == 0 and regs <= 128


def _prune_configs(configs, named_args, **kwargs):
    meta = {**named_args, **kwargs}
    keep = [
        cfg
        for cfg in configs
        if _fits(
            cfg.kwargs["BLOCK_M"],
            cfg.kwargs["BLOCK_N"],
            cfg.num_warps,
            meta["BLOCK_Q"],
            meta["BLOCK_K"],
            meta["BLOCK_D"],
        )
    ]
    if keep:
        return keep
    fallback = default_config(meta["BLOCK_Q"], meta["BLOCK_K"], meta["HEAD_DIM"], meta["Q"].dtype)
    return [
        triton.Config(
            {"BLOCK_M": fallback["BLOCK_M"], "BLOCK_N": fallback["BLOCK_N"]},
            num_warps=fallback["num_warps"],
            num_stages=fallback["num_stages"],
        )
    ]


def _tuning_bench(kernel_call, quantiles):
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


_TUNED = None


def _tuned_kernel():
    global _TUNED
    if _TUNED is None:  # built lazily: nothing of the autotuner runs under the interpreter
        _TUNED = triton.autotune(
            configs=[
                triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in _TUNE_SPACE
            ],
            key=["HEAD_DIM", "BLOCK_Q", "BLOCK_K", "SEQ_BUCKET"],
            prune_configs_by={"early_config_prune": _prune_configs},
            do_bench=_tuning_bench,
        )(_refresh_fwd)
    return _TUNED


def default_config(block_q: int, block_k: int, head_dim: int, dtype: torch.dtype) -> dict:
    """The fixed launch config used without autotuning (interpreter, fp32, explicit requests)."""
    fp32 = dtype == torch.float32
    block_n = min(block_k & -block_k, 32 if fp32 else 64)
    return {"BLOCK_M": min(block_q, 64), "BLOCK_N": block_n, "num_warps": 8 if fp32 else 4, "num_stages": 2}


# --------------------------------------------------------------------------------- launch wrapper
def block_kinds(
    layout: BlockLayout, element_mask: ElementMask | None, kv_partial: torch.Tensor | None
) -> torch.Tensor:
    """int8 ``(B, H, n_q_blocks, n_k_blocks)``: DROPPED, KEPT, or KEPT_WHERE_PREDICATE per block pair.

    B and H are 1 where both the layout and ``kv_partial`` broadcast. Built by scatter on the
    layout's device, no host synchronisation; padding entries of the lists are ignored.
    """
    b, h = layout.kv_counts.shape[:2]
    if element_mask is not None and kv_partial is not None:
        b, h = max(b, kv_partial.shape[0]), max(h, kv_partial.shape[1])
    lay = layout.expand(b, h)
    kinds = lay.to_block_mask().to(torch.int8)
    if element_mask is None:
        return kinds
    valid = torch.arange(lay.width, device=lay.device) < lay.kv_counts.unsqueeze(-1)
    flagged = valid if kv_partial is None else valid & kv_partial.to(lay.device, torch.bool)
    target = torch.where(flagged, lay.kv_indices.long(), lay.num_k_blocks)
    extra = torch.zeros(*kinds.shape[:3], lay.num_k_blocks + 1, dtype=torch.int8, device=lay.device)
    extra.scatter_(-1, target, 1)  # a block listed twice is still kept once: set, not add
    return kinds + extra[..., : lay.num_k_blocks]


def triton_refresh_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    out_full: torch.Tensor | None = None,
    kept_out: torch.Tensor | None = None,
    rho: torch.Tensor | None = None,
    config: dict | None = None,
):
    """Launch the fused refresh kernel; returns ``RefreshResult(out_full, rho, kept_out)``.

    Arguments mean what they mean for ``refresh_attention``. out_full/kept_out/rho: optional
    preallocated outputs (``rho`` fp32 ``(B, H, S_q)``, contiguous). config:
    ``{"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}`` to skip autotuning; by default CUDA
    fp16/bf16 calls autotune and everything else uses ``default_config``.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    check_supported(q, layout, scale)
    if not q.is_cuda and not interpreter_active():
        raise RuntimeError(
            "the Triton kernel needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "before triton is first imported (the interpreter), or use backend='torch'"
        )
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    layout.check_compatible(seq_q, seq_k, batch, heads)
    if layout.device != q.device:
        raise ValueError(f"layout is on {layout.device} but q is on {q.device}")
    _partial_flags(element_mask, kv_partial, layout, seq_q, seq_k, batch, heads)  # validation only
    device = q.device
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    out_full = _checked_out(out_full, q.shape, q.dtype, device, "out_full", contiguous=False)
    kept_out = _checked_out(kept_out, q.shape, q.dtype, device, "kept_out", contiguous=False)
    rho = _checked_out(rho, (batch, heads, seq_q), torch.float32, device, "rho", contiguous=True)
    if batch * heads * seq_q == 0:
        return RefreshResult(out_full, rho, kept_out)

    kinds = block_kinds(layout, element_mask, kv_partial).expand(batch, heads, -1, -1)
    dummy = kinds
    box, mask_ndim, kpm, kpm_stride = mask_arguments(element_mask, key_padding_mask, dummy)
    data_strides = [t.stride(i) for t in (q, k, v, out_full, kept_out) for i in range(3)]
    align = stride_alignment(data_strides, q.element_size())
    args = (
        q,
        k,
        v,
        out_full,
        kept_out,
        rho,
        kinds,
        kpm,
        *box,
        *(st // align for st in data_strides),
        *kinds.stride()[:3],
        kpm_stride,
        heads,
        seq_q,
        seq_k,
        scale * LOG2E,
        triton.next_power_of_2(seq_k),
    )
    meta = dict(
        HEAD_DIM=head_dim,
        BLOCK_Q=layout.block_size_q,
        BLOCK_K=layout.block_size_k,
        BLOCK_D=block_d_for(head_dim),
        HAS_KPM=key_padding_mask is not None,
        MASK_NDIM=mask_ndim,
        DOT_F32=q.dtype == torch.float32 or (interpreter_active() and q.dtype == torch.bfloat16),
        ALIGN=align,
    )
    use_tuner = config is None and _autotune_enabled(q)
    if config is None and not use_tuner:
        config = default_config(layout.block_size_q, layout.block_size_k, head_dim, q.dtype)
    if config is not None and (
        layout.block_size_q % config["BLOCK_M"] or layout.block_size_k % config["BLOCK_N"]
    ):
        raise ValueError(
            f"BLOCK_M={config['BLOCK_M']} must divide block_size_q={layout.block_size_q} and "
            f"BLOCK_N={config['BLOCK_N']} block_size_k={layout.block_size_k}"
        )
    with torch.cuda.device(device) if q.is_cuda else contextlib.nullcontext():
        if use_tuner:
            grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
            _tuned_kernel()[grid](*args, **meta)
        else:
            grid = (triton.cdiv(seq_q, config["BLOCK_M"]), batch * heads)
            _refresh_fwd[grid](
                *args,
                **meta,
                BLOCK_M=config["BLOCK_M"],
                BLOCK_N=config["BLOCK_N"],
                num_warps=config.get("num_warps", 4),
                num_stages=config.get("num_stages", 2),
            )
    return RefreshResult(out_full, rho, kept_out)
