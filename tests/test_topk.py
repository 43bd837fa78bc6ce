"""topk: pooled top-k block selection (the quality benchmark's baseline) against a token oracle."""

from __future__ import annotations

import pytest
import torch

from dit_accel import TopKConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods.pooling import pool_blocks
from dit_accel.methods.topk import TopK, top_k_mask


def context(grid, text_position="none") -> AttentionContext:
    call = CallContext(
        grid=grid,
        text_position=text_position,
        step_index=3,
        num_inference_steps=8,
        cfg_branch="cond",
        transformer_name="transformer",
    )
    return AttentionContext(call, LayerContext(name="blocks.0.attn1", index=0))


def test_block_means_ignore_padding_slots():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    valid = torch.tensor([[True, True, False, False, True, True, True, True]])
    means = pool_blocks(x, 4, valid, "valid", torch.float32).mean
    assert means.flatten().tolist() == [0.5, 5.5]


def test_top_k_mask_keeps_exactly_the_largest():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]])
    assert top_k_mask(scores, 2).tolist() == [[False, True, False, True], [True, False, True, False]]


def oracle(q, k, v, grid, density, n_text=0):
    """Written independently: token coordinates -> (1, 4, 4) tile id, mean per tile over its real
    tokens, top-k tiles per query tile, then masked softmax over tokens; text keys (after the
    video tokens) always allowed."""
    f, h, w = torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij")
    per_axis = [-(-grid[1] // 4), -(-grid[2] // 4)]
    tile_id = ((f * per_axis[0] + h // 4) * per_axis[1] + w // 4).flatten()
    n_tiles = grid[0] * per_axis[0] * per_axis[1]
    one_hot = torch.nn.functional.one_hot(tile_id, n_tiles).double()
    kept = max(1, round(density * n_tiles))
    n = tile_id.numel()
    expected = torch.empty(q.shape[0], n, *q.shape[2:], dtype=q.dtype)
    for b in range(q.shape[0]):
        for head in range(q.shape[2]):
            qm = (one_hot.T @ q[b, :n, head]) / one_hot.sum(0)[:, None]
            km = (one_hot.T @ k[b, :n, head]) / one_hot.sum(0)[:, None]
            block_mask = torch.zeros(n_tiles, n_tiles, dtype=torch.bool)
            block_mask.scatter_(1, (qm @ km.T).topk(kept, dim=1).indices, True)
            token_mask = torch.cat(
                [block_mask[tile_id][:, tile_id], torch.ones(n, n_text, dtype=torch.bool)], 1
            )
            logits = q[b, :n, head] @ k[b, :, head].T / q.shape[-1] ** 0.5
            expected[b, :, head] = (
                torch.softmax(logits.masked_fill(~token_mask, -torch.inf), -1) @ v[b, :, head]
            )
    return expected, kept / n_tiles


@pytest.mark.parametrize(("grid", "density"), [((2, 8, 8), 0.25), ((3, 6, 10), 0.5)])
def test_topk_equals_a_masked_dense_oracle(grid, density):
    torch.manual_seed(0)
    config = TopKConfig(density=density, block_size=16, tile=(1, 4, 4))
    n = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(2, n, 2, 8, dtype=torch.float64) for _ in range(3))
    out, layout_density = TopK(config)(q, k, v, scale=None, key_padding_mask=None, context=context(grid))
    expected, kept_share = oracle(q, k, v, grid, density)
    assert float((out - expected).norm() / expected.norm()) < 1e-12
    assert float(layout_density) == pytest.approx(kept_share)


def test_topk_attends_every_text_key_and_keeps_text_rows_dense():
    torch.manual_seed(1)
    grid, n_text = (1, 8, 8), 5
    config = TopKConfig(density=0.25, block_size=16, tile=(1, 4, 4))
    q, k, v = (torch.randn(1, 64 + n_text, 2, 8, dtype=torch.float64) for _ in range(3))
    out, _ = TopK(config)(q, k, v, scale=None, key_padding_mask=None, context=context(grid, "last"))
    dense = dense_attention_torch(q, k, v).out
    expected_video, _ = oracle(q, k, v, grid, 0.25, n_text)
    assert float((out[:, 64:] - dense[:, 64:]).norm() / dense[:, 64:].norm()) < 1e-12
    assert float((out[:, :64] - expected_video).norm() / expected_video.norm()) < 1e-12


@pytest.mark.parametrize("density", [0.0, 1.5, True, "half"])
def test_topk_density_must_lie_in_the_unit_interval(density):
    with pytest.raises(ValueError, match="density"):
        TopKConfig(density=density)


def test_topk_realized_density_equals_its_target_on_a_pipeline():
    import tiny_pipelines

    import dit_accel

    pipe, call = tiny_pipelines.BUILDERS["wan21"]()
    dit_accel.enable_sparse_attention(pipe, "topk", density=0.3, block_size=16, tile=(1, 4, 4))
    pipe(**call)
    report = dit_accel.sparse_attention_report(pipe)
    dit_accel.disable_sparse_attention(pipe)
    n_tiles = 3 * 3 * 4  # grid 3x10x14 in (1, 4, 4) tiles
    assert report.mean_density == pytest.approx(round(0.3 * n_tiles) / n_tiles)
