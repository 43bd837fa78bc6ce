"""Re-ttention's static layouts against a token-by-token statement of the reference masks (spec §3.2)."""

from __future__ import annotations

import time

import pytest
import torch

from dit_accel.kernels import block_sparse_attention
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods.rettention_layouts import (
    StaticSparseLayout,
    band_layout,
    frame_window_layout,
    window3d_layout,
)

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- independent oracles
def band_rule(n: int, sparsity: float, num_text: int) -> torch.Tensor:
    """bool (n, n + num_text): raster band |i - j| <= int(n * sparsity) // 2, then the text keys."""
    half = int(n * sparsity) // 2
    rows = [[abs(i - j) <= half for j in range(n)] + [True] * num_text for i in range(n)]
    return torch.tensor(rows, dtype=torch.bool).view(n, n + num_text)


def frame_window_rule(grid: tuple[int, int, int], sparsity: float, num_text: int) -> torch.Tensor:
    """bool (L, L + num_text), frame-major video queries x [frame-major video keys, text keys]."""
    frames, rows, cols = grid
    per_frame = rows * cols
    half = int(per_frame * sparsity) // 2
    out = []
    for t in range(frames * per_frame):
        i = t % per_frame
        lo, hi = max(0, i - half), min(per_frame, i + half + 1)
        out.append([lo <= s % per_frame < hi for s in range(frames * per_frame)] + [True] * num_text)
    return torch.tensor(out, dtype=torch.bool).view(frames * per_frame, -1)


def expand_to_original(static: StaticSparseLayout) -> torch.Tensor:
    """What the kernel attends, as bool (L, L + num_text) in frame-major order (video then text).

    Built from the layout's tiles, the element predicate on the flagged entries, and the padding.
    """
    lay = static.layout
    n_slots, n_keys = static.num_slots, static.num_slots + static.num_text
    block = lay.to_block_mask()[0, 0]
    partial = torch.zeros_like(block)
    if static.kv_partial is not None:
        counts = lay.kv_counts[0, 0]
        for qb in range(lay.num_q_blocks):
            for e in range(int(counts[qb])):
                partial[qb, lay.kv_indices[0, 0, qb, e]] = static.kv_partial[0, 0, qb, e]
    tiles = block.repeat_interleave(lay.block_size_q, 0).repeat_interleave(lay.block_size_k, 1)
    part = partial.repeat_interleave(lay.block_size_q, 0).repeat_interleave(lay.block_size_k, 1)
    allowed = tiles[:n_slots, :n_keys].clone()
    if static.element_mask is not None:
        allowed &= static.element_mask.dense() | ~part[:n_slots, :n_keys]
    allowed &= static.key_valid()[None]
    if static.order.identity:
        return allowed
    inv = static.order.inverse
    key_index = torch.cat([inv, torch.arange(n_slots, n_keys)])
    return allowed[inv][:, key_index]


# ----------------------------------------------------------------------------- hand examples (§5)
def test_band_hand_example():
    static = band_layout(8, 0.5, 0, block_q=2, block_k=2)
    dense = expand_to_original(static)
    assert dense[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert dense[4].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]
    assert dense[7].nonzero().flatten().tolist() == [5, 6, 7]


def test_cogvideox_hand_example():
    # 2 text tokens first, 2 frames of 1 x 6 tokens, window_size 2 (half 1) = sparsity 2 / 6.
    static = frame_window_layout((2, 1, 6), 2 / 6, 2, block_q=4, block_k=4)
    dense = expand_to_original(static)  # video rows x [video 0..11, text 0..1]
    # Joint order: text 0-1 first, then video tokens 2-13.
    joint = torch.cat([dense[:, 12:], dense[:, :12]], dim=1)
    assert joint[2 - 2].nonzero().flatten().tolist() == [0, 1, 2, 3, 8, 9]
    assert joint[13 - 2].nonzero().flatten().tolist() == [0, 1, 6, 7, 12, 13]
    assert joint[:, :2].all()  # every video row keeps both text keys


# ----------------------------------------------------------------------------- exact masks
BAND_CASES = [
    (8, 0.5, 0, 2, 2),
    (37, 0.25, 0, 8, 4),
    (37, 0.25, 5, 8, 4),
    (64, 0.125, 3, 16, 16),
    (50, 0.1, 7, 4, 8),
]
FRAME_CASES = [
    ((2, 1, 6), 2 / 6, 2, 4, 4),
    ((3, 4, 5), 0.3, 0, 8, 4),
    ((3, 4, 5), 0.3, 6, 8, 16),
    ((5, 3, 3), 0.5, 4, 16, 8),
    ((4, 6, 7), 0.2, 9, 16, 16),
]


@pytest.mark.parametrize(("n", "sparsity", "num_text", "bq", "bk"), BAND_CASES)
def test_band_matches_rule(n, sparsity, num_text, bq, bk):
    static = band_layout(n, sparsity, num_text, block_q=bq, block_k=bk)
    expected = band_rule(n, sparsity, num_text)
    assert torch.equal(expand_to_original(static), expected)
    assert static.element_density() == pytest.approx(expected.double().mean().item(), abs=1e-12)
    if num_text:
        # Text keys start a fresh key block, and no text tile is ever partial.
        assert static.num_slots % bk == 0


@pytest.mark.parametrize(("grid", "sparsity", "num_text", "bq", "bk"), FRAME_CASES)
def test_frame_window_matches_rule(grid, sparsity, num_text, bq, bk):
    static = frame_window_layout(grid, sparsity, num_text, block_q=bq, block_k=bk)
    expected = frame_window_rule(grid, sparsity, num_text)
    assert torch.equal(expand_to_original(static), expected)
    assert static.element_density() == pytest.approx(expected.double().mean().item(), abs=1e-12)


def test_window3d_wraps_tile_layout():
    static = window3d_layout((3, 10, 12), (2, 8, 8), (1, 4, 4), 16, 5)
    assert static.element_mask is None and static.kv_partial is None
    dense = expand_to_original(static)
    assert dense[:, -5:].all()
    assert static.element_density() == pytest.approx(dense.double().mean().item(), abs=1e-12)
    x = torch.randn(2, 360, 3)
    assert torch.equal(static.order.from_slots(static.order.to_slots(x)), x)
    # tile=None: Window3DConfig's default tile for the block size (64 -> (1, 8, 8)).
    default = window3d_layout((3, 10, 12), (2, 8, 8), None, 64, 5)
    assert default.num_slots == 3 * 16 * 16


# ----------------------------------------------------------------------------- through the kernel
def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("use_padding_mask", [True, False])
@pytest.mark.parametrize(
    "case",
    [("band", 37, 0.25, 5, 8, 4), ("band", 50, 0.1, 0, 16, 8), ("frame", (3, 4, 5), 0.3, 6, 8, 16)]
    + [("frame", (4, 6, 7), 0.2, 9, 16, 16), ("window3d",)],
)
def test_kernel_matches_dense_oracle(case, use_padding_mask):
    if case[0] == "band":
        static = band_layout(*case[1:])
        expected = band_rule(case[1], case[2], case[3])
    elif case[0] == "frame":
        static = frame_window_layout(*case[1:])
        expected = frame_window_rule(case[1], case[2], case[3])
    else:
        static = window3d_layout((3, 10, 12), (2, 8, 8), (1, 4, 4), 16, 5)
        expected = expand_to_original(static)
    n_video, n_text = static.num_video, static.num_text
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n_video + n_text, 3, 8, generator=gen, dtype=torch.float64) for _ in range(3))

    def keys(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([static.order.to_slots(x[:, :n_video]), x[:, n_video:]], dim=1)

    kpm = static.key_valid()[None].expand(2, -1) if use_padding_mask else None
    needs_padding_mask = static.element_mask is None and static.order.valid is not None
    out = block_sparse_attention(
        static.order.to_slots(q[:, :n_video]),
        keys(k),
        keys(v),
        static.layout,
        key_padding_mask=kpm,
        element_mask=static.element_mask,
        kv_partial=static.kv_partial,
        backend="torch",
    )
    out = static.order.from_slots(out)
    ref = dense_attention_torch(
        q[:, :n_video], k, v, element_mask=None, key_padding_mask=None, block_mask=expected[None, None]
    ).out
    if needs_padding_mask and not use_padding_mask:
        # A tile-granular layout has no predicate to drop its padding slots: without the key
        # padding mask they leak into the softmax, which is why callers must pass key_valid().
        assert rel_l2(out, ref) > 1e-6
    else:
        assert rel_l2(out, ref) < 1e-10


# ----------------------------------------------------------------------------- spec shapes (§4a)
def tile_stats(static: StaticSparseLayout) -> tuple[float, float]:
    """(tile density, fraction of visited tiles that are full) over video query blocks, all keys."""
    lay = static.layout
    density = lay.density().item()
    valid = torch.arange(lay.width) < lay.kv_counts[..., None]
    partial = static.kv_partial if static.kv_partial is not None else torch.zeros_like(valid)
    full = (valid & ~partial).sum().item() / valid.sum().item()
    return density, full


def test_spec_shapes_pixart_band():
    start = time.perf_counter()
    # 64 x 64 tiles: the spec's "raster, 64" row (4.6 %, 33.7 % full).
    static = band_layout(4096, 0.03125, 0, block_q=64, block_k=64)
    density, full = tile_stats(static)
    print(f"PixArt band 64/64: tile density {density:.2%}, full among visited {full:.1%}")
    assert density == pytest.approx(0.046, abs=0.001)
    assert full == pytest.approx(0.337, abs=0.002)
    # The brief's default 128 x 64 tiles: 4 key blocks per interior query block.
    static = band_layout(4096, 0.03125, 0, block_q=128, block_k=64)
    density, full = tile_stats(static)
    print(f"PixArt band 128/64: tile density {density:.2%}, full among visited {full:.1%}")
    assert density == pytest.approx((30 * 4 + 2 * 3) / (32 * 64), abs=1e-9)
    assert static.element_density() == pytest.approx(
        sum(min(4096, i + 65) - max(0, i - 64) for i in range(4096)) / 4096**2, abs=1e-12
    )
    assert time.perf_counter() - start < 5


def test_spec_shapes_cogvideox():
    start = time.perf_counter()
    static = frame_window_layout((13, 30, 45), 0.03125, 226, block_q=128, block_k=64)
    assert static.num_slots == 17_600  # 17,550 video tokens padded to a multiple of 64
    density, full = tile_stats(static)
    elem = static.element_density()
    print(
        f"CogVideoX in-frame-index-major 128/64: tile density {density:.2%}, full among visited {full:.1%}, "
        f"element density {elem:.2%}"
    )
    assert density < 0.09  # raster order gives 18-30 %
    assert full > 0.5
    # 13 * 43 + 226 = 785 of 17,776 keys for interior rows (4.4 %), a little less at frame borders.
    assert 0.043 < elem < 785 / 17_776
    # Interior video query: exactly 13 * 43 video keys (its row alone; the full mask is too large).
    mid = static.order.inverse[675]  # frame 0, in-frame index 675
    em = static.element_mask
    allowed = (em.q_lo[0, mid] <= em.k_coord[0, :17_550]) & (em.k_coord[0, :17_550] < em.q_hi[0, mid])
    assert int(allowed.sum()) == 13 * 43
    assert time.perf_counter() - start < 5
