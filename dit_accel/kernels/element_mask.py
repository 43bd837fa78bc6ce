"""Element-level predicates for key blocks that are only partly attended.

A block layout says which (query block, key block) tiles are computed; some methods also need a
finer, per-token rule inside a few of those tiles (the edge of a band or of a spatial window).
``ElementMask`` describes that rule in a form both the kernels and the oracle evaluate from token
coordinates, so no (S x S) mask is ever stored:

    each query q has a half-open box [q_lo[:, q], q_hi[:, q]) in an ``ndim``-dimensional key
    coordinate space (ndim 1 to 3); key k (coordinates k_coord[:, k]) is allowed for q iff
    q_lo[d, q] <= k_coord[d, k] < q_hi[d, q] for every d.

This covers a 1-D band |q - k| <= w (ndim 1, coordinates = sequence positions) and 2-D/3-D
windows on a (frame, row, col) token grid whose start may differ per query (FreeSwim's inward
window), in whatever token order the sequence is given (coordinates are per position). The rule is
shared by every batch element and head.

Which entries of a layout the rule applies to is a separate, layout-shaped ``kv_partial`` flag
(True = apply the predicate to this entry, False = attend the whole tile). ``None`` means every
entry. ``kv_partial(layout)`` computes flags that leave the result unchanged but let tiles that lie
entirely inside every query's box skip the predicate (they pay nothing in the kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .layout import BlockLayout, num_blocks

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class ElementMask:
    """Per-query boxes over key coordinates; see the module docstring.

    Attributes:
        q_lo: int32 ``(ndim, seq_q)``, inclusive lower corner of each query's box.
        q_hi: int32 ``(ndim, seq_q)``, exclusive upper corner.
        k_coord: int32 ``(ndim, seq_k)``, coordinates of each key position.
        kind: a label for logs ("band", "window", "box"); the kernels ignore it.
    """

    q_lo: torch.Tensor
    q_hi: torch.Tensor
    k_coord: torch.Tensor
    kind: str = "box"

    def __post_init__(self) -> None:
        for name in ("q_lo", "q_hi", "k_coord"):
            t = getattr(self, name)
            if t.dim() != 2 or t.dtype != torch.int32:
                raise TypeError(
                    f"ElementMask.{name} must be an int32 (ndim, seq) tensor, got {t.dtype} {tuple(t.shape)}"
                )
        if self.q_lo.shape != self.q_hi.shape or self.q_lo.shape[0] != self.k_coord.shape[0]:
            raise ValueError(
                f"ElementMask shapes disagree: q_lo {tuple(self.q_lo.shape)}, "
                f"q_hi {tuple(self.q_hi.shape)}, k_coord {tuple(self.k_coord.shape)}"
            )
        if not 1 <= self.ndim <= 3:
            raise ValueError(f"ElementMask supports 1 to 3 coordinate dimensions, got {self.ndim}")
        if not (self.q_lo.device == self.q_hi.device == self.k_coord.device):
            raise ValueError("ElementMask tensors must share a device")

    @property
    def ndim(self) -> int:
        return self.q_lo.shape[0]

    @property
    def seq_q(self) -> int:
        return self.q_lo.shape[1]

    @property
    def seq_k(self) -> int:
        return self.k_coord.shape[1]

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def band(
        cls,
        width: int,
        seq_q: int,
        seq_k: int | None = None,
        *,
        q_pos: torch.Tensor | None = None,
        k_pos: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> ElementMask:
        """|pos(q) - pos(k)| <= width; positions default to the sequence index (Re-ttention's band)."""
        seq_k = seq_q if seq_k is None else seq_k
        q_pos = torch.arange(seq_q, device=device) if q_pos is None else q_pos.to(device)
        k_pos = torch.arange(seq_k, device=device) if k_pos is None else k_pos.to(device)
        q_pos = q_pos.to(torch.int64)
        lo = (q_pos - width).clamp(_I32_MIN, _I32_MAX)
        hi = (q_pos + width + 1).clamp(_I32_MIN, _I32_MAX)
        return cls(
            lo.to(torch.int32)[None].contiguous(),
            hi.to(torch.int32)[None].contiguous(),
            k_pos.to(torch.int32)[None].contiguous(),
            "band",
        )

    @classmethod
    def window(
        cls, q_start: torch.Tensor, extent: Sequence[int] | torch.Tensor, k_coord: torch.Tensor
    ) -> ElementMask:
        """Allowed iff q_start[d, q] <= k_coord[d, k] < q_start[d, q] + extent[d] for every d.

        ``extent`` is one length per dimension, or a per-query ``(ndim, seq_q)`` tensor.
        """
        q_start = q_start.to(torch.int64)
        ext = torch.as_tensor(extent, device=q_start.device, dtype=torch.int64)
        if ext.dim() == 1:
            ext = ext[:, None]
        hi = q_start + ext
        return cls(
            q_start.to(torch.int32).contiguous(),
            hi.to(torch.int32).contiguous(),
            k_coord.to(torch.int32).contiguous(),
            "window",
        )

    @staticmethod
    def grid_coords(
        frames: int,
        rows: int,
        cols: int,
        *,
        order: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """int32 ``(3, S)`` (frame, row, col) of each sequence position of a frame-major token grid.

        ``order``: optional permutation; position ``i`` of the sequence given to the kernel holds
        grid token ``order[i]`` (e.g. after a block-friendly reordering).
        """
        t = torch.arange(frames * rows * cols, device=device)
        if order is not None:
            t = t[order.to(device=device, dtype=torch.long)]
        per_frame = rows * cols
        return torch.stack([t // per_frame, (t % per_frame) // cols, t % cols]).to(torch.int32)

    @classmethod
    def inward_window(
        cls,
        grid: tuple[int, int, int],
        window: tuple[int, int],
        *,
        order: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> ElementMask:
        """FreeSwim's spatial window: a (Lh, Lw) window centred on each query, shifted inward so
        that it stays on the (rows, cols) grid; every frame is visible (self-attention, seq_q = seq_k)."""
        frames, rows, cols = grid
        win_h, win_w = min(window[0], rows), min(window[1], cols)
        coord = cls.grid_coords(frames, rows, cols, order=order, device=device)[1:].to(torch.int64)
        h0 = (coord[0] - win_h // 2).clamp(0, rows - win_h)
        w0 = (coord[1] - win_w // 2).clamp(0, cols - win_w)
        mask = cls.window(torch.stack([h0, w0]), (win_h, win_w), coord)
        return ElementMask(mask.q_lo, mask.q_hi, mask.k_coord, "inward_window")

    def to(self, device: torch.device | str) -> ElementMask:
        return ElementMask(self.q_lo.to(device), self.q_hi.to(device), self.k_coord.to(device), self.kind)

    # ----------------------------------------------------------------------------- evaluation
    def check(self, seq_q: int, seq_k: int) -> None:
        if self.seq_q != seq_q or self.seq_k != seq_k:
            raise ValueError(
                f"ElementMask is for seq_q={self.seq_q}, seq_k={self.seq_k}; "
                f"the attention has seq_q={seq_q}, seq_k={seq_k}"
            )

    def allowed(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        """Boolean predicate for broadcastable query and key position tensors (indices in range)."""
        ok = None
        for d in range(self.ndim):
            kc = self.k_coord[d][k_idx]
            term = (self.q_lo[d][q_idx] <= kc) & (kc < self.q_hi[d][q_idx])
            ok = term if ok is None else ok & term
        return ok

    def dense(self) -> torch.Tensor:
        """The full boolean ``(seq_q, seq_k)`` matrix (small inputs only)."""
        return self.allowed(
            torch.arange(self.seq_q, device=self.q_lo.device)[:, None],
            torch.arange(self.seq_k, device=self.q_lo.device)[None, :],
        )

    def block_classes(self, block_size_q: int, block_size_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounding-box classification of tiles, two boolean ``(n_q_blocks, n_k_blocks)`` tensors.

        ``full``: every real key of the key block lies inside every real query's box (exact), so
        the tile needs no predicate. ``touched``: the key block's bounding box meets the union of
        the query boxes (conservative: False guarantees no allowed pair), a block mask to build a
        layout from.
        """
        n_qb, n_kb = num_blocks(self.seq_q, block_size_q), num_blocks(self.seq_k, block_size_k)

        def blocked(x: torch.Tensor, n: int, size: int, fill: int) -> torch.Tensor:
            x = torch.nn.functional.pad(x.to(torch.int64), (0, n * size - x.shape[1]), value=fill)
            return x.view(x.shape[0], n, size)

        lo_max = blocked(self.q_lo, n_qb, block_size_q, _I32_MIN).amax(-1)  # (ndim, n_qb)
        lo_min = blocked(self.q_lo, n_qb, block_size_q, _I32_MAX).amin(-1)
        hi_min = blocked(self.q_hi, n_qb, block_size_q, _I32_MAX).amin(-1)
        hi_max = blocked(self.q_hi, n_qb, block_size_q, _I32_MIN).amax(-1)
        k_min = blocked(self.k_coord, n_kb, block_size_k, _I32_MAX).amin(-1)  # (ndim, n_kb)
        k_max = blocked(self.k_coord, n_kb, block_size_k, _I32_MIN).amax(-1)
        full = ((lo_max[:, :, None] <= k_min[:, None, :]) & (k_max[:, None, :] < hi_min[:, :, None])).all(0)
        touched = ((k_max[:, None, :] >= lo_min[:, :, None]) & (k_min[:, None, :] < hi_max[:, :, None])).all(
            0
        )
        return full, touched

    def kv_partial(self, layout: BlockLayout) -> torch.Tensor:
        """Flags shaped like ``layout.kv_indices``: True where the entry's tile needs the predicate."""
        full, _ = self.block_classes(layout.block_size_q, layout.block_size_k)
        full = full.to(layout.device)
        q_block = torch.arange(layout.num_q_blocks, device=layout.device).view(1, 1, -1, 1)
        idx = layout.kv_indices.long().clamp(0, max(layout.num_k_blocks - 1, 0))
        return ~full[q_block, idx]

    def to_layout(self, block_size_q: int, block_size_k: int) -> tuple[BlockLayout, torch.Tensor]:
        """A (1, 1) layout of the touched tiles and its ``kv_partial`` flags."""
        _, touched = self.block_classes(block_size_q, block_size_k)
        layout = BlockLayout.from_block_mask(touched[None, None], block_size_q, block_size_k)
        return layout, self.kv_partial(layout)
