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

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import SparseAttentionConfig, as_int_tuple, register_method
from ..kernels import BlockLayout, num_blocks
from ..kernels.row_chunk_mask import RowChunkMask
from .base import SparseMethod
from .corrections import VIDEO_CORRECTION, RectifyCorrection, RettentionCorrection
from .order import TokenOrder
from .plan import Operands, Plan
from .vmoba_partition import ChunkPartition, chunk_partition, layer_kind, scale_chunk_size
from .vmoba_select import chunk_gate, select_chunks

VMOBA_SCOPES = ("query_head", "head_global", "block", "overall")


@dataclass(frozen=True)
class VMoBAConfig(SparseAttentionConfig):
    """VMoBA: every query attends its own key chunk plus the chunks whose mean key it scores highest.

    Chunks follow the video's geometry and cycle over layers: 1D (groups of whole latent frames),
    2D (spatial tiles spanning all frames), 3D (spatio-temporal cubes). Defaults are the reference
    operating point (Wan 2.1 1.3B, 77 frames, 480x832: token grid 20x30x52).

    Attributes:
        temporal_chunk_size: latent frames per 1D chunk (2).
        spatial_chunk_size: (height, width) in tokens of a 2D chunk ((3, 4)).
        st_chunk_size: (frames, height, width) in tokens of a 3D chunk ((4, 6, 4)).
        scale_chunks: True (default) keeps the number of chunks per axis of the reference grid
            20x30x52 on other grids: size = max(1, round(reference size * axis / reference axis)).
            False uses the sizes as given. Grids that are not chunk multiples get shorter last chunks.
        select_mode: "threshold" (default) or "topk".
        threshold: tau of the cumulative rule (0.25): besides its own chunk, a query keeps the
            best other chunks until their share of the min-max normalised scores reaches tau minus
            its own chunk's share; at least one other chunk is always kept. At 1.0 every chunk
            is kept (dense); the reference keeps only its own chunk plus two there (its "C-1"
            default sits in a bool tensor): not reproduced, not even by ``preset="reference"``.
        threshold_type: the scope of the normalisation and the sort: "query_head" (default, as the
            reference code), "head_global" (the paper's global selection), "block", "overall".
            Every scope ranks within one batch element, so a prompt's selection never depends on
            what else is in the batch; the reference's "head_global" and "overall" rank across
            the flattened batch when batch > 1 (identical at batch 1, the parity tests' case).
        temporal_topk, spatial_topk, st_topk: chunks per query in "topk" mode (3, 20, 15).
        layer_cycle: how many consecutive layers use 1D, 2D, 3D chunks ((1, 1, 1)).
        first_full_layer: shifts the layer cycle (0).
        mode: "fast" (default) selects per query block of ``block_size`` rows from the block's
            mean query, so the layout alone is exact and the Triton kernel runs it at full speed;
            "parity" (``preset="reference"``) selects per query exactly as the reference (each
            row's own selection is applied on the PyTorch path, ~100x slower than SDPA on an
            H100). The default follows the measurements in benchmarks/results/ (vmoba_cpu.md,
            h100.md): on the tiny pipelines fast mode's PSNR to dense is within 0.7 dB of
            parity's (better on two of three), and it is the only mode faster than dense.
        query_slice: queries per slice when selecting in "query_head" scope (bounds memory).
        correction: "default" = in fast mode, per-row rectification on one-frame grids
            (measured: +13 dB over bare fast-mode VMoBA at equal density on the image proxy) and
            Re-ttention's residual on video grids (``VIDEO_CORRECTION``: +2.6 dB over top-k and
            +4.5 dB over top-k with warm-up at equal density on the video proxy,
            ``benchmarks/results/quality_video.md``); none in parity mode and under
            ``preset="reference"``.
    """

    method: ClassVar[str] = "vmoba"
    #: The reference selects per query (``preset="reference"``), with no correction.
    REFERENCE: ClassVar[dict] = {"mode": "parity"}

    temporal_chunk_size: int = 2
    spatial_chunk_size: tuple[int, int] = (3, 4)
    st_chunk_size: tuple[int, int, int] = (4, 6, 4)
    scale_chunks: bool = True
    select_mode: str = "threshold"
    threshold: float = 0.25
    threshold_type: str = "query_head"
    temporal_topk: int = 3
    spatial_topk: int = 20
    st_topk: int = 15
    layer_cycle: tuple[int, int, int] = (1, 1, 1)
    first_full_layer: int = 0
    mode: str = "fast"
    query_slice: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(
            self, "temporal_chunk_size", as_int_tuple(self.temporal_chunk_size, "temporal_chunk_size", 1)[0]
        )
        object.__setattr__(
            self, "spatial_chunk_size", as_int_tuple(self.spatial_chunk_size, "spatial_chunk_size", 2)
        )
        object.__setattr__(self, "st_chunk_size", as_int_tuple(self.st_chunk_size, "st_chunk_size", 3))
        object.__setattr__(self, "layer_cycle", as_int_tuple(self.layer_cycle, "layer_cycle", 3))
        sizes = (self.temporal_chunk_size, *self.spatial_chunk_size, *self.st_chunk_size)
        if any(x < 1 for x in sizes):
            raise ValueError(f"VMoBA chunk sizes must be >= 1, got {sizes}")
        if any(x < 0 for x in self.layer_cycle) or sum(self.layer_cycle) == 0:
            raise ValueError(f"layer_cycle must be non-negative with a positive sum, got {self.layer_cycle}")
        if self.select_mode not in ("threshold", "topk"):
            raise ValueError(f"select_mode must be 'threshold' or 'topk', got {self.select_mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold!r}")
        if self.threshold_type not in VMOBA_SCOPES:
            raise ValueError(f"threshold_type must be one of {VMOBA_SCOPES}, got {self.threshold_type!r}")
        if min(self.temporal_topk, self.spatial_topk, self.st_topk) < 1:
            raise ValueError("topk values must be >= 1")
        if self.mode not in ("parity", "fast"):
            raise ValueError(f"mode must be 'parity' or 'fast', got {self.mode!r}")
        if self.query_slice < 1:
            raise ValueError(f"query_slice must be >= 1, got {self.query_slice}")
        if self.select_mode == "threshold" and (self.temporal_topk, self.spatial_topk, self.st_topk) != (
            3,
            20,
            15,
        ):
            # The reference silently ignores them (spec quirk 2); say so instead.
            warnings.warn("VMoBAConfig: *_topk values are ignored in select_mode='threshold'", stacklevel=3)


class VMoBA(SparseMethod):
    config_cls: ClassVar[type[VMoBAConfig]] = VMoBAConfig

    #: Largest fraction of padding slots accepted when choosing the key block of a partition.
    MAX_PADDING = 0.125

    def own_correction(self) -> RectifyCorrection | None:
        """Per-row rectification in fast mode (measured: ``benchmarks/results/quality_*.md``);
        none in parity mode (per-query selection) and under the reference preset."""
        if self.config.mode == "parity" or self.config.preset == "reference":
            return None
        return RectifyCorrection()

    def own_video_correction(self) -> RettentionCorrection | None:
        """Video grids in fast mode: Re-ttention's residual (``VIDEO_CORRECTION``)."""
        return None if self.own_correction() is None else VIDEO_CORRECTION

    def refuses_correction(self, correction) -> str:
        if self.config.mode == "parity":
            return (
                "mode='parity' selects per query inside a block; corrections need block layouts (mode='fast')"
            )
        return ""

    def chunk_size(self, layer_index: int, grid: tuple[int, int, int]) -> tuple[str, tuple[int, ...]]:
        cfg = self.config
        kind = layer_kind(layer_index, cfg.first_full_layer, cfg.layer_cycle)
        size = {"1d": (cfg.temporal_chunk_size,), "2d": cfg.spatial_chunk_size, "3d": cfg.st_chunk_size}[kind]
        if cfg.scale_chunks:
            size = scale_chunk_size(kind, size, grid)
        return kind, tuple(size)

    def _key_block(self, grid: tuple[int, int, int], kind: str, size: tuple[int, ...]) -> int:
        """Largest power of two <= block_size (>= 16) whose chunk padding stays under MAX_PADDING."""

        def build() -> int:
            tokens = chunk_partition(grid, kind, size).chunk_tokens.tolist()  # once per grid and layer type
            block = self.config.block_size
            while block > 16:
                padded = sum(-(-t // block) * block for t in tokens)
                if padded <= (1 + self.MAX_PADDING) * sum(tokens):
                    break
                block //= 2
            return block

        return self.cache.get(("vmoba_key_block", grid, kind, size), build)

    def partition(self, layer_index: int, grid: tuple[int, int, int], device: torch.device) -> ChunkPartition:
        """The chunk partition of one layer for this grid, padded to its key block (cached)."""
        kind, size = self.chunk_size(layer_index, grid)
        pad = self._key_block(grid, kind, size)
        return self.cache.get(
            ("vmoba_partition", grid, kind, size, pad, device),
            lambda: chunk_partition(grid, kind, size, pad_to=pad, device=device),
        )

    def phase(self, context) -> tuple[str, int]:
        kind, since = super().phase(context)
        if kind != "dense" and self.num_chunks(context.layer.index, context.call.grid) == 1:
            return "dense", 0  # nothing to choose from: the reference falls back to dense too
        return kind, since

    def num_chunks(self, layer_index: int, grid: tuple[int, int, int]) -> int:
        kind, size = self.chunk_size(layer_index, grid)
        shape = {"1d": (size[0], grid[1], grid[2]), "2d": (grid[0], *size), "3d": size}[kind]
        count = 1
        for g, s in zip(grid, shape, strict=True):
            count *= -(-g // min(s, g))
        return count

    def order(self, context, device, num_text: int = 0) -> TokenOrder:
        return self.partition(context.layer.index, context.call.grid, device).order

    def key_block(self, context) -> int:
        kind, size = self.chunk_size(context.layer.index, context.call.grid)
        return self._key_block(context.call.grid, kind, size)

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

    def plan(self, x: Operands, context) -> Plan:
        cfg = self.config
        part = self.partition(context.layer.index, context.call.grid, x.q.device)
        batch, _, heads, dim = x.q.shape
        chunks, block_q, block_k = part.num_chunks, x.block_q, x.block_k
        device = x.q.device

        # Mean key per chunk over its real tokens, in float32 (spec 3.3).
        weight = x.video_ok.to(torch.float32)
        sums = torch.zeros(batch, chunks, heads, dim, dtype=torch.float32, device=device)
        sums.index_add_(1, part.chunk_of_slot, x.k.float() * weight[..., None, None])
        counts = torch.zeros(batch, chunks, dtype=torch.float32, device=device)
        counts.index_add_(1, part.chunk_of_slot, weight)
        mean_k = sums / counts.clamp_min(1)[..., None, None]

        n_qb = num_blocks(part.num_slots, block_q)
        rows = n_qb * block_q - part.num_slots  # query rows that pad the last query block
        row_mask = None
        if cfg.mode == "fast":
            tile_sel = self._select_tiles(x.q, weight, mean_k, part, n_qb, rows)
        else:
            sel = self._select_rows(x.q, mean_k, part)
            padded = torch.nn.functional.pad(sel, (0, 0, 0, rows))
            tile_sel = padded.view(batch, heads, n_qb, block_q, chunks).any(dim=3)
            # Text keys form one extra chunk every row selects.
            key_chunk = torch.cat(
                [part.chunk_of_slot, torch.full((x.num_text,), chunks, dtype=torch.long, device=device)]
            )
            text_column = torch.ones(batch, heads, sel.shape[2], 1, dtype=torch.bool, device=device)
            row_mask = RowChunkMask(torch.cat([sel, text_column], dim=-1), key_chunk)

        chunk_of_key_block = part.chunk_of_slot[::block_k]
        video_blocks = tile_sel[..., chunk_of_key_block]  # key block j holds chunk c(j) only
        text_blocks = torch.ones(
            batch, heads, n_qb, num_blocks(x.num_text, block_k), dtype=torch.bool, device=device
        )
        layout = BlockLayout.from_block_mask(torch.cat([video_blocks, text_blocks], dim=-1), block_q, block_k)
        return Plan(layout, row_chunk_mask=row_mask)

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


register_method(VMoBAConfig, VMoBA)
