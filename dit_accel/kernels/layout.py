"""Block layouts: which key blocks each query block attends.

A layout is stored as padded index lists rather than a dense block mask so that a kernel's inner
loop visits only the listed key blocks (cost proportional to the kept blocks, never to the whole
row). The lists are padded to a common width so that building them needs no host synchronisation:
``from_block_mask`` keeps the full width, methods that know their budget (a window, a top-k) build
narrower lists directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def num_blocks(seq_len: int, block_size: int) -> int:
    """Number of blocks covering ``seq_len`` tokens; the last one may be partial."""
    return -(-seq_len // block_size)


@dataclass(frozen=True)
class BlockLayout:
    """Per (batch, head, query block): an ascending list of key-block ids.

    Attributes:
        kv_indices: int32 ``(B, H, n_q_blocks, width)``. Row ``r`` lists its key-block ids in
            ascending order in its first ``kv_counts[r]`` entries; the rest is padding (ignored).
            ``B`` and ``H`` may be 1 (broadcast over batch or heads, e.g. a static layout).
        kv_counts: int32 ``(B, H, n_q_blocks)``: how many entries of each row are valid.
        block_size_q: tokens per query block.
        block_size_k: tokens per key block.
        num_k_blocks: key blocks in the key sequence (ids lie in ``[0, num_k_blocks)``).
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    block_size_q: int
    block_size_k: int
    num_k_blocks: int

    def __post_init__(self) -> None:
        if self.kv_indices.dim() != 4 or self.kv_counts.dim() != 3:
            raise ValueError(
                "BlockLayout expects kv_indices (B, H, n_q_blocks, width) and kv_counts (B, H, n_q_blocks); "
                f"got {tuple(self.kv_indices.shape)} and {tuple(self.kv_counts.shape)}"
            )
        if self.kv_indices.shape[:3] != self.kv_counts.shape:
            raise ValueError(
                f"kv_indices {tuple(self.kv_indices.shape)} and kv_counts "
                f"{tuple(self.kv_counts.shape)} disagree"
            )
        if self.kv_indices.dtype != torch.int32 or self.kv_counts.dtype != torch.int32:
            raise TypeError("BlockLayout index tensors must be int32")
        if self.block_size_q <= 0 or self.block_size_k <= 0:
            raise ValueError("block sizes must be positive")

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[2]

    @property
    def width(self) -> int:
        return self.kv_indices.shape[3]

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    @classmethod
    def from_block_mask(cls, mask: torch.Tensor, block_size_q: int, block_size_k: int) -> BlockLayout:
        """Build a layout from a boolean ``(B, H, n_q_blocks, n_k_blocks)`` block mask.

        Runs on the mask's device without a host synchronisation: a stable sort moves the kept
        block ids (ascending) to the front of each row.
        """
        if mask.dim() != 4 or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a boolean (B, H, n_q_blocks, n_k_blocks) tensor; got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        n_k = mask.shape[-1]
        ids = torch.arange(n_k, device=mask.device, dtype=torch.int32)
        # Dropped blocks get key n_k + id, kept ones key id: sorting puts kept ids first, ascending.
        sort_key = torch.where(mask, ids, ids + n_k)
        order = torch.sort(sort_key, dim=-1, stable=True).values
        kv_indices = torch.where(order < n_k, order, order - n_k).to(torch.int32)
        kv_counts = mask.sum(-1, dtype=torch.int32)
        return cls(kv_indices.contiguous(), kv_counts, block_size_q, block_size_k, n_k)

    @classmethod
    def full(
        cls,
        num_q_blocks: int,
        num_k_blocks: int,
        block_size_q: int,
        block_size_k: int,
        device: torch.device | str = "cpu",
    ) -> BlockLayout:
        """Every query block attends every key block (dense attention through the sparse path)."""
        ids = torch.arange(num_k_blocks, device=device, dtype=torch.int32)
        kv_indices = ids.expand(1, 1, num_q_blocks, num_k_blocks).contiguous()
        kv_counts = torch.full((1, 1, num_q_blocks), num_k_blocks, device=device, dtype=torch.int32)
        return cls(kv_indices, kv_counts, block_size_q, block_size_k, num_k_blocks)

    def to_block_mask(self) -> torch.Tensor:
        """The boolean ``(B, H, n_q_blocks, n_k_blocks)`` mask this layout describes."""
        valid = torch.arange(self.width, device=self.device) < self.kv_counts.unsqueeze(-1)
        mask = torch.zeros(*self.kv_counts.shape, self.num_k_blocks + 1, dtype=torch.bool, device=self.device)
        # Padding entries scatter into a spare column that is cut off afterwards.
        target = torch.where(valid, self.kv_indices.long(), self.num_k_blocks)
        mask.scatter_(-1, target, True)
        return mask[..., : self.num_k_blocks]

    def density(self) -> torch.Tensor:
        """Fraction of (query block, key block) pairs computed, as a 0-d tensor (no host sync)."""
        total = self.kv_counts.numel() * self.num_k_blocks
        return self.kv_counts.sum(dtype=torch.float64) / max(total, 1)

    def expand(self, batch: int, heads: int) -> BlockLayout:
        """Broadcast a layout with batch or head dimension 1 to ``(batch, heads)`` (views, no copy)."""
        b, h = self.kv_counts.shape[:2]
        if b not in (1, batch) or h not in (1, heads):
            raise ValueError(f"layout for batch {b}, heads {h} cannot serve batch {batch}, heads {heads}")
        return BlockLayout(
            self.kv_indices.expand(batch, heads, -1, -1),
            self.kv_counts.expand(batch, heads, -1),
            self.block_size_q,
            self.block_size_k,
            self.num_k_blocks,
        )

    def check_compatible(self, seq_len_q: int, seq_len_k: int, batch: int, heads: int) -> None:
        """Raise a ValueError naming the mismatch if this layout cannot serve these shapes."""
        if self.num_q_blocks != num_blocks(seq_len_q, self.block_size_q):
            raise ValueError(
                f"layout has {self.num_q_blocks} query blocks of {self.block_size_q}, but the query has "
                f"{seq_len_q} tokens ({num_blocks(seq_len_q, self.block_size_q)} blocks)"
            )
        if self.num_k_blocks != num_blocks(seq_len_k, self.block_size_k):
            raise ValueError(
                f"layout has {self.num_k_blocks} key blocks of {self.block_size_k}, but the key has "
                f"{seq_len_k} tokens ({num_blocks(seq_len_k, self.block_size_k)} blocks)"
            )
        b, h = self.kv_counts.shape[:2]
        if b not in (1, batch) or h not in (1, heads):
            raise ValueError(f"layout for batch {b}, heads {h} cannot serve batch {batch}, heads {heads}")
