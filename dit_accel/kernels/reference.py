"""Pure-PyTorch block-sparse attention: the oracle for every kernel and the CPU path.

Works per chunk of query blocks: the listed key/value blocks of each query block are gathered,
scored and soft-maxed together, so memory is bounded by the chunk and no (S x S) matrix is ever
built. Any device and dtype; float64 inputs are computed in float64 (the oracle), everything else
accumulates in float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .element_mask import ElementMask
from .layout import BlockLayout, num_blocks
from .row_chunk_mask import RowChunkMask

# Bytes of scores + gathered keys/values one chunk may hold: small enough to stay in the CPU's
# caches (measured fastest at 4-8 MiB on a 2-core Xeon, 8k tokens), large enough that the Python
# loop runs a few dozen times at most for 16k tokens.
_CHUNK_BYTES = 8 * 2**20


class AttentionResult(NamedTuple):
    """Output ``(B, S, H, D)`` plus per-row statistics ``(B, H, S)``.

    ``lse`` is the natural-log sum of exp over the kept keys; ``row_max`` the largest scaled
    score and ``row_sum`` the sum of ``exp(score - row_max)``, so ``lse = row_max + log(row_sum)``.
    Rows with no kept key have ``lse = row_max = -inf``, ``row_sum = 0`` and a zero output.
    """

    out: torch.Tensor
    lse: torch.Tensor
    row_max: torch.Tensor
    row_sum: torch.Tensor


def _pad_blocks(x: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    """(B, S, H, D) -> (B*H, n_blocks, block, D), zero-padded at the end of the sequence."""
    b, s, h, d = x.shape
    x = x.transpose(1, 2)
    pad = n_blocks * block - s
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(b * h, n_blocks, block, d)


def _key_validity(
    batch: int,
    heads: int,
    seq_k: int,
    n_kb: int,
    block_k: int,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (B*H, n_kb, block_k): True where a key exists and is not padding."""
    valid = torch.arange(n_kb * block_k, device=device) < seq_k
    valid = valid.expand(batch, -1)
    if key_padding_mask is not None:
        pad = n_kb * block_k - seq_k
        kpm = torch.nn.functional.pad(key_padding_mask.to(torch.bool), (0, pad), value=False)
        valid = valid & kpm
    return (
        valid.reshape(batch, 1, n_kb, block_k)
        .expand(batch, heads, n_kb, block_k)
        .reshape(batch * heads, n_kb, block_k)
    )


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> None:
    """Raise a clear error for shapes or dtypes the kernels do not accept."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, seq, heads, head_dim) tensors")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"unsupported dtype {q.dtype}; use float16, bfloat16, float32 or float64")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share dtype and device")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            "batch, heads and head_dim must agree (no grouped-query attention)"
        )
    if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(
            f"key_padding_mask must be (batch, seq_k) = {(k.shape[0], k.shape[1])}, "
            f"got {tuple(key_padding_mask.shape)}"
        )


def block_sparse_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    kv_partial: torch.Tensor | None = None,
    row_chunk_mask: RowChunkMask | None = None,
) -> AttentionResult:
    """Exact softmax attention over the union of each query block's listed key blocks.

    q: (batch, seq_q, heads, head_dim); k, v: (batch, seq_k, heads, head_dim).
    key_padding_mask: optional bool (batch, seq_k), True = attend.
    element_mask: optional per-token predicate (see ``ElementMask``) applied inside the listed
        entries flagged by ``kv_partial`` (bool, shaped like ``layout.kv_indices``, B/H may be 1);
        ``kv_partial=None`` applies it to every entry.
    row_chunk_mask: optional per-(batch, head, query) chunk selection applied inside every listed
        block (see ``RowChunkMask``).
    Each chunk of query blocks trims the lists to its own longest row: one host synchronisation
    per chunk, harmless on the CPU and accepted on this fallback path elsewhere.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    layout.check_compatible(seq_q, seq_k, batch, heads)
    partial = _partial_flags(element_mask, kv_partial, layout, seq_q, seq_k, batch, heads)
    if row_chunk_mask is not None:
        row_chunk_mask.check(batch, heads, seq_q, seq_k)
    bq, bk = layout.block_size_q, layout.block_size_k
    n_qb, n_kb = num_blocks(seq_q, bq), num_blocks(seq_k, bk)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    stat_dtype = compute

    # Scaling Q once is cheaper than scaling every score tile.
    qb = _pad_blocks(q.to(compute), n_qb, bq) * scale
    kb = _pad_blocks(k.to(compute), n_kb, bk)
    vb = _pad_blocks(v.to(compute), n_kb, bk)
    key_ok = _key_validity(batch, heads, seq_k, n_kb, bk, key_padding_mask, q.device)

    layout = layout.expand(batch, heads)
    width = max(int(layout.kv_counts.max()), 1) if layout.kv_counts.numel() else 1
    idx = layout.kv_indices[..., :width].reshape(batch * heads, n_qb, width).long()
    entry_ok = torch.arange(width, device=q.device) < layout.kv_counts.reshape(batch * heads, n_qb, 1)
    idx = torch.where(entry_ok, idx, 0)
    counts = layout.kv_counts.reshape(batch * heads, n_qb)

    bh = batch * heads
    elem = torch.finfo(compute).bits // 8
    per_block = bh * width * bk * (bq + 2 * dim) * elem
    if element_mask is not None:
        per_block += bh * width * bk * bq * 2  # boolean predicate terms
        partial = partial[..., :width].reshape(bh, n_qb, width)
    if row_chunk_mask is not None:
        per_block += bh * width * bk * bq * 9  # gathered chunk ids and the predicate
    # Query position of every padded row (padding rows reuse the last one; their output is dropped).
    q_pos = torch.arange(n_qb * bq, device=q.device).clamp_max(seq_q - 1).view(1, n_qb, bq, 1)
    chunk = max(1, min(n_qb, _CHUNK_BYTES // max(per_block, 1)))
    rows = torch.arange(bh, device=q.device).view(bh, 1, 1)

    out = torch.empty(bh, n_qb, bq, dim, dtype=compute, device=q.device)
    row_max = torch.empty(bh, n_qb, bq, dtype=stat_dtype, device=q.device)
    row_sum = torch.empty_like(row_max)
    for start in range(0, n_qb, chunk):
        stop = min(start + chunk, n_qb)
        span = stop - start
        # Trim to this chunk's longest list: rows with short lists elsewhere do not pay for the longest.
        w = max(int(counts[:, start:stop].max()), 1)
        ids = idx[:, start:stop, :w]
        keys = kb[rows, ids].reshape(bh * span, w * bk, dim)
        values = vb[rows, ids].reshape(bh * span, w * bk, dim)
        ok = (key_ok[rows, ids] & entry_ok[:, start:stop, :w, None]).reshape(bh, span, 1, w * bk)
        k_pos = (ids[..., None] * bk + torch.arange(bk, device=q.device)).clamp_max(seq_k - 1)
        if element_mask is not None:
            pred = element_mask.allowed(q_pos[:, start:stop], k_pos.reshape(bh, span, 1, w * bk))
            skip = ~partial[:, start:stop, :w].repeat_interleave(bk, dim=-1)  # entries attended whole
            ok = ok & (pred | skip[:, :, None, :])
        if row_chunk_mask is not None:
            ok = ok & row_chunk_mask.allowed(
                rows.view(bh, 1, 1, 1), q_pos[:, start:stop], k_pos.reshape(bh, span, 1, w * bk), heads
            )
        scores = torch.bmm(qb[:, start:stop].reshape(bh * span, bq, dim), keys.transpose(1, 2))
        # Most chunks need no mask (no padding, no partial block, full lists): skip that pass. The
        # check syncs the host, which costs nothing on the CPU this path is built for.
        if not bool(ok.all()):
            scores.view(bh, span, bq, w * bk).masked_fill_(~ok, float("-inf"))
        m = scores.amax(-1, keepdim=True)
        # A row with no kept key has max -inf; shifting by 0 instead keeps exp() at 0, not NaN.
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = scores.sub_(m_safe).exp_()
        s = p.sum(-1, keepdim=True)
        o = torch.bmm(p, values).div_(torch.where(s > 0, s, torch.ones_like(s)))
        out[:, start:stop] = o.view(bh, span, bq, dim)
        row_max[:, start:stop] = m.view(bh, span, bq)
        row_sum[:, start:stop] = s.view(bh, span, bq)

    out = out.reshape(batch, heads, n_qb * bq, dim)[:, :, :seq_q].transpose(1, 2).to(q.dtype)
    row_max = row_max.reshape(batch, heads, n_qb * bq)[..., :seq_q]
    row_sum = row_sum.reshape(batch, heads, n_qb * bq)[..., :seq_q]
    lse = torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_sum, float("-inf")))
    if compute != torch.float64:
        lse, row_max, row_sum = lse.float(), row_max.float(), row_sum.float()
    return AttentionResult(out, lse, row_max, row_sum)


def _partial_flags(
    element_mask: ElementMask | None,
    kv_partial: torch.Tensor | None,
    layout: BlockLayout,
    seq_q: int,
    seq_k: int,
    batch: int,
    heads: int,
) -> torch.Tensor | None:
    """Validated ``kv_partial`` as bool ``(batch, heads, n_q_blocks, width)`` (None without a mask)."""
    if element_mask is None:
        if kv_partial is not None:
            raise ValueError("kv_partial given without an element_mask")
        return None
    element_mask.check(seq_q, seq_k)
    if kv_partial is None:
        return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=layout.device).expand(
            batch, heads, layout.num_q_blocks, layout.width
        )
    b, h = kv_partial.shape[:2] if kv_partial.dim() == 4 else (0, 0)
    if (
        kv_partial.dim() != 4
        or kv_partial.shape[2:] != layout.kv_indices.shape[2:]
        or b not in (1, batch)
        or h not in (1, heads)
    ):
        raise ValueError(
            f"kv_partial must be shaped like layout.kv_indices (B/H may be 1), got "
            f"{tuple(kv_partial.shape)} for layout {tuple(layout.kv_indices.shape)}"
        )
    return kv_partial.to(torch.bool).expand(batch, heads, -1, -1)


def dense_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_mask: torch.Tensor | None = None,
    block_size_q: int = 1,
    block_size_k: int = 1,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    element_mask: ElementMask | None = None,
    partial_block_mask: torch.Tensor | None = None,
) -> AttentionResult:
    """Materialised (S x S) attention under an expanded block mask; for tests on small inputs only.

    Independent of the gather path above (plain masked softmax), so the two check each other.
    ``element_mask`` applies inside the tiles where the boolean ``(B, H, n_q_blocks, n_k_blocks)``
    ``partial_block_mask`` is True (everywhere when it is None).
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    batch, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(compute), k.to(compute)) * scale
    allowed = torch.ones(batch, heads, seq_q, seq_k, dtype=torch.bool, device=q.device)
    if block_mask is not None:
        expanded = block_mask.repeat_interleave(block_size_q, dim=2).repeat_interleave(block_size_k, dim=3)
        allowed = allowed & expanded[:, :, :seq_q, :seq_k]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :].to(torch.bool)
    if element_mask is not None:
        element_mask.check(seq_q, seq_k)
        pred = element_mask.dense().to(q.device)
        if partial_block_mask is not None:
            part = partial_block_mask.repeat_interleave(block_size_q, dim=2).repeat_interleave(
                block_size_k, dim=3
            )
            pred = pred | ~part[:, :, :seq_q, :seq_k]
        allowed = allowed & pred
    scores = scores.masked_fill(~allowed, float("-inf"))
    m = scores.amax(-1)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m_safe[..., None])
    s = p.sum(-1)
    out = torch.einsum(
        "bhqk,bkhd->bqhd", p / torch.where(s > 0, s, torch.ones_like(s))[..., None], v.to(compute)
    )
    lse = torch.where(s > 0, m_safe + torch.log(s), torch.full_like(s, float("-inf")))
    return AttentionResult(out.to(q.dtype), lse, m, s)
