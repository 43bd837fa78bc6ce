"""Block-sparse flash-attention forward in Triton.

One program per (query block, batch * head); program id 0 runs over the query blocks so that
neighbouring query blocks of one head are scheduled together and share that head's K/V in L2. The
inner loop visits only the key blocks listed in ``layout.kv_indices`` (pointer arithmetic from
the loaded block id), with the online softmax in fp32 and exp2 (log2(e) folded into the scale).
Boundary masks are paid only on the last, partial key block; the element predicate of an
``ElementMask`` only on entries flagged in ``kv_partial`` (a runtime branch per tile).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .element_mask import ElementMask
from .layout import BlockLayout
from .triton_tiles import (
    _LN2,
    LOG2E,
    _accumulate_pv,
    _element_predicate,
    _load_kv,
    _tile_scores,
)

try:  # the interpreter's function type; its location is stable across Triton 3.x
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction
except ImportError:  # pragma: no cover
    _InterpretedFunction = None

MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_GRID_Y_LIMIT = 65535


@triton.jit
def _attend_tiles(
    acc,
    m_i,
    l_i,
    q,
    rows,
    offs_n,
    offs_d,
    idx_ptr,
    part_ptr,
    stride_pw,
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
    """Accumulate the listed entries ``[lo, hi)``; each entry is BLOCK_K // BLOCK_N sub-tiles."""
    for it in range(lo * (BLOCK_K // BLOCK_N), hi * (BLOCK_K // BLOCK_N)):
        entry = it // (BLOCK_K // BLOCK_N)
        start_n = tl.load(idx_ptr + entry) * BLOCK_K + (it % (BLOCK_K // BLOCK_N)) * BLOCK_N
        cols = start_n + offs_n
        # 64-bit tile base, 32-bit in-tile offsets: safe for long sequences, cheap per element.
        k_ptrs = k_base + start_n.to(tl.int64) * stride_kn + (offs_n[:, None] * stride_kn + offs_d[None, :])
        v_ptrs = v_base + start_n.to(tl.int64) * stride_vn + (offs_n[:, None] * stride_vn + offs_d[None, :])
        qk = _tile_scores(
            q, k_ptrs, cols, offs_d, kpm_base, seq_k, HEAD_DIM, BLOCK_D, BOUNDARY, HAS_KPM, DOT_F32
        )
        if MASK_NDIM > 0:  # noqa: SIM102 (compile-time test outside, runtime branch inside)
            if tl.load(part_ptr + entry * stride_pw) != 0:  # uniform branch: full tiles skip the predicate
                ok = _element_predicate(box_lo, box_hi, box_kc, rows, cols, seq_q, seq_k, MASK_NDIM)
                qk = tl.where(ok, qk, float("-inf"))
        # Running max in log2 units; qk_scale > 0 commutes with max, so the scale is applied once
        # per row here and fused into the subtraction (one FMA per score) below.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        if BOUNDARY or HAS_KPM or MASK_NDIM > 0:
            # A row with every key masked so far keeps max -inf; shift by 0 so exp2 gives 0, not NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_kv(v_ptrs, cols, offs_d, seq_k, HEAD_DIM, BLOCK_D, BOUNDARY)
        acc = _accumulate_pv(acc * alpha[:, None], p, v, DOT_F32)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _sparse_attn_fwd(
    Q,
    K,
    V,
    Out,
    LSE,
    RMAX,
    RSUM,
    IDX,
    CNT,
    PART,
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
    stride_ob,
    stride_os,
    stride_oh,
    stride_ib,
    stride_ih,
    stride_im,
    stride_cb,
    stride_ch,
    stride_pb,
    stride_ph,
    stride_pm,
    stride_pw,
    stride_kpm,
    num_heads,
    seq_q,
    seq_k,
    qk_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_KPM: tl.constexpr,
    MASK_NDIM: tl.constexpr,
    STORE_LSE: tl.constexpr,
    STORE_STATS: tl.constexpr,
    DOT_F32: tl.constexpr,
    ALIGN: tl.constexpr,
):
    # Strides arrive divided by ALIGN (elements per 16 bytes where they allow it): multiplying by a
    # constexpr tells the compiler every row start is 16-byte aligned, which vectorised loads and
    # cp.async pipelining need; e.g. a head stride of 72 is not a multiple of 16 on its own.
    stride_qb, stride_qs, stride_qh = stride_qb * ALIGN, stride_qs * ALIGN, stride_qh * ALIGN
    stride_kb, stride_ks, stride_kh = stride_kb * ALIGN, stride_ks * ALIGN, stride_kh * ALIGN
    stride_vb, stride_vs, stride_vh = stride_vb * ALIGN, stride_vs * ALIGN, stride_vh * ALIGN
    stride_ob, stride_os, stride_oh = stride_ob * ALIGN, stride_os * ALIGN, stride_oh * ALIGN
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // num_heads).to(tl.int64)
    off_h = (pid_bh % num_heads).to(tl.int64)
    start_m = pid_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q_base = Q + off_b * stride_qb + off_h * stride_qh + start_m.to(tl.int64) * stride_qs
    q_ptrs = q_base + (tl.arange(0, BLOCK_M)[:, None] * stride_qs + offs_d[None, :])
    q_mask = (rows < seq_q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # loaded once, reused for every key tile
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    kpm_base = KPM + off_b * stride_kpm

    idx_ptr = IDX + off_b * stride_ib + off_h * stride_ih + pid_m * stride_im
    part_ptr = PART + off_b * stride_pb + off_h * stride_ph + pid_m * stride_pm
    count = tl.load(CNT + off_b * stride_cb + off_h * stride_ch + pid_m)
    # Ids ascend, so only the last entry can be the partial final key block: the main loop runs
    # unmasked and the boundary loop handles at most that one entry.
    last = tl.load(idx_ptr + count - 1, mask=count > 0, other=0)
    n_main = count - ((count > 0) & (last * BLOCK_K + BLOCK_K > seq_k)).to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for boundary in tl.static_range(2):  # unrolled: the unmasked main loop, then the boundary one
        acc, m_i, l_i = _attend_tiles(
            acc,
            m_i,
            l_i,
            q,
            rows,
            offs_n,
            offs_d,
            idx_ptr,
            part_ptr,
            stride_pw,
            n_main if boundary else 0,
            count if boundary else n_main,
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

    # Empty rows (no entry, or every key masked): l = 0, acc = 0 -> output 0, LSE -inf, no NaN.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_base = Out + off_b * stride_ob + off_h * stride_oh + start_m.to(tl.int64) * stride_os
    o_ptrs = o_base + (tl.arange(0, BLOCK_M)[:, None] * stride_os + offs_d[None, :])
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_mask)
    stat_off = pid_bh.to(tl.int64) * seq_q + rows
    if STORE_LSE:
        lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * _LN2, float("-inf"))
        tl.store(LSE + stat_off, lse, mask=rows < seq_q)
    if STORE_STATS:
        tl.store(RMAX + stat_off, m_i * _LN2, mask=rows < seq_q)
        tl.store(RSUM + stat_off, l_i, mask=rows < seq_q)


def interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _InterpretedFunction is not None and isinstance(_sparse_attn_fwd, _InterpretedFunction)


# --------------------------------------------------------------------------------- autotuning
# H100 space, kept small so that tuning a new key costs seconds: BLOCK_N 64/128, 4/8 warps, 2-4
# stages. The key is (head_dim, block sizes, sequence bucket) plus every tensor's dtype (Triton
# appends those), so the choice is cached per model shape family, not per call.
_TUNE_SPACE = [
    (64, 4, 3),
    (64, 4, 4),
    (64, 8, 2),
    (64, 8, 3),
    (64, 8, 4),
    (128, 4, 2),
    (128, 4, 3),
    (128, 8, 2),
    (128, 8, 3),
]
_SMEM_BYTES = 227 * 1024  # H100 per-block limit


def _largest_block_n(block_k: int) -> int:
    """Largest power of two <= 128 dividing ``block_k`` (the sub-tile width of a key block)."""
    return min(block_k & -block_k, 128)


def _prune_configs(configs, named_args, **kwargs):
    meta = {**named_args, **kwargs}
    block_k, block_d, block_m = meta["BLOCK_K"], meta["BLOCK_D"], meta["BLOCK_M"]
    elem = meta["Q"].element_size()
    keep = []
    for cfg in configs:
        bn = cfg.kwargs["BLOCK_N"]
        # K and V tiles per pipeline stage plus the resident Q tile must fit in shared memory.
        smem = cfg.num_stages * 2 * bn * block_d * elem + block_m * block_d * elem
        # fp32 accumulator + score tile per thread; above 128 registers the compiler spills (seen in
        # sm_90 builds: 4 warps with a 128 x 128 accumulator or score tile).
        regs = block_m * (block_d + bn) // (32 * cfg.num_warps)
        if block_k % bn == 0 and smem <= _SMEM_BYTES and regs <= 128:
            keep.append(cfg)
    return keep or [triton.Config({"BLOCK_N": _largest_block_n(block_k)}, num_warps=4, num_stages=2)]


def _tuning_bench(kernel_call, quantiles):
    # Short runs: the candidates differ by tens of percent, and tuning happens inside warm-up.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


_TUNED = None


def _tuned_kernel():
    global _TUNED
    if _TUNED is None:  # built lazily: nothing of the autotuner runs under the interpreter
        _TUNED = triton.autotune(
            configs=[triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn, w, s in _TUNE_SPACE],
            key=["HEAD_DIM", "BLOCK_M", "BLOCK_K", "SEQ_BUCKET"],
            prune_configs_by={"early_config_prune": _prune_configs},
            do_bench=_tuning_bench,
        )(_sparse_attn_fwd)
    return _TUNED


def _autotune_enabled(q: torch.Tensor) -> bool:
    """Autotune compiled fp16/bf16 CUDA launches; fp32 (a correctness path) and the interpreter
    use ``default_config``."""
    return q.is_cuda and not interpreter_active() and q.dtype != torch.float32


def default_config(block_m: int, block_k: int, head_dim: int, dtype: torch.dtype) -> dict:
    """The fixed launch config used without autotuning (interpreter, fp32, explicit requests)."""
    block_d = block_d_for(head_dim)
    fp32 = dtype == torch.float32
    block_n = min(_largest_block_n(block_k), 32 if fp32 else 64)
    # fp32 "ieee" dots run on FMA units, not tensor cores, and need many more registers.
    many = block_m * block_d >= 128 * 128 or (fp32 and block_m >= 64)
    return {"BLOCK_N": block_n, "num_warps": 8 if many else 4, "num_stages": 2}


# --------------------------------------------------------------------------------- launch wrapper
def block_d_for(head_dim: int) -> int:
    """Head dims are padded (masked loads, zero fill) to the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def check_supported(q: torch.Tensor, layout: BlockLayout, scale: float | None = None) -> None:
    """Raise TypeError/ValueError naming why the Triton kernel cannot serve these inputs."""
    if scale is not None and not scale > 0:
        raise ValueError(f"the Triton kernel needs a positive softmax scale, got {scale}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton kernel takes float16, bfloat16 or float32 inputs, got {q.dtype}; "
            "use backend='torch' for float64"
        )
    batch, _, heads, head_dim = q.shape
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"the Triton kernel supports head_dim up to {MAX_HEAD_DIM}, got {head_dim}")
    bq, bk = layout.block_size_q, layout.block_size_k
    if bq not in (16, 32, 64, 128):
        raise ValueError(f"the Triton kernel needs block_size_q in (16, 32, 64, 128), got {bq}")
    if bk % 16:
        raise ValueError(f"the Triton kernel needs block_size_k to be a multiple of 16, got {bk}")
    if batch * heads > _GRID_Y_LIMIT:
        raise ValueError(f"batch * heads = {batch * heads} exceeds the launch grid limit {_GRID_Y_LIMIT}")


def mask_arguments(
    element_mask: ElementMask | None, key_padding_mask: torch.Tensor | None, dummy: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], int, torch.Tensor, int]:
    """Kernel arguments for the masks: (box lo, hi, key coords), MASK_NDIM, padding mask, its stride.

    Absent masks become ``dummy`` (never read: their constexpr switches are off).
    """
    device = dummy.device
    if element_mask is not None:
        em = element_mask.to(device)
        box, ndim = (em.q_lo.contiguous(), em.q_hi.contiguous(), em.k_coord.contiguous()), em.ndim
    else:
        box, ndim = (dummy, dummy, dummy), 0
    if key_padding_mask is None:
        return box, ndim, dummy, 0
    kpm = key_padding_mask.to(device=device, dtype=torch.uint8).contiguous()
    return box, ndim, kpm, kpm.stride(0)


def stride_alignment(strides: list[int], element_size: int) -> int:
    """Largest ALIGN <= 16 bytes' worth of elements dividing every stride (see the kernel's comment)."""
    align = 16 // element_size
    while align > 1 and any(st % align for st in strides):
        align //= 2
    return align


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _checked_out(
    buf: torch.Tensor | None,
    shape: tuple,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
    contiguous: bool,
) -> torch.Tensor:
    if buf is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device:
        raise ValueError(
            f"{name} must be {dtype} {tuple(shape)} on {device}, got {buf.dtype} "
            f"{tuple(buf.shape)} on {buf.device}"
        )
    if (contiguous and not buf.is_contiguous()) or buf.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous" if contiguous else f"{name} needs last-dim stride 1")
    return buf


def triton_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    stats: str = "none",
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    row_max: torch.Tensor | None = None,
    row_sum: torch.Tensor | None = None,
    config: dict | None = None,
):
    """Launch the kernel; returns ``AttentionResult`` (stats not asked for are None).

    stats: "none", "lse" or "all" (LSE, row max, row sum; fp32 ``(B, H, S_q)``).
    out/lse/row_max/row_sum: optional preallocated outputs (every element is written).
    config: ``{"BLOCK_N", "num_warps", "num_stages"}`` to skip autotuning; by default CUDA
    fp16/bf16 calls autotune and everything else uses ``default_config``.
    """
    from .reference import AttentionResult, _partial_flags, check_attention_inputs

    check_attention_inputs(q, k, v, key_padding_mask)
    check_supported(q, layout, scale)
    if not q.is_cuda and not interpreter_active():
        raise RuntimeError(
            "the Triton kernel needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "before triton is first imported (the interpreter), or use backend='torch'"
        )
    if stats not in ("none", "lse", "all"):
        raise ValueError(f"stats must be 'none', 'lse' or 'all', got {stats!r}")
    batch, seq_q, heads, head_dim = q.shape
    seq_k = k.shape[1]
    layout.check_compatible(seq_q, seq_k, batch, heads)
    if layout.device != q.device:
        raise ValueError(f"layout is on {layout.device} but q is on {q.device}")
    _partial_flags(element_mask, kv_partial, layout, seq_q, seq_k, batch, heads)  # validation only
    device = q.device
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    out = _checked_out(out, q.shape, q.dtype, device, "out", contiguous=False)
    stat_shape = (batch, heads, seq_q)
    lse = _checked_out(lse, stat_shape, torch.float32, device, "lse", True) if stats != "none" else None
    if stats == "all":
        row_max = _checked_out(row_max, stat_shape, torch.float32, device, "row_max", True)
        row_sum = _checked_out(row_sum, stat_shape, torch.float32, device, "row_sum", True)
    else:
        row_max = row_sum = None
    if batch * heads * seq_q == 0:
        return AttentionResult(out, lse, row_max, row_sum)

    idx = _last_dim_contiguous(layout.kv_indices).expand(batch, heads, -1, -1)  # stride 0 = broadcast
    cnt = layout.kv_counts.contiguous().expand(batch, heads, -1)
    dummy = cnt
    box, mask_ndim, kpm, kpm_stride = mask_arguments(element_mask, key_padding_mask, dummy)
    if element_mask is None:
        part, part_strides = dummy, (0, 0, 0, 0)
    elif kv_partial is None:  # one shared "partial" flag read with all strides 0
        part, part_strides = torch.ones(1, dtype=torch.int8, device=device), (0, 0, 0, 0)
    else:
        part = kv_partial.to(device=device, dtype=torch.int8).expand(batch, heads, -1, -1)
        part_strides = part.stride()

    block_d = block_d_for(head_dim)
    grid = (layout.num_q_blocks, batch * heads)
    data_strides = [t.stride(i) for t in (q, k, v, out) for i in range(3)]
    align = stride_alignment(data_strides, q.element_size())
    args = (
        q,
        k,
        v,
        out,
        lse if lse is not None else dummy,
        row_max if row_max is not None else dummy,
        row_sum if row_sum is not None else dummy,
        idx,
        cnt,
        part,
        kpm,
        *box,
        *(st // align for st in data_strides),
        idx.stride(0),
        idx.stride(1),
        idx.stride(2),
        cnt.stride(0),
        cnt.stride(1),
        *part_strides,
        kpm_stride,
        heads,
        seq_q,
        seq_k,
        scale * LOG2E,
        triton.next_power_of_2(seq_k),
    )
    meta = dict(
        HEAD_DIM=head_dim,
        BLOCK_M=layout.block_size_q,
        BLOCK_K=layout.block_size_k,
        BLOCK_D=block_d,
        HAS_KPM=key_padding_mask is not None,
        MASK_NDIM=mask_ndim,
        STORE_LSE=stats != "none",
        STORE_STATS=stats == "all",
        DOT_F32=q.dtype == torch.float32 or (interpreter_active() and q.dtype == torch.bfloat16),
        ALIGN=align,
    )
    use_tuner = config is None and _autotune_enabled(q)
    if config is None and not use_tuner:
        config = default_config(layout.block_size_q, layout.block_size_k, head_dim, q.dtype)
    if config is not None and layout.block_size_k % config["BLOCK_N"]:
        raise ValueError(f"BLOCK_N={config['BLOCK_N']} must divide block_size_k={layout.block_size_k}")
    with torch.cuda.device(device) if q.is_cuda else contextlib.nullcontext():
        if use_tuner:
            _tuned_kernel()[grid](*args, **meta)
        else:
            launch = dict(
                BLOCK_N=config["BLOCK_N"],
                num_warps=config.get("num_warps", 4),
                num_stages=config.get("num_stages", 2),
            )
            _sparse_attn_fwd[grid](*args, **meta, **launch)
    return AttentionResult(out, lse, row_max, row_sum)
