"""Re-ttention's one-pass refresh (dense output, rho, rho * O_S) against two passes and a dense oracle."""

from __future__ import annotations

import math

import pytest
import torch

from dit_accel.kernels import (
    BlockLayout,
    ElementMask,
    attention_with_stats,
    block_sparse_attention,
    dense_attention,
    num_blocks,
)
from dit_accel.kernels.refresh import ratio_from_lse, refresh_attention_torch


def fresh_seed() -> int:
    g = torch.Generator()
    return g.seed()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert not torch.isnan(a).any() and not torch.isnan(b).any()
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def oracle(q, k, v, kept, key_ok, scale):
    """Materialised float64 sums: kept (B, H, Sq, Sk) and key_ok (B, Sk) booleans."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    s = s.masked_fill(~key_ok[:, None, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)  # 0 at padding keys
    d_full = e.sum(-1)
    d_kept = (e * kept).sum(-1)
    safe = torch.where(d_full > 0, d_full, torch.ones_like(d_full))
    out_full = torch.einsum("bhqk,bkhd->bqhd", e / safe[..., None], v.double())
    kept_out = torch.einsum("bhqk,bkhd->bqhd", e * kept / safe[..., None], v.double())
    return out_full, d_kept / safe, kept_out


def dense_kept_mask(block_mask, partial_blocks, pred, bq, bk, seq_q, seq_k):
    """Expand block-level masks to (B, H, Sq, Sk) with plain loops (small inputs only)."""
    b, h, n_qb, n_kb = block_mask.shape
    kept = torch.zeros(b, h, seq_q, seq_k, dtype=torch.bool)
    for i in range(seq_q):
        for j in range(seq_k):
            listed = block_mask[:, :, i // bq, j // bk]
            flagged = partial_blocks[:, :, i // bq, j // bk]
            kept[:, :, i, j] = listed & (~flagged | bool(pred[i, j]))
    return kept


def test_hand_example():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 5.0], [-3.0, 7.0]], dtype=torch.float64)
    # head_dim 2 (q, k and v must share it): q = (1, 0), so the logits are k's first coordinates.
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    k = torch.zeros(1, 4, 1, 2, dtype=torch.float64)
    k[0, :, 0, 0] = torch.tensor([0.0, math.log(3.0), 0.0, 0.0], dtype=torch.float64)
    vv = v.view(1, 4, 1, 2)
    # Block size 2 with block 0 listed keeps keys {0, 1}; then block size 1 listing {0, 1}.
    layouts = [
        BlockLayout.from_block_mask(torch.tensor([True, False]).view(1, 1, 1, 2), 1, 2),
        BlockLayout.from_block_mask(torch.tensor([True, True, False, False]).view(1, 1, 1, 4), 1, 1),
    ]
    for layout in layouts:
        res = refresh_attention_torch(q, k, vv, layout, scale=1.0)
        assert abs(float(res.rho[0, 0, 0]) - 2 / 3) < 1e-14
        assert torch.allclose(res.kept_out[0, 0, 0], (v[0] + 3 * v[1]) / 6, atol=1e-14, rtol=0)
        assert torch.allclose(res.out_full[0, 0, 0], (v[0] + 3 * v[1] + v[2] + v[3]) / 6, atol=1e-14, rtol=0)
        residual = res.out_full - res.kept_out
        assert torch.allclose(residual[0, 0, 0], (v[2] + v[3]) / 6, atol=1e-14, rtol=0)
        # O_S from the sparse path: rho * O_S is the kept part.
        o_s = block_sparse_attention(q, k, vv, layout, scale=1.0)
        assert torch.allclose(o_s[0, 0, 0], (v[0] + 3 * v[1]) / 4, atol=1e-14, rtol=0)


def random_case(seed, seq_q, seq_k, bq, bk, density, band):
    g = torch.Generator().manual_seed(seed)
    batch, heads, dim = 2, 3, 12
    q, k, v = (
        torch.randn(batch, s, heads, dim, generator=g, dtype=torch.float64) for s in (seq_q, seq_k, seq_k)
    )
    block_mask = torch.rand(batch, heads, num_blocks(seq_q, bq), num_blocks(seq_k, bk), generator=g) < density
    layout = BlockLayout.from_block_mask(block_mask, bq, bk)
    padding = torch.rand(batch, seq_k, generator=g) < 0.85
    element_mask = kv_partial = None
    partial_blocks = torch.zeros_like(block_mask)
    pred = torch.ones(seq_q, seq_k, dtype=torch.bool)
    if band:
        element_mask = ElementMask.band(5, seq_q, seq_k)
        # Random flags (not just the bounding-box ones): entries not flagged are attended whole.
        kv_partial = torch.rand(layout.kv_indices.shape, generator=g) < 0.6
        for b in range(batch):
            for h in range(heads):
                for r in range(layout.num_q_blocks):
                    for e in range(int(layout.kv_counts[b, h, r])):
                        partial_blocks[b, h, r, layout.kv_indices[b, h, r, e]] = kv_partial[b, h, r, e]
        pred = element_mask.dense()
    kept = dense_kept_mask(block_mask, partial_blocks, pred, bq, bk, seq_q, seq_k)
    masks = dict(key_padding_mask=padding, element_mask=element_mask, kv_partial=kv_partial)
    return q, k, v, layout, masks, kept & padding[:, None, None, :], padding


CASES = [(37, 45, 8, 16), (64, 64, 16, 16), (50, 23, 16, 4)]


@pytest.mark.parametrize("density", [0.0, 0.2, 0.6, 1.0])
@pytest.mark.parametrize("band", [False, True])
@pytest.mark.parametrize(("seq_q", "seq_k", "bq", "bk"), CASES)
def test_one_pass_matches_two_passes_and_oracle(density, band, seq_q, seq_k, bq, bk):
    seed = fresh_seed()
    q, k, v, layout, masks, kept, padding = random_case(seed, seq_q, seq_k, bq, bk, density, band)
    scale = 0.4
    res = refresh_attention_torch(q, k, v, layout, scale=scale, **masks)
    msg = f"seed {seed}"
    assert res.rho.dtype == torch.float64 and res.rho.shape == (2, 3, seq_q), msg
    assert res.out_full.shape == q.shape and res.kept_out.shape == q.shape, msg

    # Two passes: sparse and full attention with their LSEs.
    full = BlockLayout.full(num_blocks(seq_q, bq), num_blocks(seq_k, bk), bq, bk)
    dense = attention_with_stats(q, k, v, full, scale=scale, key_padding_mask=padding)
    sparse = attention_with_stats(q, k, v, layout, scale=scale, **masks)
    assert max_err(res.rho, ratio_from_lse(sparse.lse, dense.lse)) < 1e-12, msg
    assert max_err(res.out_full, dense.out) < 1e-12, msg
    o_s = block_sparse_attention(q, k, v, layout, scale=scale, **masks)
    assert max_err(res.kept_out, res.rho.transpose(1, 2)[..., None] * o_s) < 1e-12, msg

    # Independent oracle.
    out_full, rho, kept_out = oracle(q, k, v, kept, padding, scale)
    assert max_err(res.out_full, out_full) < 1e-12, msg
    assert max_err(res.rho, rho) < 1e-12, msg
    assert max_err(res.kept_out, kept_out) < 1e-12, msg
    # Rows without a kept key: rho 0 and kept_out 0 (not NaN).
    empty = ~kept.any(-1)
    assert (res.rho[empty] == 0).all(), msg
    assert (res.kept_out.transpose(1, 2)[empty] == 0).all(), msg


def test_full_layout_keeps_everything():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 70, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.rand(2, 70, generator=g) < 0.8
    padding[:, 0] = True  # every row has a key
    layout = BlockLayout.full(num_blocks(70, 32), num_blocks(70, 32), 32, 32)
    res = refresh_attention_torch(q, k, v, layout, key_padding_mask=padding)
    msg = f"seed {seed}"
    assert max_err(res.rho, torch.ones_like(res.rho)) < 1e-14, msg
    assert max_err(res.out_full - res.kept_out, torch.zeros_like(q)) < 1e-14, msg
    ref = dense_attention(q, k, v, key_padding_mask=padding)
    assert max_err(res.out_full, ref) < 1e-12, msg


def test_rows_with_no_key_at_all_are_zero():
    q, k, v = (torch.randn(1, 20, 2, 8) for _ in range(3))
    layout = BlockLayout.full(2, 2, 16, 16)
    res = refresh_attention_torch(q, k, v, layout, key_padding_mask=torch.zeros(1, 20, dtype=torch.bool))
    assert torch.equal(res.out_full, torch.zeros_like(q))
    assert torch.equal(res.kept_out, torch.zeros_like(q))
    assert torch.equal(res.rho, torch.zeros(1, 2, 20))


def test_low_precision_and_float32_accumulation():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 90, 2, 24, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(1, 2, 3, 3, generator=g) < 0.5
    layout = BlockLayout.from_block_mask(mask, 32, 32)
    ref = refresh_attention_torch(q, k, v, layout)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        res = refresh_attention_torch(q.to(dtype), k.to(dtype), v.to(dtype), layout)
        assert res.out_full.dtype == res.kept_out.dtype == dtype and res.rho.dtype == torch.float32
        for got, want in zip(res, ref, strict=True):
            assert max_err(got, want) < tol, f"seed {seed} {dtype}"


def test_ratio_from_lse_handles_empty_rows():
    lse_kept = torch.tensor([math.log(4.0), float("-inf"), float("-inf")])
    lse_full = torch.tensor([math.log(6.0), 1.0, float("-inf")])
    rho = ratio_from_lse(lse_kept, lse_full)
    assert torch.allclose(rho, torch.tensor([2 / 3, 0.0, 0.0]))


def test_memory_is_chunked(monkeypatch):
    """A tiny chunk budget forces per-head groups and single-block chunks; results are unchanged."""
    import dit_accel.kernels.refresh as refresh

    seed = fresh_seed()
    q, k, v, layout, masks, _, _ = random_case(seed, 50, 45, 8, 16, 0.5, True)
    want = refresh_attention_torch(q, k, v, layout, **masks)
    monkeypatch.setattr(refresh, "_CHUNK_BYTES", 1)
    got = refresh_attention_torch(q, k, v, layout, **masks)
    for a, b in zip(got, want, strict=True):
        assert max_err(a, b) < 1e-14, f"seed {seed}"


def test_layout_padding_entries_are_ignored():
    """Entries past kv_counts may hold any value (here out of range) and any kv_partial flag."""
    seed = fresh_seed()
    q, k, v, layout, masks, _, _ = random_case(seed, 37, 45, 8, 16, 0.5, True)
    valid = torch.arange(layout.width) < layout.kv_counts.unsqueeze(-1)
    junk = BlockLayout(
        torch.where(valid, layout.kv_indices, torch.full_like(layout.kv_indices, 999)),
        layout.kv_counts,
        layout.block_size_q,
        layout.block_size_k,
        layout.num_k_blocks,
    )
    want = refresh_attention_torch(q, k, v, layout, **masks)
    got = refresh_attention_torch(q, k, v, junk, **{**masks, "kv_partial": masks["kv_partial"] | ~valid})
    for a, b in zip(got, want, strict=True):
        assert max_err(a, b) < 1e-14, f"seed {seed}"


def test_two_pass_refresh_equals_the_one_pass_refresh():
    """The baseline (full and sparse passes with LSEs, rho = exp(LSE_S - LSE_full)) equals one pass."""
    from benchmarks.bench_rettention import two_pass_refresh
    from dit_accel.kernels import refresh_attention

    seed = fresh_seed()
    q, k, v, layout, masks, _, _ = random_case(seed, 75, 61, 16, 16, 0.5, True)
    one = refresh_attention(q, k, v, layout, **masks)
    two = two_pass_refresh(q, k, v, layout, **masks)
    for a, b in zip(one, two, strict=True):
        assert max_err(a, b) < 1e-12, f"seed {seed}"
