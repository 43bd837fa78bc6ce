"""window3d: tile order, the tile window, and the method's output against a token-level oracle."""

from __future__ import annotations

import pytest
import torch

from dit_accel import Window3DConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods.order import tile_order
from dit_accel.methods.window3d import Window3D, window_block_mask

CPU = torch.device("cpu")


def window_start(a: int, n: int, w: int) -> int:
    """Independent statement of the rule: the in-grid run of w tiles starting nearest a - (w-1)//2."""
    w = min(w, n)
    candidates = range(0, n - w + 1)
    return min(candidates, key=lambda s: abs(s - (a - (w - 1) // 2)))


def test_window_start_hand_examples():
    # 5 tiles, window 3: centred inside, shifted inward at both borders.
    assert [window_start(a, 5, 3) for a in range(5)] == [0, 0, 1, 2, 2]
    # Window 4 (even): one more tile after the query than before it.
    assert [window_start(a, 6, 4) for a in range(6)] == [0, 0, 1, 2, 2, 2]
    # Window larger than the axis: the whole axis.
    assert [window_start(a, 3, 7) for a in range(3)] == [0, 0, 0]


@pytest.mark.parametrize(
    ("tiles", "window"), [((3, 5, 6), (1, 3, 4)), ((2, 4, 7), (3, 2, 5)), ((1, 6, 6), (1, 1, 1))]
)
def test_window_block_mask_matches_rule(tiles, window):
    mask = window_block_mask(tiles, window, CPU)
    coords = [(a, b, c) for a in range(tiles[0]) for b in range(tiles[1]) for c in range(tiles[2])]
    for i, q in enumerate(coords):
        expected = [
            all(
                window_start(q[ax], tiles[ax], window[ax])
                <= k[ax]
                < window_start(q[ax], tiles[ax], window[ax]) + min(window[ax], tiles[ax])
                for ax in range(3)
            )
            for k in coords
        ]
        assert mask[i].tolist() == expected
    # Every query tile sees the same number of key tiles, its own tile included.
    per_row = mask.sum(1)
    assert torch.all(per_row == per_row[0])
    assert torch.all(mask.diagonal())


@pytest.mark.parametrize(
    ("grid", "tile"), [((3, 10, 14), (1, 4, 4)), ((5, 7, 9), (2, 4, 4)), ((2, 8, 8), (2, 4, 4))]
)
def test_tile_order_is_a_permutation_that_round_trips(grid, tile):
    order = tile_order(grid, tile, CPU)
    n = grid[0] * grid[1] * grid[2]
    assert int(order.valid.sum()) == n
    assert sorted(order.gather[order.valid].tolist()) == list(range(n))
    x = torch.randn(2, n, 3)
    assert torch.equal(order.from_slots(order.to_slots(x)), x)
    # Tokens of one block share one tile: their (f, h, w) // tile are equal.
    block = tile[0] * tile[1] * tile[2]
    src = order.gather.view(-1, block)
    valid = order.valid.view(-1, block)
    f, h, w = src // (grid[1] * grid[2]), (src // grid[2]) % grid[1], src % grid[2]
    for coord, t in zip((f, h, w), tile, strict=True):
        tile_id = torch.where(valid, coord // t, -1)
        first = tile_id.max(dim=1, keepdim=True).values
        assert torch.all((tile_id == first) | ~valid)


def token_level_mask(grid, tile, window, n_text, text_first, padding):
    """Allowed (query, key) pairs over the joint sequence, built token by token."""
    frames, height, width = grid
    n_video = frames * height * width
    tiles = tuple(-(-g // t) for g, t in zip(grid, tile, strict=True))
    win = tuple(-(-min(w, g) // t) for w, g, t in zip(window, grid, tile, strict=True))
    coords = []
    for idx in range(n_video):
        f, h, w = idx // (height * width), (idx // width) % height, idx % width
        coords.append((f // tile[0], h // tile[1], w // tile[2]))
    total = n_video + n_text
    allowed = torch.zeros(total, total, dtype=torch.bool)
    video = list(range(n_text, total)) if text_first else list(range(n_video))
    text = list(range(n_text)) if text_first else list(range(n_video, total))
    for qi, q in zip(video, coords, strict=True):
        starts = [window_start(q[ax], tiles[ax], win[ax]) for ax in range(3)]
        for ki, k in zip(video, coords, strict=True):
            allowed[qi, ki] = all(
                starts[ax] <= k[ax] < starts[ax] + min(win[ax], tiles[ax]) for ax in range(3)
            )
        allowed[qi, text] = True
    allowed[text, :] = True
    return allowed[None, None] & padding[:, None, None, :]


@pytest.mark.parametrize("text_position", ["none", "first", "last"])
def test_window3d_equals_masked_dense_attention(text_position):
    g = torch.Generator()
    g.seed()
    grid, n_text = (3, 6, 7), (0 if text_position == "none" else 9)
    config = Window3DConfig(block_size=16, tile=(1, 4, 4), window=(1, 5, 4), correction=None)
    method = Window3D(config)
    total = grid[0] * grid[1] * grid[2] + n_text
    q, k, v = (torch.randn(2, total, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(2, total, dtype=torch.bool)
    if n_text:
        text = slice(0, n_text) if text_position == "first" else slice(total - n_text, total)
        padding[1, text] = torch.arange(n_text) < 4  # second item has 5 padded text tokens
    call = CallContext(grid, text_position, 0, None, "cond", "transformer")
    context = AttentionContext(call, LayerContext("blocks.0.attn1", 0))
    out, density = method(q, k, v, scale=None, key_padding_mask=padding if n_text else None, context=context)
    allowed = token_level_mask(grid, config.tile, config.window, n_text, text_position == "first", padding)
    # dense_attention_torch takes block masks; a 1x1 block mask is an element mask.
    ref = dense_attention_torch(q, k, v, block_mask=allowed, key_padding_mask=padding).out
    assert float((out - ref).norm() / ref.norm()) < 1e-12
    assert 0 < float(density) < 1


def test_window_larger_than_grid_is_full_density():
    method = Window3D(Window3DConfig(block_size=16, window=(99, 99, 99)))
    layout = method.layout((2, 9, 9), 0, CPU)
    assert float(layout.density()) == 1.0
