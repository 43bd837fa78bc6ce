"""The pure-PyTorch block-sparse path against a materialised float64 masked softmax."""

from __future__ import annotations

import os

import pytest
import torch

from dit_accel.kernels import BlockLayout, attention_with_stats, block_sparse_attention, num_blocks
from dit_accel.kernels.reference import dense_attention_torch


def fresh_generator() -> torch.Generator:
    """A generator on a fresh seed each run (``DIT_TEST_SEED`` replays one); failures name the seed."""
    g = torch.Generator()
    seed = os.environ.get("DIT_TEST_SEED")
    g.manual_seed(int(seed) if seed else int.from_bytes(os.urandom(8), "little") >> 1)
    return g


def random_inputs(g, batch, seq_q, seq_k, heads, dim, dtype=torch.float64):
    q = torch.randn(batch, seq_q, heads, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, seq_k, heads, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, seq_k, heads, dim, generator=g, dtype=dtype)
    return q, k, v


def rel_l2(a, b):
    assert not torch.isnan(a).any()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize(
    ("seq_q", "seq_k", "bq", "bk"), [(77, 61, 16, 8), (128, 128, 32, 32), (45, 100, 16, 32)]
)
def test_matches_masked_dense_attention(density, seq_q, seq_k, bq, bk):
    g = fresh_generator()
    batch, heads, dim = 2, 3, 24
    q, k, v = random_inputs(g, batch, seq_q, seq_k, heads, dim)
    mask = torch.rand(batch, heads, num_blocks(seq_q, bq), num_blocks(seq_k, bk), generator=g) < density
    padding = torch.rand(batch, seq_k, generator=g) < 0.85
    layout = BlockLayout.from_block_mask(mask, bq, bk)
    got = attention_with_stats(q, k, v, layout, key_padding_mask=padding, scale=0.3)
    ref = dense_attention_torch(
        q, k, v, block_mask=mask, block_size_q=bq, block_size_k=bk, key_padding_mask=padding, scale=0.3
    )
    assert rel_l2(got.out, ref.out) < 1e-12, f"seed {g.initial_seed()}"
    assert torch.equal(torch.isinf(got.lse), torch.isinf(ref.lse))
    finite = torch.isfinite(ref.lse)
    assert torch.allclose(got.lse[finite], ref.lse[finite], rtol=0, atol=1e-12)
    assert torch.allclose(got.row_max[finite], ref.row_max[finite], rtol=0, atol=1e-12)
    assert torch.allclose(got.row_sum, ref.row_sum, rtol=1e-12, atol=0)


def test_rows_without_keys_give_zeros_and_minus_infinity():
    g = fresh_generator()
    q, k, v = random_inputs(g, 1, 40, 40, 2, 8)
    mask = torch.ones(1, 2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = False  # an empty list
    padding = torch.ones(1, 40, dtype=torch.bool)
    layout = BlockLayout.from_block_mask(mask, 16, 16)
    out, lse = block_sparse_attention(q, k, v, layout, key_padding_mask=padding, return_lse=True)
    assert torch.equal(out[0, 16:32, 1], torch.zeros(16, 8, dtype=q.dtype))
    assert torch.isneginf(lse[0, 1, 16:32]).all()
    # All keys padded: every row is empty.
    out = block_sparse_attention(q, k, v, layout, key_padding_mask=torch.zeros(1, 40, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


def test_low_precision_inputs_accumulate_in_float32():
    g = fresh_generator()
    q, k, v = random_inputs(g, 1, 70, 70, 2, 32)
    layout = BlockLayout.full(num_blocks(70, 32), num_blocks(70, 32), 32, 32)
    ref = dense_attention_torch(q, k, v).out
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)):
        out, lse = block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), layout, return_lse=True)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert rel_l2(out, ref) < tol


def test_broadcast_layout_serves_every_batch_and_head():
    g = fresh_generator()
    q, k, v = random_inputs(g, 2, 50, 50, 3, 8)
    mask = torch.rand(1, 1, 4, 4, generator=g) < 0.5
    layout = BlockLayout.from_block_mask(mask, 16, 16)
    ref = dense_attention_torch(q, k, v, block_mask=mask, block_size_q=16, block_size_k=16).out
    assert rel_l2(block_sparse_attention(q, k, v, layout), ref) < 1e-12


def test_layout_round_trips_and_lists_are_ascending():
    g = fresh_generator()
    mask = torch.rand(2, 3, 5, 7, generator=g) < 0.4
    layout = BlockLayout.from_block_mask(mask, 16, 16)
    assert torch.equal(layout.to_block_mask(), mask)
    assert torch.equal(layout.kv_counts, mask.sum(-1).int())
    for row, count in zip(layout.kv_indices.reshape(-1, 7), layout.kv_counts.reshape(-1), strict=True):
        ids = row[: int(count)]
        assert torch.all(ids[1:] > ids[:-1])
    assert float(layout.density()) == pytest.approx(mask.float().mean().item())


def test_mismatched_layout_and_bad_inputs_raise():
    q = torch.randn(1, 40, 2, 8)
    layout = BlockLayout.full(2, 2, 16, 16)
    with pytest.raises(ValueError, match="query blocks"):
        block_sparse_attention(q, q, q, layout)
    with pytest.raises(TypeError, match="dtype"):
        block_sparse_attention(q.int(), q.int(), q.int(), BlockLayout.full(3, 3, 16, 16))
    with pytest.raises(ValueError, match="backend"):
        block_sparse_attention(q, q, q, BlockLayout.full(3, 3, 16, 16), backend="cuda")
    with pytest.raises(ValueError, match="key_padding_mask"):
        block_sparse_attention(
            q, q, q, BlockLayout.full(3, 3, 16, 16), key_padding_mask=torch.ones(1, 39).bool()
        )
