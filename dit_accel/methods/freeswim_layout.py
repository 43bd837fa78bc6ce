"""FreeSwim's spatial window as a block layout, built analytically (never from an L x L mask).

Every query at grid position (h, w) attends the keys of all frames whose row lies in
``[row_lo(h), row_hi(h))`` and column in ``[col_lo(w), col_hi(w))``. The inward window
(spec 3.3) shifts a (Lh, Lw) window to stay on the grid, so every query sees the same number of
keys; the clipped window (the ablation) cuts it at the border instead.

Token order (spec 4a): in diffusers' frame-major order a 128-token tile is a strip of one row, the
union of its queries' windows spans every column, and no key tile is ever fully inside a window.
The default order is spatial-major, ``p = (h W + w) F + t``: all frames of one position are
adjacent, a tile is a short run of positions, and most visited key tiles lie entirely inside
every query's window (no predicate in the kernel).

Classification is exact: a tile's positions form a run of the raster (row-major) position order,
which splits into at most three rectangles (a partial first row, full middle rows, a partial last
row). For a query rectangle of rows [r0, r1] and columns [c0, c1], the union of its windows is
``[row_lo(r0), row_hi(r1)) x [col_lo(c0), col_hi(c1))`` (bounds are monotone and move by at most
one per step, so the union is one interval per axis) and the intersection is
``[row_lo(r1), row_hi(r0)) x [col_lo(c1), col_hi(c0))``. A key tile is visited when one of its
rectangles meets one of the query tile's unions, and full when all of its rectangles lie in all of
the query tile's intersections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import BlockLayout, ElementMask, num_blocks
from .order import TokenOrder, spatial_major_order

ORDERS = ("spatial", "raster")


@dataclass(frozen=True)
class WindowLayout:
    """Everything the window branch needs for one grid; cached per grid and settings.

    Attributes:
        layout: (1, 1) block layout of visited tiles, in ``order``.
        kv_partial: flags shaped like ``layout.kv_indices``: the tiles that need the predicate.
        element_mask: the exact per-token window, in ``order``.
        order: the slot order the layout is expressed in (spatial-major or frame-major).
        full_tiles: how many visited tiles need no predicate (for reports).
    """

    layout: BlockLayout
    kv_partial: torch.Tensor
    element_mask: ElementMask
    order: TokenOrder
    full_tiles: int

    def tile_density(self) -> float:
        return float(self.layout.kv_counts.sum()) / (self.layout.num_q_blocks * self.layout.num_k_blocks)


def window_bounds(size: int, extent: int, inward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi) of the window along one axis for every query coordinate 0..size-1.

    ``extent`` tokens centred on the query (``extent // 2`` before it); inward windows shift to
    stay inside [0, size), clipped ones are cut there. An extent of at least ``size`` is the whole
    axis.
    """
    pos = torch.arange(size)
    half = extent // 2
    if inward:
        extent = min(extent, size)
        lo = (pos - half).clamp(0, size - extent)
        return lo, lo + extent
    return (pos - half).clamp_min(0), (pos - half + extent).clamp_max(size)


def _run_rectangles(first: torch.Tensor, last: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns ``[r0, r1, c0, c1]`` (inclusive) of the <= 3 rectangles of each position run.

    A run ``first..last`` of raster positions (row-major over ``cols`` columns) is a partial first
    row, whole middle rows and a partial last row. Returns (n, 3, 4) rectangles and (n, 3) validity.
    """
    rs, re = first // cols, last // cols
    cs, ce = first % cols, last % cols
    one_row = rs == re
    last_col = torch.full_like(cs, cols - 1)
    zero = torch.zeros_like(cs)
    rects = torch.stack(
        [
            torch.stack([rs, rs, cs, torch.where(one_row, ce, last_col)], -1),  # first (or only) row
            torch.stack([rs + 1, re - 1, zero, last_col], -1),  # whole middle rows
            torch.stack([re, re, zero, ce], -1),  # last row
        ],
        dim=1,
    )
    valid = torch.stack([torch.ones_like(one_row), re - rs >= 2, ~one_row], dim=1)
    return rects, valid


def _tile_runs(n_tokens: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last token of every tile of ``block`` consecutive tokens."""
    start = torch.arange(num_blocks(n_tokens, block)) * block
    return start, torch.clamp(start + block, max=n_tokens) - 1


def _tile_rectangles(grid: tuple[int, int, int], order: str, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid rectangles of every tile's positions in ``order`` (see ``_run_rectangles``).

    Frame-major (the debugging order): a tile inside one frame is a run of that frame's raster;
    a tile crossing a frame boundary is given the whole grid, which is conservative (visited more
    often than needed, never wrongly full) and keeps the result exact through the predicate.
    """
    frames, rows, cols = grid
    start, stop = _tile_runs(frames * rows * cols, block)
    if order == "spatial":
        return _run_rectangles(start // frames, stop // frames, cols)
    per_frame = rows * cols
    rects, valid = _run_rectangles(start % per_frame, stop % per_frame, cols)
    crosses = start // per_frame != stop // per_frame
    whole = torch.tensor([0, rows - 1, 0, cols - 1]).expand(len(start), 3, 4)
    rects = torch.where(crosses[:, None, None], whole, rects)
    valid = torch.where(crosses[:, None], torch.tensor([True, False, False]), valid)
    return rects, valid


def _classify(
    rects: torch.Tensor,
    valid: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(visited, full), bool (n_tiles, n_tiles), from every tile's rectangles (queries = keys)."""
    row_lo, row_hi, col_lo, col_hi = bounds
    # Invalid rectangles (masked below) may hold out-of-range rows; clamp them for the lookups.
    rows, cols = row_lo.numel() - 1, col_lo.numel() - 1
    rects = torch.stack(
        [
            rects[..., 0].clamp(0, rows),
            rects[..., 1].clamp(0, rows),
            rects[..., 2].clamp(0, cols),
            rects[..., 3].clamp(0, cols),
        ],
        -1,
    )
    r0, r1, c0, c1 = rects.unbind(-1)  # (n, 3) each
    n = rects.shape[0]
    # Dims: query tile, key tile, key rectangle, query rectangle.
    kr0, kr1, kc0, kc1 = (x.view(1, n, 3, 1) for x in (r0, r1, c0, c1))
    k_valid = valid.view(1, n, 3, 1)
    visited = torch.empty(n, n, dtype=torch.bool)
    full = torch.empty(n, n, dtype=torch.bool)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)

        def per_query(x: torch.Tensor, a: int = a, b: int = b) -> torch.Tensor:
            return x[a:b].view(b - a, 1, 1, 3)

        q_valid = per_query(valid)
        # Union of the query rectangle's windows: [lo(first), hi(last)) on each axis.
        meets = (
            (kr0 < per_query(row_hi[r1]))
            & (kr1 >= per_query(row_lo[r0]))
            & (kc0 < per_query(col_hi[c1]))
            & (kc1 >= per_query(col_lo[c0]))
        )
        visited[a:b] = (meets & k_valid & q_valid).flatten(2).any(-1)
        # Intersection of its windows: [lo(last), hi(first)).
        inside = (
            (kr0 >= per_query(row_lo[r1]))
            & (kr1 < per_query(row_hi[r0]))
            & (kc0 >= per_query(col_lo[c1]))
            & (kc1 < per_query(col_hi[c0]))
        )
        full[a:b] = (inside | ~k_valid | ~q_valid).flatten(2).all(-1)
    return visited, full & visited


def window_layout(
    grid: tuple[int, int, int],
    window: tuple[int, int],
    inward: bool,
    order: str,
    block_size: int,
    device: torch.device,
) -> WindowLayout:
    """The window branch's layout for a (frames, rows, cols) grid (the method caches it per grid)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    frames, rows, cols = grid
    n = frames * rows * cols
    row_lo, row_hi = window_bounds(rows, window[0], inward)
    col_lo, col_hi = window_bounds(cols, window[1], inward)
    token_order = spatial_major_order(grid) if order == "spatial" else TokenOrder.frame_major(n)
    gather = token_order.gather
    rects, valid = _tile_rectangles(grid, order, block_size)
    visited, full = _classify(rects, valid, (row_lo, row_hi, col_lo, col_hi))
    layout = BlockLayout.from_block_mask(visited[None, None], block_size, block_size)
    q_block = torch.arange(layout.num_q_blocks).view(1, 1, -1, 1)
    kv_partial = ~full[q_block, layout.kv_indices.long().clamp(0, layout.num_k_blocks - 1)]
    coord = ElementMask.grid_coords(frames, rows, cols, order=gather)[1:].to(torch.int64)
    element_mask = ElementMask(
        torch.stack([row_lo[coord[0]], col_lo[coord[1]]]).to(torch.int32),
        torch.stack([row_hi[coord[0]], col_hi[coord[1]]]).to(torch.int32),
        coord.to(torch.int32),
        "inward_window" if inward else "clipped_window",
    )
    return WindowLayout(
        BlockLayout(
            layout.kv_indices.to(device),
            layout.kv_counts.to(device),
            block_size,
            block_size,
            layout.num_k_blocks,
        ),
        kv_partial.to(device),
        element_mask.to(device),
        TokenOrder(gather.to(device), token_order.inverse.to(device), None, token_order.identity),
        int(full.sum()),
    )
