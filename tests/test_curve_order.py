"""Space-filling-curve order: the walk contract (base boxes, signed sub-boxes, whole grids), the
gather/scatter round trip, block compactness against frame-major order, and the block-neighbour
matrix against a brute-force pair loop."""

from __future__ import annotations

import random
from itertools import product

import pytest
import torch

from dit_accel.methods.curve_order import (
    _walk,
    base_path,
    block_neighbours,
    curve_cells,
    curve_order,
)


def _assert_king_path(cells: torch.Tensor, msg: str = "") -> None:
    """Consecutive cells of an (N, 3) path are at Chebyshev distance exactly 1."""
    if len(cells) < 2:
        return
    step = (cells[1:] - cells[:-1]).abs().amax(dim=1)
    bad = torch.nonzero(step != 1).flatten()
    assert bad.numel() == 0, f"{msg}: non-king step after position {bad[:5].tolist()}"


def _frame_major_cells(grid: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = grid
    return torch.tensor(list(product(range(t), range(h), range(w))))


def _block_boxes(cells: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n_blocks, 3) bounding-box extents of consecutive runs of ``block_size`` cells."""
    return torch.stack(
        [
            cells[i : i + block_size].amax(0) - cells[i : i + block_size].amin(0) + 1
            for i in range(0, len(cells), block_size)
        ]
    )


# --- base boxes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(product((2, 3), (1, 2, 3), (1, 2, 3))))
def test_every_base_box_has_a_path(shape):
    la, lb, lc = shape
    path = base_path(la, lb, lc)  # raises RuntimeError if the search fails
    assert path[0] == (0, 0, 0)
    assert path[-1] == (la - 1, 0, 0)
    assert sorted(path) == sorted(product(range(la), range(lb), range(lc)))
    _assert_king_path(torch.tensor(path), f"base box {shape}")


def test_base_path_refuses_a_unit_main_axis():
    with pytest.raises(ValueError):
        base_path(1, 2, 2)


# --- the walk contract on sub-boxes with signed axes ---------------------------------------------


def test_walk_contract_on_signed_boxes():
    """Any box, any assignment of grid axes to (a, b, c), any signs: start at o, end at o+(La-1)da."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(60):
        dims = [rng.randint(1, 11) for _ in range(3)]
        roles = rng.sample(range(3), 3)  # roles[r] = grid axis playing role r (a, b, c)
        if dims[roles[0]] < 2:  # the precondition: a multi-cell box needs La >= 2
            dims[roles[0]] = 2
        signs = [rng.choice((1, -1)) for _ in range(3)]
        strides = (dims[1] * dims[2], dims[2], 1)
        # The origin is the corner from which every signed axis points into the box.
        origin = [0 if signs[r] > 0 else dims[roles[r]] - 1 for r in range(3)]
        origin_cell = [0, 0, 0]
        for r in range(3):
            origin_cell[roles[r]] = origin[r]
        o = sum(c * s for c, s in zip(origin_cell, strides, strict=True))
        axes = [(signs[r] * strides[roles[r]], dims[roles[r]]) for r in range(3)]
        out: list[int] = []
        _walk(out, o, *axes)
        msg = f"seed {seed}, dims {dims}, roles {roles}, signs {signs}"
        n = dims[0] * dims[1] * dims[2]
        assert sorted(out) == list(range(n)), msg
        assert out[0] == o, msg
        assert out[-1] == o + (axes[0][1] - 1) * axes[0][0], msg
        flat = torch.tensor(out)
        cells = torch.stack([flat // strides[0], flat // strides[1] % dims[1], flat % dims[2]], dim=1)
        _assert_king_path(cells, msg)


# --- whole grids -----------------------------------------------------------------------------------

FIXED_GRIDS = [(3, 5, 7), (1, 1, 9), (2, 1, 1), (1, 1, 1), (5, 7, 1), (7, 5, 1), (13, 30, 45), (21, 6, 10)]


def _check_grid(grid: tuple[int, int, int], msg: str) -> None:
    n = grid[0] * grid[1] * grid[2]
    order = curve_order(grid)
    assert order.gather.dtype == torch.long and order.inverse.dtype == torch.long
    assert torch.equal(order.gather.sort().values, torch.arange(n)), msg
    assert torch.equal(order.inverse[order.gather], torch.arange(n)), msg
    cells = torch.tensor(curve_cells(grid))
    assert torch.equal(cells, _frame_major_cells(grid)[order.gather]), msg
    _assert_king_path(cells, msg)
    x = torch.randn(2, n, 3)
    curved = order.to_slots(x)
    assert torch.equal(curved[:, 0], x[:, order.gather[0]]), msg
    assert torch.equal(order.from_slots(curved), x), msg


def test_curve_over_random_grids():
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for _ in range(20):
        grid = (rng.randint(1, 13), rng.randint(1, 13), rng.randint(1, 13))
        _check_grid(grid, f"seed {seed}, grid {grid}")


@pytest.mark.parametrize("grid", FIXED_GRIDS)
def test_curve_over_fixed_grids(grid):
    _check_grid(grid, f"grid {grid}")


def test_production_grid():
    """HunyuanVideo-sized latent grid: the size the module is meant to handle quickly."""
    _check_grid((33, 45, 80), "grid (33, 45, 80)")


@pytest.mark.parametrize("grid", [(1, 1, 2), (3, 5, 7), (2, 1, 9), (4, 4, 4), (21, 6, 10), (13, 30, 45)])
def test_top_level_walk_ends_at_far_end_of_first_row(grid):
    cells = curve_cells(grid)
    assert cells[0] == (0, 0, 0)
    assert cells[-1] == (0, 0, grid[2] - 1)


def test_argument_normalisation():
    assert torch.equal(curve_order([3, 5, 7]).gather, curve_order((3, 5, 7), torch.device("cpu")).gather)
    with pytest.raises(ValueError):
        curve_order((0, 5, 7))
    with pytest.raises(ValueError):
        curve_order((3, 5))
    with pytest.raises(ValueError):
        block_neighbours((3, 5, 7), 0)


# --- compactness -----------------------------------------------------------------------------------


def _surface(extents: torch.Tensor) -> torch.Tensor:
    """Bounding-box surface area of (n, 3) extents, as float64."""
    e = extents.double()
    return 2 * (e[:, 0] * e[:, 1] + e[:, 1] * e[:, 2] + e[:, 0] * e[:, 2])


def test_blocks_are_compact():
    grid, block = (8, 16, 16), 128
    curve = _block_boxes(torch.tensor(curve_cells(grid)), block)
    frame = _block_boxes(_frame_major_cells(grid), block)
    curve_volume = curve.prod(dim=1).double().mean().item()
    frame_volume = frame.prod(dim=1).double().mean().item()
    assert curve_volume <= 3 * block
    assert curve_volume <= frame_volume
    # Both orders tile this grid exactly (8x4x4 vs 1x8x16 blocks), so volume alone cannot separate
    # them; the bounding-box surface does: a cube-ish block has fewer tokens on its boundary.
    assert _surface(curve).mean() < _surface(frame).mean()


@pytest.mark.parametrize("grid", [(13, 30, 45), (20, 30, 52), (33, 45, 80)])
def test_blocks_beat_frame_major_where_rows_do_not_tile(grid):
    """When W does not divide the block size, frame-major blocks straddle rows; curve blocks do not."""
    block = 128
    curve = _block_boxes(torch.tensor(curve_cells(grid)), block).prod(dim=1).double().mean().item()
    frame = _block_boxes(_frame_major_cells(grid), block).prod(dim=1).double().mean().item()
    assert curve <= 3 * block
    assert curve < frame


# --- block neighbours ------------------------------------------------------------------------------


def _brute_neighbours(grid: tuple[int, int, int], block_size: int) -> torch.Tensor:
    cells = curve_cells(grid)
    n_blocks = -(-len(cells) // block_size)
    ref = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    for p, a in enumerate(cells):
        for q, b in enumerate(cells):
            if max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2])) <= 1:
                ref[p // block_size, q // block_size] = True
    return ref


@pytest.mark.parametrize(
    ("grid", "block_size"), [((3, 5, 7), 8), ((2, 4, 6), 5), ((1, 1, 9), 2), ((4, 3, 1), 2)]
)
def test_block_neighbours_match_brute_force(grid, block_size):
    nb = block_neighbours(grid, block_size)
    n = grid[0] * grid[1] * grid[2]
    assert nb.dtype == torch.bool
    assert nb.shape == (-(-n // block_size),) * 2
    assert torch.equal(nb, nb.T)
    assert nb.diagonal().all()
    assert not nb.all()  # the small grids still have non-touching blocks: the test can discriminate
    assert torch.equal(nb, _brute_neighbours(grid, block_size))
