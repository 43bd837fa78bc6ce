"""VMoBA: mixture-of-block attention for video, training-free.

Each layer groups video tokens into chunks (1D frame groups, 2D spatial tubes or 3D cubes, cycling
over layers). A query attends its own chunk plus the chunks whose mean key it scores highest under
a cumulative threshold (``vmoba_select``). Tokens are reordered chunk by chunk and every chunk is
padded to whole *key* blocks, so a key block belongs to exactly one chunk and a chunk selection is
a block layout. The key block is the largest power of two up to ``block_size`` that wastes at
most 1/8 of the slots on padding (3D chunks of 96 tokens: 32), while query blocks stay
``block_size`` (128) rows long, the kernel's efficient tile:

- ``parity`` mode selects per query, as the reference does. A query block visits the union of its
  rows' chunks and each row keeps only its own selection (``RowChunkMask``, PyTorch path).
- ``fast`` mode selects per query block from the block's mean query (its own chunk for the rule is
  the chunk holding most of its rows, and every chunk it holds is kept), so the layout alone is
  exact and the Triton kernel runs it at full speed.

Text keys (HunyuanVideo, CogVideoX) are always attended and text queries stay dense.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..config import VMoBAConfig
from ..context import AttentionContext
from ..kernels import BlockLayout, RowChunkMask, block_sparse_attention, dense_attention, num_blocks
from .base import SparseMethod
from .joint import split_joint
from .vmoba_partition import ChunkPartition, chunk_partition, layer_kind, scale_chunk_size
from .vmoba_select import chunk_gate, select_chunks


class VMoBA(SparseMethod):
    config_cls: ClassVar[type[VMoBAConfig]] = VMoBAConfig

    #: Largest fraction of padding slots accepted when choosing the key block of a partition.
    MAX_PADDING = 0.125

    def __init__(self, config: VMoBAConfig) -> None:
        super().__init__(config)
        self._key_blocks: dict[tuple, int] = {}

    def chunk_size(self, layer_index: int, grid: tuple[int, int, int]) -> tuple[str, tuple[int, ...]]:
        cfg = self.config
        kind = layer_kind(layer_index, cfg.first_full_layer, cfg.layer_cycle)
        size = {"1d": (cfg.temporal_chunk_size,), "2d": cfg.spatial_chunk_size, "3d": cfg.st_chunk_size}[kind]
        if cfg.scale_chunks:
            size = scale_chunk_size(kind, size, grid)
        return kind, tuple(size)

    def key_block(self, grid: tuple[int, int, int], kind: str, size: tuple[int, ...]) -> int:
        """Largest power of two <= block_size (>= 16) whose chunk padding stays under MAX_PADDING."""
        key = (grid, kind, size)
        if key not in self._key_blocks:
            tokens = chunk_partition(grid, kind, size).chunk_tokens.tolist()  # once per grid and layer type
            block = self.config.block_size
            while block > 16:
                padded = sum(-(-t // block) * block for t in tokens)
                if padded <= (1 + self.MAX_PADDING) * sum(tokens):
                    break
                block //= 2
            self._key_blocks[key] = block
        return self._key_blocks[key]

    def partition(self, layer_index: int, grid: tuple[int, int, int], device: torch.device) -> ChunkPartition:
        """The chunk partition of one layer for this grid, padded to its key block (cached)."""
        kind, size = self.chunk_size(layer_index, grid)
        return chunk_partition(grid, kind, size, pad_to=self.key_block(grid, kind, size), device=device)

    def _topk(self, kind: str) -> int:
        cfg = self.config
        return {"1d": cfg.temporal_topk, "2d": cfg.spatial_topk, "3d": cfg.st_topk}[kind]

    def _select(self, gate_of, queries: int, own: torch.Tensor, kind: str) -> torch.Tensor:
        """(B, H, queries, C) selection; ``gate_of(start, stop)`` gives the gate of a query range."""
        cfg = self.config
        options = dict(
            mode=cfg.select_mode, threshold=cfg.threshold, topk=self._topk(kind), scope=cfg.threshold_type
        )
        if cfg.threshold_type != "query_head":
            return select_chunks(gate_of(0, queries), own, **options)
        # query_head is per query: slicing the queries is exact and bounds the gate's memory.
        step = cfg.query_slice
        parts = [
            select_chunks(gate_of(start, min(start + step, queries)), own[start : start + step], **options)
            for start in range(0, queries, step)
        ]
        return torch.cat(parts, dim=2)

    def attend(self, q, k, v, *, scale, key_padding_mask, context: AttentionContext):
        cfg, call = self.config, context.call
        split = split_joint(q.shape[1], call)
        part = self.partition(context.layer.index, call.grid, q.device)
        if part.num_chunks == 1:  # nothing to choose from: the reference falls back to dense too
            return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask), 1.0
        batch, _, heads, dim = q.shape
        chunks, block_q, block_k = part.num_chunks, cfg.block_size, part.pad_to

        qv, kv, vv = (part.to_chunks(x[:, split.video]) for x in (q, k, v))
        video_ok = part.valid.expand(batch, -1)
        text_ok = torch.ones(batch, split.num_text, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            video_ok = video_ok & part.to_chunks(key_padding_mask[:, split.video])
            text_ok = key_padding_mask[:, split.text]

        # Mean key per chunk over its real tokens, in float32 (spec 3.3).
        weight = video_ok.to(torch.float32)
        sums = torch.zeros(batch, chunks, heads, dim, dtype=torch.float32, device=q.device)
        sums.index_add_(1, part.chunk_of_slot, kv.float() * weight[..., None, None])
        counts = torch.zeros(batch, chunks, dtype=torch.float32, device=q.device)
        counts.index_add_(1, part.chunk_of_slot, weight)
        mean_k = sums / counts.clamp_min(1)[..., None, None]

        n_qb = num_blocks(part.num_slots, block_q)
        rows = n_qb * block_q - part.num_slots  # query rows that pad the last query block
        row_mask = None
        if cfg.mode == "fast":
            tile_sel = self._select_tiles(qv, weight, mean_k, part, n_qb, rows)
        else:
            sel = self._select_rows(qv, mean_k, part)
            padded = torch.nn.functional.pad(sel, (0, 0, 0, rows))
            tile_sel = padded.view(batch, heads, n_qb, block_q, chunks).any(dim=3)
            # Text keys form one extra chunk every row selects.
            key_chunk = torch.cat(
                [part.chunk_of_slot, torch.full((split.num_text,), chunks, dtype=torch.long, device=q.device)]
            )
            text_column = torch.ones(batch, heads, sel.shape[2], 1, dtype=torch.bool, device=q.device)
            row_mask = RowChunkMask(torch.cat([sel, text_column], dim=-1), key_chunk)

        chunk_of_key_block = part.chunk_of_slot[::block_k]
        video_blocks = tile_sel[..., chunk_of_key_block]  # key block j holds chunk c(j) only
        text_blocks = torch.ones(
            batch, heads, n_qb, num_blocks(split.num_text, block_k), dtype=torch.bool, device=q.device
        )
        layout = BlockLayout.from_block_mask(torch.cat([video_blocks, text_blocks], dim=-1), block_q, block_k)
        out = block_sparse_attention(
            qv,
            torch.cat([kv, k[:, split.text]], dim=1),
            torch.cat([vv, v[:, split.text]], dim=1),
            layout,
            scale=scale,
            key_padding_mask=torch.cat([video_ok, text_ok], dim=1),
            row_chunk_mask=row_mask,
            backend=cfg.kernel_backend,
        )
        text_out = None
        if split.num_text:
            text_out = dense_attention(q[:, split.text], k, v, scale=scale, key_padding_mask=key_padding_mask)
        return split.join(part.from_chunks(out), text_out, call.text_position == "first"), layout.density()

    def _select_tiles(self, qv, weight, mean_k, part: ChunkPartition, n_qb: int, rows: int) -> torch.Tensor:
        """Fast mode: one selection per query block, from the mean of its real queries."""
        batch, _, heads, dim = qv.shape
        block_q, chunks = self.config.block_size, part.num_chunks
        w = torch.nn.functional.pad(weight, (0, rows))
        q_sum = torch.nn.functional.pad(qv.float(), (0, 0, 0, 0, 0, rows)) * w[..., None, None]
        pooled = (
            q_sum.view(batch, n_qb, block_q, heads, dim).sum(2)
            / (w.view(batch, n_qb, block_q).sum(2).clamp_min(1)[..., None, None])
        )
        # Real rows of each chunk in each query block: the block's own chunk for the rule is the
        # one holding most of them, and every chunk it holds stays selected.
        tile_of_slot = torch.arange(part.num_slots, device=qv.device) // block_q
        held = torch.zeros(n_qb, chunks, device=qv.device)
        held.index_put_((tile_of_slot, part.chunk_of_slot), part.valid.float(), accumulate=True)
        own = held.argmax(dim=1)
        selected = self._select(lambda a, b: chunk_gate(pooled[:, a:b], mean_k), n_qb, own, part.kind)
        return selected | (held > 0)

    def _select_rows(self, qv: torch.Tensor, mean_k: torch.Tensor, part: ChunkPartition) -> torch.Tensor:
        """Per-query selection (B, H, L_padded, C) over the real tokens only.

        Padding slots take no part in the scope statistics (they would shift min, max and sums
        of the non-per-query scopes) and select only their own chunk.
        """
        real = part.real_slots
        own = part.chunk_of_slot[real]
        selected_real = self._select(
            lambda a, b: chunk_gate(qv[:, real[a:b]], mean_k), real.numel(), own, part.kind
        )
        batch, heads, chunks = selected_real.shape[0], selected_real.shape[1], part.num_chunks
        sel = torch.zeros(batch, heads, qv.shape[1], chunks, dtype=torch.bool, device=qv.device)
        sel[:, :, torch.arange(qv.shape[1], device=qv.device), part.chunk_of_slot] = True
        sel[:, :, real] = selected_real
        return sel
