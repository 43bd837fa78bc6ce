"""Per-row chunk selections (VMoBA parity mode; PyTorch path only, not on the public kernel API),
against a materialised float64 oracle."""

from __future__ import annotations

import pytest
import torch

from dit_accel.kernels import BlockLayout, num_blocks
from dit_accel.kernels.reference import block_sparse_attention_torch, dense_attention_torch
from dit_accel.kernels.row_chunk_mask import RowChunkMask


def test_row_chunk_mask_equals_the_dense_masked_softmax():
    g = torch.Generator()
    g.seed()
    batch, heads, seq, dim, chunks, block = 2, 3, 70, 16, 6, 16
    q, k, v = (torch.randn(batch, seq, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    key_chunk = torch.randint(chunks, (seq,), generator=g)
    selected = torch.rand(batch, heads, seq, chunks, generator=g) < 0.4
    own = torch.randint(chunks, (seq,), generator=g)
    selected[:, :, torch.arange(seq), own] = True  # every row keeps at least one chunk
    n = num_blocks(seq, block)
    blocks = torch.rand(batch, heads, n, n, generator=g) < 0.7
    layout = BlockLayout.from_block_mask(blocks, block, block)
    out = block_sparse_attention_torch(q, k, v, layout, row_chunk_mask=RowChunkMask(selected, key_chunk)).out
    element = selected[:, :, :, key_chunk]  # (B, H, S, S): allowed by the row's chunk selection
    tiles = blocks.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :seq, :seq]
    ref = dense_attention_torch(q, k, v, block_mask=element & tiles).out
    assert not torch.isnan(out).any()
    assert float((out - ref).norm() / ref.norm()) < 1e-12


def test_row_chunk_mask_shape_mismatch_raises():
    q = torch.randn(1, 32, 1, 16)
    mask = RowChunkMask(torch.ones(1, 1, 31, 2, dtype=torch.bool), torch.zeros(32, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot serve"):
        block_sparse_attention_torch(q, q, q, BlockLayout.full(2, 2, 16, 16), row_chunk_mask=mask)
