"""VMoBA chunk partitions: the spec's hand examples, an independent per-token oracle, the layer cycle
and the chunk-size scaling rule."""

from __future__ import annotations

import pytest
import torch

from dit_accel.methods.vmoba_partition import (
    REFERENCE_GRID,
    chunk_partition,
    layer_kind,
    scale_chunk_size,
)

# --- spec §5: hand-checkable permutation on a 4x4x6 grid (96 tokens) ---------------------------------

HAND_GRID = (4, 4, 6)


def test_hand_example_1d():
    p = chunk_partition(HAND_GRID, "1d", 2)
    assert p.num_chunks == 2
    assert p.chunk_start.tolist() == [0, 48, 96]
    assert p.chunk_tokens.tolist() == [48, 48]
    assert p.gather.tolist() == list(range(96))  # 1D is no permutation at all
    assert p.inverse.tolist() == list(range(96))
    assert p.valid.all()
    assert not p.ragged


def test_hand_example_2d():
    p = chunk_partition(HAND_GRID, "2d", (2, 3))
    assert p.num_chunks == 4
    assert p.chunk_start.tolist() == [0, 24, 48, 72, 96]
    tube0 = [0, 1, 2, 6, 7, 8, 24, 25, 26, 30, 31, 32, 48, 49, 50, 54, 55, 56, 72, 73, 74, 78, 79, 80]
    assert p.gather[:24].tolist() == tube0
    assert p.inverse[46].item() == 82  # (t=1, h=3, w=4)
    assert p.inverse[59].item() == 41  # (t=2, h=1, w=5)
    assert p.chunk_shape == (4, 2, 3)


def test_hand_example_3d():
    p = chunk_partition(HAND_GRID, "3d", (2, 2, 3))
    assert p.num_chunks == 8
    assert p.chunk_start.tolist() == list(range(0, 97, 12))
    assert p.gather[:12].tolist() == [0, 1, 2, 6, 7, 8, 24, 25, 26, 30, 31, 32]
    assert p.inverse[46].item() == 46
    assert p.inverse[59].item() == 65
    assert p.chunk_shape == (2, 2, 3)


# --- independent oracle ------------------------------------------------------------------------------


def full_chunk_shape(kind: str, chunk_size, grid) -> tuple[int, int, int]:
    """Chunk extent along (T, H, W), stated per kind, clamped to the grid."""
    if kind == "1d":
        shape = (chunk_size, grid[1], grid[2])
    elif kind == "2d":
        shape = (grid[0], chunk_size[0], chunk_size[1])
    else:
        shape = tuple(chunk_size)
    return tuple(min(s, g) for s, g in zip(shape, grid, strict=True))


def oracle(grid, shape, pad_to):
    """Pure-Python statement of the layout: chunks in id order, members in ascending (frame-major) token
    index, then padding up to a multiple of pad_to. Returns (gather, valid, chunk_of_slot, starts, ids)."""
    T, H, W = grid
    ct, ch, cw = shape
    nh, nw = -(-H // ch), -(-W // cw)
    nt = -(-T // ct)
    ids = []
    for i in range(T * H * W):
        t, h, w = i // (H * W), (i // W) % H, i % W
        ids.append(((t // ct) * nh + h // ch) * nw + w // cw)
    members = [[] for _ in range(nt * nh * nw)]
    for i, c in enumerate(ids):
        members[c].append(i)
    gather, valid, chunk_of_slot, starts = [], [], [], [0]
    for c, m in enumerate(members):
        pad = -len(m) % pad_to
        gather += m + [0] * pad
        valid += [True] * len(m) + [False] * pad
        chunk_of_slot += [c] * (len(m) + pad)
        starts.append(len(gather))
    return gather, valid, chunk_of_slot, starts, ids


CASES = [
    ("1d", 2, (20, 30, 52)),
    ("1d", 2, (21, 30, 52)),  # ragged last frame group
    ("1d", 3, (4, 4, 6)),
    ("1d", 2, (1, 8, 8)),  # image: one frame
    ("2d", (3, 4), (20, 30, 52)),
    ("2d", (3, 4), (5, 31, 50)),  # ragged in H and W
    ("2d", (4, 4), (3, 6, 10)),
    ("2d", (64, 64), (4, 4, 6)),  # larger than the grid: one tube
    ("3d", (4, 6, 4), (20, 30, 52)),
    ("3d", (4, 6, 4), (21, 30, 52)),  # 81-frame Wan: T % 4 != 0
    ("3d", (2, 5, 7), (5, 11, 9)),  # ragged on every axis
    ("3d", (4, 6, 4), (1, 30, 52)),  # image
    ("3d", (8, 2, 100), (4, 4, 6)),  # clamped on T and W
]


@pytest.mark.parametrize("pad_to", [1, 16, 128])
@pytest.mark.parametrize(("kind", "chunk_size", "grid"), CASES)
def test_partition_matches_oracle(kind, chunk_size, grid, pad_to):
    p = chunk_partition(grid, kind, chunk_size, pad_to=pad_to)
    shape = full_chunk_shape(kind, chunk_size, grid)
    gather, valid, chunk_of_slot, starts, ids = oracle(grid, shape, pad_to)
    L = grid[0] * grid[1] * grid[2]

    assert p.chunk_shape == shape
    assert p.ragged == any(g % s for g, s in zip(grid, shape, strict=True))
    assert p.num_chunks == len(starts) - 1
    assert p.gather.dtype == p.inverse.dtype == p.chunk_start.dtype == torch.int64
    assert p.valid.dtype == torch.bool
    assert p.gather.tolist() == gather
    assert p.valid.tolist() == valid
    assert p.chunk_of_slot.tolist() == chunk_of_slot
    assert p.chunk_start.tolist() == starts
    assert int(p.valid.sum()) == L == p.inverse.numel()
    assert p.chunk_tokens.tolist() == torch.bincount(torch.tensor(ids), minlength=p.num_chunks).tolist()

    sizes = p.chunk_start.diff()
    assert bool((sizes % pad_to == 0).all())
    assert bool(((sizes - p.chunk_tokens >= 0) & (sizes - p.chunk_tokens < pad_to)).all())

    # Every real slot's token really has that slot's chunk id.
    ids_t = torch.tensor(ids)
    assert torch.equal(ids_t[p.gather[p.valid]], p.chunk_of_slot[p.valid])
    assert torch.equal(p.gather[p.inverse], torch.arange(L))


@pytest.mark.parametrize("pad_to", [1, 16, 128])
@pytest.mark.parametrize(("kind", "chunk_size", "grid"), CASES)
def test_round_trip(kind, chunk_size, grid, pad_to):
    p = chunk_partition(grid, kind, chunk_size, pad_to=pad_to)
    L = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, L, 3, generator=torch.Generator().manual_seed(0))
    y = p.order.to_slots(x)
    assert y.shape == (2, p.num_slots, 3)
    assert torch.equal(y[:, p.valid], x[:, p.gather[p.valid]])
    assert torch.equal(p.order.from_slots(y), x)


def test_divisible_grid_uses_reference_inside_index():
    """For full chunks the slot is chunk_id * size + the spec's inside index ((t%ct)*ch + h%ch)*cw + w%cw."""
    T, H, W = REFERENCE_GRID
    ct, ch, cw = 4, 6, 4
    p = chunk_partition(REFERENCE_GRID, "3d", (ct, ch, cw))
    i = torch.arange(T * H * W)
    t, h, w = i // (H * W), (i // W) % H, i % W
    block = ((t // ct) * (H // ch) + h // ch) * (W // cw) + w // cw
    inside = ((t % ct) * ch + h % ch) * cw + w % cw
    assert torch.equal(p.inverse, block * (ct * ch * cw) + inside)

    p2 = chunk_partition(REFERENCE_GRID, "2d", (3, 4))
    block2 = (h // 3) * (W // 4) + w // 4
    inside2 = t * 12 + (h % 3) * 4 + w % 4
    assert torch.equal(p2.inverse, block2 * (T * 12) + inside2)


@pytest.mark.parametrize(
    ("kind", "chunk_size", "count", "tokens"),
    [("1d", 2, 10, 3120), ("2d", (3, 4), 130, 240), ("3d", (4, 6, 4), 325, 96)],
)
def test_block_counts_at_reference_grid(kind, chunk_size, count, tokens):
    p = chunk_partition(REFERENCE_GRID, kind, chunk_size)
    assert p.num_chunks == count
    assert p.chunk_tokens.tolist() == [tokens] * count
    assert not p.ragged


def test_pad_to_aligns_chunks_to_blocks():
    p = chunk_partition(REFERENCE_GRID, "3d", (4, 6, 4), pad_to=128)
    assert p.num_slots == 325 * 128
    assert p.chunk_start.tolist() == list(range(0, 325 * 128 + 1, 128))
    # Padding at the end of each chunk: 96 real tokens, then 32 empty slots.
    assert p.valid.view(325, 128)[:, :96].all() and not p.valid.view(325, 128)[:, 96:].any()


def test_lists_and_tuples_give_the_same_partition():
    a = chunk_partition((4, 4, 6), "3d", (2, 2, 3))
    assert torch.equal(chunk_partition([4, 4, 6], "3d", [2, 2, 3]).gather, a.gather)
    one_d = chunk_partition((4, 4, 6), "1d", 2)
    assert torch.equal(chunk_partition((4, 4, 6), "1d", [2]).gather, one_d.gather)
    assert chunk_partition((4, 4, 6), "3d", (2, 2, 3), pad_to=16).num_slots > a.num_slots


@pytest.mark.parametrize(
    ("grid", "kind", "chunk_size", "pad_to", "name"),
    [
        ((4, 4, 6), "2d", (0, 3), 1, "chunk_size"),
        ((4, 4, 6), "3d", (2, -2, 3), 1, "chunk_size"),
        ((4, 4, 6), "3d", (2, 2), 1, "chunk_size"),
        ((4, 4, 6), "2d", (2, 2, 3), 1, "chunk_size"),
        ((4, 4, 6), "2d", 3, 1, "chunk_size"),
        ((4, 4, 6), "1d", 0, 1, "chunk_size"),
        ((4, 4, 6), "1d", (1, 2), 1, "chunk_size"),
        ((4, 4, 6), "1d", 2.5, 1, "chunk_size"),
        ((4, 4, 6), "1d", True, 1, "chunk_size"),
        ((4, 4, 6), "1d", 2, 0, "pad_to"),
        ((4, 4), "1d", 2, 1, "grid"),
        ((4, 0, 6), "1d", 2, 1, "grid"),
        ((4, 4, 6), "4d", 2, 1, "kind"),
    ],
)
def test_invalid_arguments(grid, kind, chunk_size, pad_to, name):
    with pytest.raises(ValueError, match=name):
        chunk_partition(grid, kind, chunk_size, pad_to=pad_to)


# --- layer schedule (spec §3.2) ----------------------------------------------------------------------


def test_layer_kind_default_cycle():
    kinds = [layer_kind(i) for i in range(30)]
    assert kinds[:7] == ["1d", "2d", "3d", "1d", "2d", "3d", "1d"]
    assert kinds.count("1d") == kinds.count("2d") == kinds.count("3d") == 10


def test_layer_kind_first_full_layer_shifts():
    assert [layer_kind(i, first_full_layer=1) for i in range(5)] == ["3d", "1d", "2d", "3d", "1d"]
    assert [layer_kind(i, first_full_layer=2) for i in range(4)] == ["2d", "3d", "1d", "2d"]


def test_layer_kind_other_cycles():
    assert [layer_kind(i, cycle=(2, 1, 3)) for i in range(8)] == [
        "1d", "1d", "2d", "3d", "3d", "3d", "1d", "1d",
    ]  # fmt: skip
    assert [layer_kind(i, cycle=[1, 0, 2]) for i in range(6)] == ["1d", "3d", "3d", "1d", "3d", "3d"]
    assert {layer_kind(i, cycle=(0, 1, 0)) for i in range(10)} == {"2d"}
    for bad in [(0, 0, 0), (1, 1), (1, -1, 1), (1.5, 1, 1)]:
        with pytest.raises(ValueError, match="cycle"):
            layer_kind(0, cycle=bad)


# --- chunk-size scaling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "chunk_size", "expected"),
    [("1d", 2, (2,)), ("2d", (3, 4), (3, 4)), ("3d", [4, 6, 4], (4, 6, 4))],
)
def test_scale_identity_at_reference(kind, chunk_size, expected):
    assert scale_chunk_size(kind, chunk_size, REFERENCE_GRID) == expected


def test_scale_hand_example():
    grid = (21, 45, 80)
    # T: 2*21/20 = 2.1 -> 2
    assert scale_chunk_size("1d", 2, grid) == (2,)
    # H: 3*45/30 = 4.5 -> 4 (half to even); W: 4*80/52 = 6.15 -> 6
    assert scale_chunk_size("2d", (3, 4), grid) == (4, 6)
    # T: 4*21/20 = 4.2 -> 4; H: 6*45/30 = 9; W: 4*80/52 = 6.15 -> 6
    assert scale_chunk_size("3d", (4, 6, 4), grid) == (4, 9, 6)
    # Another half: H 3*55/30 = 5.5 -> 6 (even); other reference grid.
    assert scale_chunk_size("2d", (3, 4), (20, 55, 52)) == (6, 4)
    assert scale_chunk_size("3d", (2, 2, 2), (8, 8, 8), reference_grid=(4, 4, 4)) == (4, 4, 4)


def test_scale_never_below_one():
    assert scale_chunk_size("3d", (4, 6, 4), (1, 1, 1)) == (1, 1, 1)
    assert scale_chunk_size("2d", (3, 4), (1, 2, 2)) == (1, 1)  # 0.2 and 0.15 -> 1
    assert scale_chunk_size("1d", 2, (3, 30, 52)) == (1,)  # 0.3 -> 1


def test_scaled_sizes_feed_chunk_partition():
    sizes = scale_chunk_size("3d", (4, 6, 4), (21, 45, 80))
    p = chunk_partition((21, 45, 80), "3d", sizes)
    assert p.chunk_shape == (4, 9, 6) and p.ragged  # 21 % 4 and 80 % 6


def test_scale_invalid():
    with pytest.raises(ValueError, match="chunk_size"):
        scale_chunk_size("2d", (3,), REFERENCE_GRID)
    with pytest.raises(ValueError, match="reference_grid"):
        scale_chunk_size("1d", 2, REFERENCE_GRID, reference_grid=(20, 0, 52))
    with pytest.raises(ValueError, match="kind"):
        scale_chunk_size("x", 2, REFERENCE_GRID)
