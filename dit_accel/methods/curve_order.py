"""A space-filling-curve order of a video token grid, and which curve blocks touch each other.

Rectified SpaAttn attends block-sparsely over runs of consecutive tokens. In diffusers' frame-major
order (``(t*H + h)*W + w``) a run of 128 tokens is a sliver of one or two rows, so a block's neighbours
in space are scattered over many blocks. Reordering the tokens along a curve whose every stretch stays
inside a compact 3D box makes a block a small cube-ish region, so "nearby in space" becomes "few
nearby blocks" and a block-level neighbour mask is tight.

The curve is our own recursive construction (not Hilbert or Gilbert code). A *walk* covers a box
``o + i*da + j*db + k*dc`` (``0 <= i < La``, ``0 <= j < Lb``, ``0 <= k < Lc``) for signed unit axes
``da, db, dc``. Contract: it visits every cell once, starts at ``o``, ends at ``o + (La-1)*da`` and
every step is a king move (Chebyshev distance exactly 1, diagonals allowed). Boxes are split into
pieces whose walks chain end-to-start (see :func:`_walk`); tiny boxes use a searched Hamiltonian path.

Internally cells are flat frame-major indices and an axis is a signed stride, so moving along an axis
is one addition and a straight segment is a ``range``: 120k cells take well under a second in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import product

import torch

from ..config import positive_int
from .order import TokenOrder

Cell = tuple[int, int, int]
Axis = tuple[int, int]
"""(signed flat stride, length): one axis of a walk's box in flat frame-major index space."""

# King moves in local box coordinates, ordered face (1 non-zero component) < edge (2) < corner (3).
# The sort is stable, so the order inside a kind is fixed and the base paths are deterministic.
_MOVES: tuple[Cell, ...] = tuple(
    sorted(
        (d for d in product((-1, 0, 1), repeat=3) if d != (0, 0, 0)),
        key=lambda d: sum(x != 0 for x in d),
    )
)


def _grid(grid: Sequence[int]) -> tuple[int, int, int]:
    """(T, H, W) as a hashable tuple of positive ints (configs may hand over lists)."""
    if not isinstance(grid, Sequence) or isinstance(grid, str) or len(grid) != 3:
        raise ValueError(f"grid must be a (T, H, W) sequence of 3 positive integers, got {grid!r}")
    t, h, w = (positive_int(v, f"grid[{i}]") for i, v in enumerate(grid))
    return t, h, w


@lru_cache(maxsize=32)  # at most 27 shapes exist
def base_path(la: int, lb: int, lc: int) -> tuple[Cell, ...]:
    """A Hamiltonian king-move path through an ``la x lb x lc`` box from (0,0,0) to (la-1,0,0).

    Local (i, j, k) coordinates along the walk's (a, b, c) axes. Found by depth-first search that tries
    face moves before edge diagonals before corner diagonals (face steps keep the curve's local
    stretches straight and compact), then Warnsdorff's rule (fewest onward moves first) so the search
    rarely backtracks. Boxes up to 3x3x3 have at most 27 cells, so the search is instant; the result
    is cached per shape. Raises RuntimeError if no such path exists.
    """
    if min(la, lb, lc) < 1 or la * lb * lc > 27:
        raise ValueError(f"base boxes are 1..3 per side, got {(la, lb, lc)}")
    if la < 2 and lb * lc > 1:
        raise ValueError(f"a multi-cell walk needs a main axis of length >= 2, got {(la, lb, lc)}")
    cells = set(product(range(la), range(lb), range(lc)))
    goal: Cell = (la - 1, 0, 0)
    path: list[Cell] = [(0, 0, 0)]
    seen = {path[0]}

    def free_neighbours(cell: Cell) -> list[tuple[int, Cell]]:
        """(move kind, cell) for every unvisited king neighbour, in move preference order."""
        out = []
        for d in _MOVES:
            nxt = (cell[0] + d[0], cell[1] + d[1], cell[2] + d[2])
            if nxt in cells and nxt not in seen:
                out.append((abs(d[0]) + abs(d[1]) + abs(d[2]), nxt))
        return out

    def search() -> bool:
        if len(path) == len(cells):
            return path[-1] == goal
        last_step = len(path) == len(cells) - 1
        options = [(kind, nxt) for kind, nxt in free_neighbours(path[-1]) if (nxt == goal) == last_step]
        # Stable sort: kind first, then onward degree; the move table's order breaks remaining ties.
        options.sort(key=lambda item: (item[0], len(free_neighbours(item[1]))))
        for _, nxt in options:
            path.append(nxt)
            seen.add(nxt)
            if search():
                return True
            seen.remove(nxt)
            path.pop()
        return False

    if not search():
        raise RuntimeError(f"no king-move path from (0,0,0) to {goal} in a {la}x{lb}x{lc} box")
    return tuple(path)


def _walk(out: list[int], o: int, a: Axis, b: Axis, c: Axis) -> None:
    """Append the walk of the box at flat index ``o`` with axes a (main), b, c to ``out``.

    Pieces chain because each starts one step from where the previous one ended:

    * a-split (``La >= 4``): halves along a, each walked along a; the second starts at ``o + La1*da``,
      next to the first's end ``o + (La1-1)*da``.
    * U-split along b (``Lb >= 4``): P1 walks the near-b / near-a quarter along +b to
      ``o + (Lb1-1)*db``; P2 walks the whole far-b half along +a to ``o + Lb1*db + (La-1)*da``; P3
      comes back along -b through the near-b / far-a quarter, from ``o + (La-1)*da + (Lb1-1)*db`` to
      ``o + (La-1)*da``, the box's required end. The U-split along c is the same with c for b.

    Some split always applies outside the base cases, and every piece keeps a main length >= 2 (the
    precondition, given ``La >= 2``): outside the line and base cases some side is >= 4. If it is b or
    c, the U-split along it applies, with main lengths ``Lb//2 >= 2`` (P1, P3) and ``La >= 2`` (P2),
    and ``La//2 >= 1`` rows in P1 because ``La >= 2``. Otherwise ``La >= 4 > Lb, Lc`` and the a-split
    applies with halves of length ``>= 2``. The choice below only picks among these valid splits: it
    halves a when a is long against both other sides (keeping pieces cube-ish), else the longer of b
    and c that is >= 4.
    """
    (sa, la), (sb, lb), (sc, lc) = a, b, c
    if lb * lc == 1:
        out.extend(range(o, o + la * sa, sa))
        return
    if la <= 3 and lb <= 3 and lc <= 3:
        out.extend(o + i * sa + j * sb + k * sc for i, j, k in base_path(la, lb, lc))
        return
    if la >= 4 and (la >= 2 * max(lb, lc) or (lb < 4 and lc < 4)):
        la1 = la // 2
        _walk(out, o, (sa, la1), b, c)
        _walk(out, o + la1 * sa, (sa, la - la1), b, c)
        return
    if lb >= 4 and (lc < 4 or lb >= lc):
        (s_split, l_split), other = b, c
    else:
        (s_split, l_split), other = c, b
    l1, la1 = l_split // 2, la // 2
    _walk(out, o, (s_split, l1), (sa, la1), other)
    _walk(out, o + l1 * s_split, a, (s_split, l_split - l1), other)
    _walk(out, o + (la - 1) * sa + (l1 - 1) * s_split, (-s_split, l1), (-sa, la - la1), other)


@lru_cache(maxsize=32)
def _curve_flat(grid: tuple[int, int, int]) -> tuple[int, ...]:
    """The curve as flat frame-major token indices; cached because the walk is pure Python."""
    t, h, w = grid
    axes = {"w": (1, w), "h": (w, h), "t": (h * w, t)}
    order = ("w", "h", "t")
    if w == 1:
        # A main axis of length 1 would break the walk's precondition: lead with the longest axis.
        order = ("h", "t", "w") if h >= t else ("t", "h", "w")
    out: list[int] = []
    _walk(out, 0, *(axes[name] for name in order))
    return tuple(out)


def curve_cells(grid: Sequence[int]) -> list[Cell]:
    """The raw walk of a (T, H, W) grid as (t, h, w) cells in curve order (for tests and inspection).

    For ``W >= 2`` it starts at (0, 0, 0) and ends at (0, 0, W-1): the main axis is w, then h, then t.
    """
    _, h, w = grid_t = _grid(grid)
    return [(i // (h * w), i // w % h, i % w) for i in _curve_flat(grid_t)]


def curve_order(grid: Sequence[int], device: torch.device | str = "cpu") -> TokenOrder:
    """The curve order of a (T, H, W) token grid: slot ``p`` holds frame-major token ``gather[p]``."""
    # Built on the CPU (the walk is Python), then moved once.
    perm = torch.tensor(_curve_flat(_grid(grid)), dtype=torch.long)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return TokenOrder(perm.to(device), inverse.to(device))


def block_neighbours(
    grid: Sequence[int], block_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Which curve blocks touch: bool (n_blocks, n_blocks), ``n_blocks = ceil(N / block_size)``.

    Block ``b`` is curve positions ``[b*block_size, (b+1)*block_size)`` (the last may be partial).
    ``[b, c]`` is True when some token of b is within Chebyshev distance 1 of some token of c in
    (t, h, w); so the diagonal is True and the matrix is symmetric.
    """
    return _block_neighbours(_grid(grid), positive_int(block_size, "block_size"), torch.device(device))


def _block_neighbours(grid: tuple[int, int, int], block_size: int, device: torch.device) -> torch.Tensor:
    # O(27 N): for every offset, pair each token's block with the block of the token at that offset.
    # The offset set is symmetric, so the pairs (and the matrix) are; offset 0 gives the diagonal.
    # scatter_ rather than index assignment: with this many duplicate indices it is ~15x faster on CPU.
    t, h, w = grid
    n_blocks = -(-t * h * w // block_size)
    block = (curve_order(grid).inverse // block_size).view(t, h, w)
    hits = torch.zeros(n_blocks * n_blocks, dtype=torch.bool)
    for dt, dh, dw in product((-1, 0, 1), repeat=3):
        src = block[max(0, -dt) : t - max(0, dt), max(0, -dh) : h - max(0, dh), max(0, -dw) : w - max(0, dw)]
        dst = block[max(0, dt) : t + min(0, dt), max(0, dh) : h + min(0, dh), max(0, dw) : w + min(0, dw)]
        hits.scatter_(0, (src * n_blocks + dst).flatten(), True)
    return hits.view(n_blocks, n_blocks).to(device)
