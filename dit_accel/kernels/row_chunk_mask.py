"""Per-row chunk selections: the exact predicate of methods that select key chunks per query.

VMoBA selects, for every (batch, head, query), a set of key chunks. A block layout can only say
which key blocks a query *tile* visits (the union over its rows); inside a visited block, each row
must still drop the keys of chunks it did not select. ``RowChunkMask`` carries that rule as a
boolean selection per (batch, head, query, chunk) plus the chunk id of every key position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowChunkMask:
    """Key k is allowed for query q of (batch b, head h) iff ``selected[b, h, q, key_chunk[k]]``.

    Attributes:
        selected: bool ``(B, H, seq_q, C)``; B or H may be 1 (broadcast).
        key_chunk: int64 ``(seq_k,)`` chunk id in ``[0, C)`` of every key position.
    """

    selected: torch.Tensor
    key_chunk: torch.Tensor

    def __post_init__(self) -> None:
        if self.selected.dim() != 4 or self.selected.dtype != torch.bool:
            raise TypeError(
                f"selected must be a bool (B, H, seq_q, C) tensor, got {self.selected.dtype} "
                f"{tuple(self.selected.shape)}"
            )
        if self.key_chunk.dim() != 1 or self.key_chunk.dtype != torch.int64:
            raise TypeError("key_chunk must be an int64 (seq_k,) tensor")

    def check(self, batch: int, heads: int, seq_q: int, seq_k: int) -> None:
        b, h, s, _ = self.selected.shape
        if b not in (1, batch) or h not in (1, heads) or s != seq_q or self.key_chunk.shape[0] != seq_k:
            raise ValueError(
                f"RowChunkMask for selected {tuple(self.selected.shape)} and {self.key_chunk.shape[0]} keys "
                f"cannot serve batch {batch}, heads {heads}, seq_q {seq_q}, seq_k {seq_k}"
            )

    def allowed(
        self, rows: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, heads: int
    ) -> torch.Tensor:
        """Bool predicate for flat (batch*head) ``rows`` and broadcastable query/key positions."""
        b, h = self.selected.shape[:2]
        batch_idx = rows // heads if b > 1 else torch.zeros_like(rows)
        head_idx = rows % heads if h > 1 else torch.zeros_like(rows)
        return self.selected[batch_idx, head_idx, q_pos, self.key_chunk[k_pos]]
