"""VMoBA's chunk partitions: reordering video tokens so that every key chunk is one contiguous range.

VMoBA (``shared/methods/vmoba.md``) groups keys into chunks that follow the video's geometry and
cycles the chunk shape across layers: 1D chunks are runs of whole frames, 2D chunks are spatial tiles
through all frames ("tubes"), 3D chunks are spatio-temporal cubes. Diffusers flattens the token grid
frame-major (``t*H*W + h*W + w``), so only 1D chunks are contiguous as given; the others need a
permutation before a varlen or block-sparse kernel can address a chunk as ``[start, end)``.

Inside a chunk tokens keep frame-major order, which is the reference's inside-chunk index
``((t%ct)*ch + h%ch)*cw + w%cw`` for full chunks, so divisible grids reproduce the reference exactly.
The reference asserts divisibility; here the last chunk along an axis is shorter instead (ragged),
and chunks may be padded with empty slots up to a multiple of ``pad_to`` so that chunk boundaries fall
on attention-block boundaries. Padding slots sit at the end of their chunk: masked as keys, their
query outputs dropped when the driver scatters back (:attr:`ChunkPartition.order`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import torch

from ..config import positive_int
from .order import TokenOrder

KINDS = ("1d", "2d", "3d")
"""Partition kinds, in the order of the layer cycle (spec §3.2)."""

REFERENCE_GRID: tuple[int, int, int] = (20, 30, 52)
"""(T, H, W) latent grid of the reference operating point: Wan 2.1 1.3B, 77 frames, 480x832 (spec §2)."""

# Which grid axes (T=0, H=1, W=2) a kind's chunk size refers to; the others span the whole grid.
_SIZED_AXES: dict[str, tuple[int, ...]] = {"1d": (0,), "2d": (1, 2), "3d": (0, 1, 2)}


@dataclass(frozen=True)
class ChunkPartition:
    """Gather/scatter indices between frame-major token order and chunk-major (padded) slot order.

    Attributes:
        kind: "1d", "2d" or "3d".
        grid: (T, H, W) tokens.
        chunk_shape: chunk extent in tokens along (T, H, W), clamped to the grid; the axes a kind does
            not partition span the whole grid (1d: (ct, H, W); 2d: (T, ch, cw); 3d: (ct, ch, cw)).
        pad_to: every chunk occupies a multiple of this many slots.
        gather: int64 (L_pad,): original token of every slot (0 for padding slots).
        valid: bool (L_pad,): False for padding slots.
        inverse: int64 (L,): the slot of every original token.
        chunk_of_slot: int64 (L_pad,): chunk id of every slot; padding slots belong to the chunk they pad.
        chunk_start: int64 (C + 1,): chunk c occupies slots ``[chunk_start[c], chunk_start[c + 1])``.
        chunk_tokens: int64 (C,): real (non-padding) tokens per chunk.
        num_chunks: C.
        ragged: True when some grid axis is not divisible by its (clamped) chunk size, i.e. the shape
            is outside the reference's domain (it asserts there).
    """

    kind: str
    grid: tuple[int, int, int]
    chunk_shape: tuple[int, int, int]
    pad_to: int
    gather: torch.Tensor
    valid: torch.Tensor
    inverse: torch.Tensor
    chunk_of_slot: torch.Tensor
    chunk_start: torch.Tensor
    chunk_tokens: torch.Tensor
    num_chunks: int
    ragged: bool

    @property
    def num_tokens(self) -> int:
        """L: tokens of the grid."""
        return self.inverse.numel()

    @property
    def num_slots(self) -> int:
        """L_pad: slots of the chunk-major order, padding included."""
        return self.gather.numel()

    @cached_property
    def real_slots(self) -> torch.Tensor:
        """int64 (L,): the slots that hold real tokens, in chunk-major order (computed once)."""
        return torch.nonzero(self.valid).squeeze(1)

    @cached_property
    def order(self) -> TokenOrder:
        """The partition as the driver's slot order."""
        return TokenOrder(self.gather, self.inverse, self.valid)


def _int_tuple(value: object, length: int, name: str) -> tuple[int, ...]:
    """A length-``length`` tuple of positive ints from a tuple or list (JSON configs give lists)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a sequence of {length} positive integers, got {value!r}")
    if len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}: {value!r}")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _chunk_size_tuple(kind: str, chunk_size: int | Sequence[int]) -> tuple[int, ...]:
    """The chunk size as a tuple over the kind's sized axes: (ct,), (ch, cw) or (ct, ch, cw).

    1d also takes a bare int (the reference's ``temporal_chunk_size``) or a one-entry sequence (what
    :func:`scale_chunk_size` returns).
    """
    _check_kind(kind)
    n = len(_SIZED_AXES[kind])
    if n == 1 and not isinstance(chunk_size, Sequence):
        return (positive_int(chunk_size, "chunk_size"),)
    return _int_tuple(chunk_size, n, "chunk_size")


def chunk_partition(
    grid: Sequence[int],
    kind: str,
    chunk_size: int | Sequence[int],
    pad_to: int = 1,
    device: torch.device | str = "cpu",
) -> ChunkPartition:
    """The chunk partition of a (T, H, W) token grid (the method's session caches it per grid).

    Args:
        grid: (T, H, W) tokens, frame-major.
        kind: "1d" (runs of whole frames), "2d" (spatial tiles through all frames) or "3d" (cubes).
        chunk_size: frames for "1d" (int); (ch, cw) for "2d"; (ct, ch, cw) for "3d". Lists are accepted.
            Sizes larger than the grid are clamped to it (a single chunk along that axis).
        pad_to: pad every chunk with empty slots up to a multiple of this; 1 means no padding.
        device: where the index tensors live.
    """
    grid_t = _int_tuple(grid, 3, "grid")
    sizes = _chunk_size_tuple(kind, chunk_size)
    pad = positive_int(pad_to, "pad_to")
    return _chunk_partition(grid_t, kind, sizes, pad, torch.device(device))


def _chunk_partition(
    grid: tuple[int, int, int],
    kind: str,
    sizes: tuple[int, ...],
    pad_to: int,
    device: torch.device,
) -> ChunkPartition:
    shape = list(grid)
    for axis, size in zip(_SIZED_AXES[kind], sizes, strict=True):
        shape[axis] = min(size, grid[axis])
    ct, ch, cw = shape
    nt, nh, nw = (-(-g // s) for g, s in zip(grid, shape, strict=True))
    num_chunks = nt * nh * nw

    # Extent of every chunk row along each axis: the full size except a shorter last one.
    ext = [
        (g - torch.arange(n, device=device) * s).clamp(max=s)
        for g, s, n in zip(grid, shape, (nt, nh, nw), strict=True)
    ]
    chunk_tokens = (ext[0][:, None, None] * ext[1][None, :, None] * ext[2][None, None, :]).flatten()
    chunk_slots = (chunk_tokens + pad_to - 1) // pad_to * pad_to
    chunk_start = torch.zeros(num_chunks + 1, dtype=torch.long, device=device)
    chunk_start[1:] = torch.cumsum(chunk_slots, 0)

    # Per token (broadcast over the grid): chunk id and frame-major rank inside its (possibly ragged)
    # chunk; the rank is the reference's inside index with the chunk's actual extents.
    t = torch.arange(grid[0], device=device)[:, None, None]
    h = torch.arange(grid[1], device=device)[None, :, None]
    w = torch.arange(grid[2], device=device)[None, None, :]
    it, ih, iw = t // ct, h // ch, w // cw
    chunk = ((it * nh + ih) * nw + iw).flatten()
    rank = (((t % ct) * ext[1][ih] + h % ch) * ext[2][iw] + w % cw).flatten()
    inverse = chunk_start[chunk] + rank

    num_slots = int(chunk_start[-1])
    gather = torch.zeros(num_slots, dtype=torch.long, device=device)
    gather[inverse] = torch.arange(inverse.numel(), device=device)
    valid = torch.zeros(num_slots, dtype=torch.bool, device=device)
    valid[inverse] = True
    chunk_of_slot = torch.repeat_interleave(torch.arange(num_chunks, device=device), chunk_slots)
    return ChunkPartition(
        kind=kind,
        grid=grid,
        chunk_shape=(ct, ch, cw),
        pad_to=pad_to,
        gather=gather,
        valid=valid,
        inverse=inverse,
        chunk_of_slot=chunk_of_slot,
        chunk_start=chunk_start,
        chunk_tokens=chunk_tokens,
        num_chunks=num_chunks,
        ragged=any(g % s for g, s in zip(grid, shape, strict=True)),
    )


def layer_kind(layer_index: int, first_full_layer: int = 0, cycle: Sequence[int] = (1, 1, 1)) -> str:
    """The partition kind of transformer block ``layer_index`` (spec §3.2).

    ``cycle`` gives how many consecutive layers use 1d, 2d and 3d chunks (the reference's
    ``temporal_layer, spatial_layer, st_layer``); ``first_full_layer`` only shifts the cycle — despite
    its name no layer is dense in the reference. Zero entries skip a kind.
    """
    message = f"cycle must be three non-negative integers, not all zero, got {cycle!r}"
    if not isinstance(cycle, Sequence) or len(cycle) != 3 or any(isinstance(c, bool) for c in cycle):
        raise ValueError(message)
    try:
        n1, n2, n3 = (operator.index(c) for c in cycle)
    except TypeError:
        raise ValueError(message) from None
    if min(n1, n2, n3) < 0 or n1 + n2 + n3 == 0:
        raise ValueError(message)
    m = (layer_index - first_full_layer) % (n1 + n2 + n3)
    if m < n1:
        return "1d"
    return "2d" if m < n1 + n2 else "3d"


def scale_chunk_size(
    kind: str,
    chunk_size: int | Sequence[int],
    grid: Sequence[int],
    reference_grid: Sequence[int] = REFERENCE_GRID,
) -> tuple[int, ...]:
    """Chunk sizes for ``grid`` that keep about as many chunks per axis as at ``reference_grid``.

    The reference's sizes are tuned for one resolution; scaling them with the grid keeps the number of
    chunks, and with it the gate's cost and the selection's granularity, roughly constant. Per sized axis
    ``size = max(1, round(ref_size * grid_axis / ref_grid_axis))`` computed exactly (fractions) and
    rounded with Python's ``round``, i.e. halves go to the even integer (4.5 -> 4, 5.5 -> 6). At the
    reference grid the reference sizes come back unchanged. Returns (ct,), (ch, cw) or (ct, ch, cw).
    """
    sizes = _chunk_size_tuple(kind, chunk_size)
    grid_t = _int_tuple(grid, 3, "grid")
    ref_t = _int_tuple(reference_grid, 3, "reference_grid")
    return tuple(
        max(1, round(Fraction(size * grid_t[axis], ref_t[axis])))
        for axis, size in zip(_SIZED_AXES[kind], sizes, strict=True)
    )
