"""One token-order type, and the simple orders built from a token grid.

Diffusers flattens the video token grid frame-major (``(t*H + h)*W + w``): a block of 128
consecutive tokens is then a thin strip of one row. Every planner wants blocks that are compact
in space and time (or geometric chunks, or band coordinates), so every method attends in its own
order of *slots*: a permutation of the tokens, possibly with padding slots so that groups start on
block boundaries. ``TokenOrder`` is that order; the driver gathers into it once per call and
scatters back, and the session caches one per grid. Padding slots hold copies of token 0: masked
as keys, their query outputs dropped.

Builders here: tiles (``window3d``, ``topk``) and spatial-major (FreeSwim, Re-ttention's CogVideoX
window). The space-filling curve is in ``curve_order`` and VMoBA's chunk
partitions in ``vmoba_partition``; both return this type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenOrder:
    """Gather/scatter indices between frame-major tokens and a method's slots.

    Attributes:
        gather: long (slots,): the frame-major token held by every slot (0 for padding slots).
        inverse: long (tokens,): the slot of every frame-major token.
        valid: bool (slots,): False for padding slots; None when every slot holds a token.
        identity: the order is the frame-major order itself (gathers are skipped).
    """

    gather: torch.Tensor
    inverse: torch.Tensor
    valid: torch.Tensor | None = None
    identity: bool = False

    @property
    def num_slots(self) -> int:
        return self.gather.numel()

    @property
    def num_tokens(self) -> int:
        return self.inverse.numel()

    def to_slots(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, ...) frame-major -> (B, slots, ...)."""
        return x if self.identity else x.index_select(1, self.gather)

    def from_slots(self, x: torch.Tensor) -> torch.Tensor:
        """(B, slots, ...) -> (B, tokens, ...) frame-major; padding slots are dropped."""
        return x if self.identity else x.index_select(1, self.inverse)

    def valid_slots(self, batch: int) -> torch.Tensor:
        """bool (batch, slots): True for slots that hold a token."""
        if self.valid is None:
            return torch.ones(batch, self.num_slots, dtype=torch.bool, device=self.gather.device)
        return self.valid.expand(batch, -1)

    @staticmethod
    def from_gather(gather: torch.Tensor, valid: torch.Tensor | None = None) -> TokenOrder:
        """The order whose slot ``p`` holds token ``gather[p]`` (padding slots: ``valid[p]`` False)."""
        real = torch.arange(gather.numel(), device=gather.device)
        if valid is not None:
            real = real[valid]
        inverse = torch.empty(real.numel(), dtype=torch.long, device=gather.device)
        inverse[gather[real]] = real
        return TokenOrder(gather, inverse, valid)

    @staticmethod
    def frame_major(num_tokens: int, device: torch.device | str = "cpu") -> TokenOrder:
        index = torch.arange(num_tokens, device=device)
        return TokenOrder(index, index, None, identity=True)


def tiles_per_axis(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(-(-g // t) for g, t in zip(grid, tile, strict=True))


def tile_order(
    grid: tuple[int, int, int], tile: tuple[int, int, int], device: torch.device | str = "cpu"
) -> TokenOrder:
    """Tile by tile, raster order inside a tile: one tile of ``prod(tile)`` slots is one block.

    Grids that are not tile multiples get padding slots in their border tiles, so every tile is
    exactly one block.
    """
    tiles = tiles_per_axis(grid, tile)
    axes = [torch.arange(n, device=device) for n in (*tiles, *tile)]
    a, b, c, i, j, k = torch.meshgrid(*axes, indexing="ij")
    f = (a * tile[0] + i).flatten()
    h = (b * tile[1] + j).flatten()
    w = (c * tile[2] + k).flatten()
    valid = (f < grid[0]) & (h < grid[1]) & (w < grid[2])
    source = (f * grid[1] + h) * grid[2] + w
    gather = torch.where(valid, source, torch.zeros_like(source))
    return TokenOrder.from_gather(gather, valid)


def tile_coordinates(tiles: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(num_tiles, 3) long: (frame, row, col) tile coordinates in tile order."""
    axes = [torch.arange(n, device=device) for n in tiles]
    return torch.stack([x.flatten() for x in torch.meshgrid(*axes, indexing="ij")], dim=1)


def fit_tile(tile: tuple[int, int, int], grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """``tile`` with its frame extent moved into space while it exceeds the grid's frames (images
    have one frame: a (2, 8, 8) tile would leave half of every block empty), same slot count."""
    frames, rows, cols = tile
    while frames > grid[0] and frames % 2 == 0:
        frames //= 2
        if rows <= cols:
            rows *= 2
        else:
            cols *= 2
    return frames, rows, cols


def spatial_major_order(grid: tuple[int, int, int], device: torch.device | str = "cpu") -> TokenOrder:
    """All frames of one position adjacent: slot ``p = (h W + w) F + t``. FreeSwim's window and
    Re-ttention's per-frame window (a band on ``p // F`` in this order) use it."""
    frames, rows, cols = grid
    p = torch.arange(frames * rows * cols, device=device)
    return TokenOrder.from_gather((p % frames) * (rows * cols) + p // frames)


_DEFAULT_TILES = {
    16: (1, 4, 4),
    32: (2, 4, 4),
    64: (1, 8, 8),
    128: (2, 8, 8),
    256: (4, 8, 8),
    512: (2, 16, 16),
}


def default_tile(block_size: int) -> tuple[int, int, int]:
    """A compact (frames, height, width) tile of ``block_size`` tokens, square in space."""
    if block_size not in _DEFAULT_TILES:
        raise ValueError(
            f"no default tile for block_size={block_size} (have {sorted(_DEFAULT_TILES)}); "
            "pass tile=(frames, height, width) whose product is block_size"
        )
    return _DEFAULT_TILES[block_size]


def checked_tile(tile: object, block_size: int) -> tuple[int, int, int]:
    """``tile`` (None: the default for ``block_size``) as a validated tuple whose product is
    ``block_size``; a ValueError naming both otherwise."""
    from ..config import as_int_tuple

    value = default_tile(block_size) if tile is None else as_int_tuple(tile, "tile", 3)
    if any(t < 1 for t in value) or value[0] * value[1] * value[2] != block_size:
        raise ValueError(
            f"tile {value} must have positive sides whose product equals block_size={block_size}"
        )
    return value
