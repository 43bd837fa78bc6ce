"""Static sparse layouts for Re-ttention's video self-attention (built analytically; the method's
session keeps one per shape).

Re-ttention keeps one static mask for every layer, head, step and batch item, so the layout, the
token order and the element predicate are built once per shape. This module covers the
video part of self-attention only: video queries attend their masked video keys plus every text key
(appended after the video keys); text queries are the caller's job (dense).

Three builders:

* ``band_layout``: PixArt / Hunyuan-DiT's 1-D band ``|i - j| <= w // 2`` on the raster order.
* ``frame_window_layout``: CogVideoX's in-frame window, which keeps the same in-frame index range
  in every frame. In the frame-major order this is a comb of thin stripes (18-30 % of the tiles);
  reordering the video tokens in-frame-index-major (slot ``p = i * F + f``) turns it into a band on
  ``p // F`` whose tiles are mostly full.
* ``window3d_layout``: the tile-granular 3D window of ``Window3D`` for Wan / HunyuanVideo.

Text keys and the element mask: an ``ElementMask`` box cannot express "in the band OR a text key",
so text keys get a sentinel coordinate (outside every box) and the layout's ``kv_partial`` flags are
False for every text key block. Text keys therefore must start a fresh key block: when there is text
and the video length is not a multiple of ``block_k``, the video part is padded with masked slots.
Padding keys get the same sentinel, so the predicate excludes them in the partial tiles that hold
them (a tile with a padding key is never full); a ``key_padding_mask`` is not needed for them, but
passing ``key_valid`` is harmless. Consequence: always pass the ``kv_partial`` given here with the
``element_mask`` (``kv_partial=None`` would apply the predicate to the text blocks and drop them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import BlockLayout, ElementMask, num_blocks
from .order import TokenOrder, tile_order
from .window3d import Window3D, Window3DConfig

# Key coordinate of text and padding keys: outside every query's box (boxes lie in [-half, L + half]).
_OUTSIDE = 2**30


@dataclass(frozen=True)
class StaticSparseLayout:
    """A static video self-attention layout plus the token order it is expressed in.

    Queries are the ``L_pad`` video slots; keys are the ``L_pad`` video slots followed by
    ``num_text`` text keys.

    Attributes:
        order: the slots: frame-major video tokens in the order the layout is expressed in, padded
            when text follows (so that text keys start a fresh key block).
        layout: block layout over queries = video slots, keys = [video slots, text keys].
        element_mask: the exact per-token rule inside partial tiles (None: the layout is exact at
            tile granularity). Its key axis covers the text keys too (sentinel coordinates).
        kv_partial: bool like ``layout.kv_indices``: the entries that need ``element_mask``.
        num_video: L, the number of real video tokens.
        num_text: text keys after the video slots.
    """

    order: TokenOrder
    layout: BlockLayout
    element_mask: ElementMask | None
    kv_partial: torch.Tensor | None
    num_video: int
    num_text: int

    @property
    def num_slots(self) -> int:
        """L_pad: video slots in the reordered, padded sequence."""
        return self.order.num_slots

    def key_valid(self) -> torch.Tensor:
        """bool ``(L_pad + num_text,)``: True for real keys (video slots that are not padding, text)."""
        device = self.layout.device
        video = self.order.valid_slots(1)[0].to(device)
        return torch.cat([video, torch.ones(self.num_text, dtype=torch.bool, device=device)])

    def element_density(self) -> float:
        """Fraction of allowed (real video query, real key) pairs, text keys included.

        Computed without an (L x L) matrix: for a 1-D element mask each query's allowed video keys
        are counted by binary search over the sorted real key coordinates; for a tile-granular layout
        the kept tiles are weighted by their real query and key counts.
        """
        valid = self.key_valid()
        valid_q = valid[: self.num_slots]
        n_q = int(valid_q.sum())
        total = n_q * (self.num_video + self.num_text)
        if self.element_mask is not None:
            em = self.element_mask
            coords = em.k_coord[0, : self.num_slots][valid_q].to(torch.int64).sort().values
            lo = em.q_lo[0][valid_q].to(torch.int64)
            hi = em.q_hi[0][valid_q].to(torch.int64)
            video = (torch.searchsorted(coords, hi) - torch.searchsorted(coords, lo)).sum()
        else:
            lay = self.layout
            mask = lay.to_block_mask()[0, 0].to(torch.float64)
            q_counts = _block_counts(valid_q, lay.block_size_q, lay.num_q_blocks)
            k_counts = _block_counts(valid[: self.num_slots], lay.block_size_k, lay.num_k_blocks)
            video = q_counts @ mask @ k_counts
        return float(video + n_q * self.num_text) / max(total, 1)


def _block_counts(valid: torch.Tensor, block: int, n_blocks: int) -> torch.Tensor:
    """float64 (n_blocks,): real tokens per block (zero past the end of ``valid``)."""
    padded = torch.zeros(n_blocks * block, dtype=torch.float64, device=valid.device)
    padded[: valid.shape[0]] = valid.to(torch.float64)
    return padded.view(n_blocks, block).sum(-1)


def _band_static(
    order: torch.Tensor | None,
    coord: torch.Tensor,
    half: int,
    num_text: int,
    block_q: int,
    block_k: int,
) -> StaticSparseLayout:
    """A band ``|coord(q) - coord(k)| <= half`` over video slots, plus always-attended text keys.

    ``order``: frame-major token of every slot (None = identity); ``coord``: int64 band coordinate of
    every slot. Pads the slots to a multiple of ``block_k`` when text follows, so text key blocks
    are whole and never partial.
    """
    device = coord.device
    length = coord.shape[0]
    pad = (-length) % block_k if num_text else 0
    if pad or order is not None:
        slots = torch.arange(length, device=device) if order is None else order
        gather = torch.cat([slots, torch.zeros(pad, dtype=torch.long, device=device)])
        valid = torch.arange(length + pad, device=device) < length
        token_order = TokenOrder.from_gather(gather, valid if pad else None)
    else:
        token_order = TokenOrder.frame_major(length, device)
    # Padding queries copy the last real query's box (their outputs are dropped, and duplicates do
    # not change which tiles are full or touched); padding keys sit outside every box.
    q_pos = torch.cat([coord, coord[-1:].expand(pad)])
    k_pos = torch.cat([coord, torch.full((pad,), _OUTSIDE, dtype=torch.long, device=device)])
    video = ElementMask.band(half, length + pad, q_pos=q_pos, k_pos=k_pos, device=device)
    full, touched = video.block_classes(block_q, block_k)
    n_text_blocks = num_blocks(num_text, block_k)
    text = torch.ones(full.shape[0], n_text_blocks, dtype=torch.bool, device=device)
    layout = BlockLayout.from_block_mask(torch.cat([touched, text], 1)[None, None], block_q, block_k)
    partial_tiles = torch.cat([touched & ~full, torch.zeros_like(text)], 1)
    q_block = torch.arange(layout.num_q_blocks, device=device)[:, None]
    kv_partial = partial_tiles[q_block, layout.kv_indices[0, 0].long()][None, None]
    k_all = torch.cat([k_pos, torch.full((num_text,), _OUTSIDE, dtype=torch.long, device=device)])
    mask = ElementMask(video.q_lo, video.q_hi, k_all.to(torch.int32)[None].contiguous(), "band")
    return StaticSparseLayout(token_order, layout, mask, kv_partial.contiguous(), length, num_text)


def band_layout(
    num_tokens: int,
    sparsity: float,
    num_text: int = 0,
    block_q: int = 128,
    block_k: int = 64,
    device: torch.device | str = "cpu",
) -> StaticSparseLayout:
    """PixArt's band on the raster order: ``w = int(N * sparsity)``, keep ``|i - j| <= w // 2``.

    Truncated at the sequence ends (no inward shift), as in the reference. N = 4096 at sparsity
    0.03125 gives w = 128 and 129 keys per interior row.
    """
    coord = torch.arange(num_tokens, device=torch.device(device))
    return _band_static(None, coord, int(num_tokens * float(sparsity)) // 2, num_text, block_q, block_k)


def frame_window_layout(
    grid: tuple[int, int, int],
    sparsity: float,
    num_text: int,
    block_q: int = 128,
    block_k: int = 64,
    device: torch.device | str = "cpu",
) -> StaticSparseLayout:
    """CogVideoX's window: in-frame index ``i`` keeps indices ``[i - half, i + half]`` of every frame.

    ``half = int(P * sparsity) // 2`` with ``P = H * W`` (the reference's ``window_size = int(1350 *
    sparsity)``), truncated at frame borders. Video tokens are reordered in-frame-index-major
    (slot ``p = i * F + f``), where the rule is the band ``|p_q // F - p_k // F| <= half``.
    """
    frames, rows, cols = (int(g) for g in grid)
    per_frame = rows * cols
    slot = torch.arange(frames * per_frame, device=torch.device(device))
    index = slot // frames  # in-frame index i of slot p = i * F + f
    order = (slot % frames) * per_frame + index  # frame-major token t = f * P + i
    return _band_static(order, index, int(per_frame * float(sparsity)) // 2, num_text, block_q, block_k)


def window3d_layout(
    grid: tuple[int, int, int],
    window: tuple[int, int, int],
    tile: tuple[int, int, int] | None,
    block_size: int,
    num_text: int,
    device: torch.device | str = "cpu",
) -> StaticSparseLayout:
    """``Window3D``'s tile-granular 3D window (Wan / HunyuanVideo extension); no element mask.

    ``tile=None`` takes ``Window3DConfig``'s default tile for ``block_size``. Padding slots of
    border tiles are plain keys to the layout: pass ``key_valid()`` as the key padding mask.
    """
    grid, device = tuple(int(x) for x in grid), torch.device(device)
    tile = None if tile is None else tuple(int(x) for x in tile)
    method = Window3D(Window3DConfig(block_size=block_size, window=tuple(int(x) for x in window), tile=tile))
    order = tile_order(grid, method.tile, device)
    layout = method.layout(grid, num_text, device)
    return StaticSparseLayout(order, layout, None, None, grid[0] * grid[1] * grid[2], num_text)
