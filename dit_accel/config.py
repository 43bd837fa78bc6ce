"""Configuration: one frozen dataclass per method, sharing the fields every method understands.

A config says *what* to compute; it holds no tensors and no state, so it can be logged, compared
and reused across pipelines. Validation happens at construction, with errors that name the field
and the allowed values.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

KERNEL_BACKENDS = ("auto", "triton", "torch")


def positive_int(value: object, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name``; bools are refused although they are ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _as_int_tuple(value: Any, name: str, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,)
    try:
        items = tuple(int(v) for v in value)
    except TypeError as error:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from error
    if any(int(v) != v for v in value):
        raise TypeError(f"{name} must contain integers, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    return items


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Fields shared by every method.

    Attributes:
        block_size: tokens per attention block (query and key tiles). Default 128, the size the
            GPU kernels are tuned for; tests use smaller blocks on toy models.
        dense_steps: the number of first denoising steps that keep dense attention (default 0).
        dense_layers: indices of self-attention layers that always stay dense, counted in the
            order the adapter lists them (transformer blocks first, then single-stream blocks).
        kernel_backend: "auto" (Triton on CUDA when available, PyTorch otherwise), "triton" or
            "torch".
    """

    method: ClassVar[str] = ""

    block_size: int = 128
    dense_steps: int = 0
    dense_layers: tuple[int, ...] = ()
    kernel_backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not isinstance(self.dense_steps, int) or self.dense_steps < 0:
            raise ValueError(f"dense_steps must be a non-negative integer, got {self.dense_steps!r}")
        layers = _as_int_tuple(self.dense_layers, "dense_layers")
        if any(i < 0 for i in layers):
            raise ValueError(f"dense_layers must be non-negative layer indices, got {self.dense_layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")

    def replace(self, **overrides: Any) -> SparseAttentionConfig:
        """A copy with some fields changed; unknown field names raise a TypeError naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option(s) {unknown}; valid options: {sorted(valid)}"
            )
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class DenseConfig(SparseAttentionConfig):
    """Exact dense attention through dit-accel's whole path: the control for every comparison.

    Attributes:
        use_block_kernel: run dense attention through the block-sparse kernel with a full layout
            instead of PyTorch's scaled_dot_product_attention (checks the kernel path; slower).
    """

    method: ClassVar[str] = "dense"

    use_block_kernel: bool = False


@dataclass(frozen=True)
class Window3DConfig(SparseAttentionConfig):
    """A static 3D local window over the video token grid (Sliding-Tile-Attention, training-free).

    Video tokens are reordered into ``tile``-shaped groups of ``block_size`` tokens, so one block
    is one compact spatio-temporal tile. A query tile attends the key tiles of a window centred on
    it and shifted to stay inside the grid at borders, so every query tile sees the same number of
    key tiles. The window is tile-granular: each extent is rounded up to whole tiles.

    Attributes:
        window: (frames, height, width) extent of the window in latent tokens (after patchify).
            Axes longer than the grid are clamped, so a window at least as large as the grid is
            dense attention.
        tile: (frames, height, width) of one tile in tokens; the product must equal
            ``block_size``. Default: chosen from ``block_size`` (128 -> (2, 8, 8), 64 -> (1, 8, 8)).
    """

    method: ClassVar[str] = "window3d"

    window: tuple[int, int, int] = (9, 24, 24)
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        window = _as_int_tuple(self.window, "window", 3)
        if any(w < 1 for w in window):
            raise ValueError(f"window extents must be >= 1 token, got {self.window!r}")
        object.__setattr__(self, "window", window)
        tile = default_tile(self.block_size) if self.tile is None else _as_int_tuple(self.tile, "tile", 3)
        if any(t < 1 for t in tile) or tile[0] * tile[1] * tile[2] != self.block_size:
            raise ValueError(
                f"tile {tile} must have positive sides whose product equals block_size={self.block_size}"
            )
        object.__setattr__(self, "tile", tile)


@dataclass(frozen=True)
class TopKConfig(SparseAttentionConfig):
    """Pooled top-k block selection: each query block keeps the key blocks whose mean key scores
    highest against its mean query. No correction; the quality benchmark's baseline.

    Attributes:
        density: the fraction of video key blocks every query block keeps (0.25); the kept count
            is ``max(1, round(density x blocks))``.
        tile: (frames, height, width) of one block in tokens, as for ``window3d`` (default from
            ``block_size``).
    """

    method: ClassVar[str] = "topk"

    density: float = 0.25
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.density, bool)
            or not isinstance(self.density, int | float)
            or not 0 < self.density <= 1
        ):
            raise ValueError(f"density must lie in (0, 1], got {self.density!r}")
        tile = default_tile(self.block_size) if self.tile is None else _as_int_tuple(self.tile, "tile", 3)
        if any(t < 1 for t in tile) or tile[0] * tile[1] * tile[2] != self.block_size:
            raise ValueError(
                f"tile {tile} must have positive sides whose product equals block_size={self.block_size}"
            )
        object.__setattr__(self, "tile", tile)


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
            its own chunk's share; at least one other chunk is always kept.
        threshold_type: the scope of the normalisation and the sort: "query_head" (default, as the
            reference code), "head_global" (the paper's global selection), "block", "overall".
        temporal_topk, spatial_topk, st_topk: chunks per query in "topk" mode (3, 20, 15).
        layer_cycle: how many consecutive layers use 1D, 2D, 3D chunks ((1, 1, 1)).
        first_full_layer: shifts the layer cycle (0).
        mode: "fast" (default) selects per query block of ``block_size`` rows from the block's
            mean query, so the layout alone is exact and the Triton kernel runs it at full speed;
            "parity" selects per query exactly as the reference (each row's own selection is
            applied on the PyTorch path, ~100x slower than SDPA on an H100). The default follows
            the measurements in benchmarks/results/ (vmoba_cpu.md, h100.md): on the tiny
            pipelines fast mode's PSNR to dense is within 0.7 dB of parity's (better on two of
            three), and it is the only mode faster than dense attention.
        query_slice: queries per slice when selecting in "query_head" scope (bounds memory).
    """

    method: ClassVar[str] = "vmoba"

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
            self, "temporal_chunk_size", _as_int_tuple(self.temporal_chunk_size, "temporal_chunk_size", 1)[0]
        )
        object.__setattr__(
            self, "spatial_chunk_size", _as_int_tuple(self.spatial_chunk_size, "spatial_chunk_size", 2)
        )
        object.__setattr__(self, "st_chunk_size", _as_int_tuple(self.st_chunk_size, "st_chunk_size", 3))
        object.__setattr__(self, "layer_cycle", _as_int_tuple(self.layer_cycle, "layer_cycle", 3))
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


@dataclass(frozen=True)
class RettentionConfig(SparseAttentionConfig):
    """Re-ttention: a very sparse static mask, reshaped with statistics of the last full step.

    At refresh steps attention runs dense and records, per query row, the share rho of the softmax
    mass inside the static mask and the residual delta = (full output - rho x masked output). At
    sparse steps only the mask is computed and the output is rho x masked output + delta, with rho
    raised by ``drift`` after every sparse step. Schedules are in denoising steps.

    Attributes:
        sparsity: the static window as a fraction of the tokens (0.03125): PixArt a 1-D band of
            int(N x sparsity) positions, CogVideoX a per-frame window of int(H x W x sparsity)
            in-frame positions in every frame, Wan/HunyuanVideo (dit-accel extension) a 3D window
            whose per-axis extent is sparsity ** (1/3) of the grid.
        use_ratio: scale the masked output by rho (True); False is the plain masked softmax.
        use_residual: add the cached residual delta (True).
        drift: added to rho after each sparse step (0.04).
        fix_text_rows: the reference drifts text rows too (their outputs are scaled by 1.04,
            1.08, ... between refreshes); True leaves text rows unscaled. Default False (parity).
        warmup_fraction: dense steps at the start, as a fraction of the denoising steps; None uses
            the family default (PixArt 5/20, CogVideoX 15/50 as in the reference; Wan and
            HunyuanVideo 0.3, not published by the reference).
        refresh_every: steps between refreshes after the warm-up (5): the first step after the
            warm-up is a refresh, then every ``refresh_every``-th.
        state_dtype: dtype of the cached residual: None (the activations' dtype), "float32",
            "bfloat16" or "float16". rho is always float32.
        state_device: "same" keeps the state next to the activations; "cpu" holds it in host
            memory (for CogVideoX-2B the reference's state is about 4.1 GB).
    """

    method: ClassVar[str] = "rettention"

    sparsity: float = 0.03125
    use_ratio: bool = True
    use_residual: bool = True
    drift: float = 0.04
    fix_text_rows: bool = False
    warmup_fraction: float | None = None
    refresh_every: int = 5
    state_dtype: str | None = None
    state_device: str = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.sparsity <= 1.0:
            raise ValueError(f"sparsity must lie in (0, 1], got {self.sparsity!r}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1], got {self.warmup_fraction!r}")
        if not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(f"refresh_every must be a positive integer, got {self.refresh_every!r}")
        if self.state_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(
                f"state_dtype must be None, 'float32', 'bfloat16' or 'float16', got {self.state_dtype!r}"
            )
        if self.state_device not in ("same", "cpu"):
            raise ValueError(f"state_device must be 'same' or 'cpu', got {self.state_device!r}")


@dataclass(frozen=True)
class FreeSwimConfig(SparseAttentionConfig):
    """FreeSwim: render above the training resolution with inward sliding-window self-attention.

    Every video query attends a spatial window the size of the training-resolution token grid, over
    all frames, shifted inward at the borders so that every query sees a whole window. A second,
    full-attention branch runs on the same latent inside the transformer (the batch is doubled and
    only the window branch's prediction is returned), and its text cross-attention output replaces
    the window branch's in every block. Wan 2.1 / 2.2 text-to-video only (spec: the reference).

    Attributes:
        base_resolution: (height, width) in pixels the model was trained at ((480, 832) for Wan 2.1
            1.3B; (720, 1280) for 14B). With ``vae_scale_factor`` and the transformer's patch size it
            gives the window: ``(2 d_h + 1, 2 d_w + 1)`` tokens, ``d = base // (vae x patch) // 2``.
        vae_scale_factor: pixels per latent along height and width (8 for Wan 2.1 and 2.2 A14B, 16
            for Wan 2.2 TI2V-5B).
        window: (rows, cols) of the window in tokens; overrides ``base_resolution``.
        inward: shift windows inward at borders (True, the method); False clips them (the ablation).
        cross_attn_override: run the full-attention branch and use its cross-attention output in
            every block (True). False runs the window branch alone (no second branch).
        cache: cache mode: the full branch runs on guide steps only (every ``cache_steps``-th step,
            conditional pass); each block's cross-attention output is kept and reused on the steps
            in between, and the unconditional pass never runs the full branch (as the reference).
        cache_steps: guide-step period in cache mode (2, as the reference).
        override_uncond: whether the unconditional pass also takes the full branch's
            cross-attention. None (default) follows the reference, which overrides it without
            cache mode and not with it (spec quirk 6); True or False make both modes agree. True
            in cache mode keeps a second cache for the unconditional pass (twice the memory).
        cache_device: where the cache lives: "auto" (the activations' device while the cache fits
            in half of the free GPU memory, otherwise pinned host memory), "same" or "cpu".
        attention_scale: softmax scale of both self-attention branches: "reference" (default,
            ``sqrt(log(3120) / log(1560) / head_dim)``, the reference's constant), "default"
            (``head_dim ** -0.5``) or a number.
        order: token order of the window branch: "spatial" (default: all frames of a position
            adjacent, most visited tiles need no in-kernel mask) or "raster" (diffusers' order, for
            debugging).
        experimental: allow the window alone (no second branch) on HunyuanVideo, CogVideoX and
            PixArt: video queries attend the window plus every text key, text queries stay dense.
    """

    method: ClassVar[str] = "freeswim"

    base_resolution: tuple[int, int] = (480, 832)
    vae_scale_factor: int = 8
    window: tuple[int, int] | None = None
    inward: bool = True
    cross_attn_override: bool = True
    cache: bool = False
    cache_steps: int = 2
    override_uncond: bool | None = None
    cache_device: str = "auto"
    attention_scale: str | float = "reference"
    order: str = "spatial"
    experimental: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        base = _as_int_tuple(self.base_resolution, "base_resolution", 2)
        if any(b < 1 for b in base):
            raise ValueError(f"base_resolution must be positive, got {self.base_resolution!r}")
        object.__setattr__(self, "base_resolution", base)
        positive_int(self.vae_scale_factor, "vae_scale_factor")
        if self.window is not None:
            window = _as_int_tuple(self.window, "window", 2)
            if any(w < 1 for w in window):
                raise ValueError(f"window extents must be >= 1 token, got {self.window!r}")
            object.__setattr__(self, "window", window)
        positive_int(self.cache_steps, "cache_steps")
        if self.cache_device not in ("auto", "same", "cpu"):
            raise ValueError(f"cache_device must be 'auto', 'same' or 'cpu', got {self.cache_device!r}")
        scale = self.attention_scale
        if isinstance(scale, str):
            if scale not in ("reference", "default"):
                raise ValueError(f"attention_scale must be 'reference', 'default' or a number, got {scale!r}")
        elif not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(
                f"attention_scale must be 'reference', 'default' or a positive number, got {scale!r}"
            )
        if self.order not in ("spatial", "raster"):
            raise ValueError(f"order must be 'spatial' or 'raster', got {self.order!r}")
        if self.override_uncond is not None and not isinstance(self.override_uncond, bool):
            raise ValueError(f"override_uncond must be None, True or False, got {self.override_uncond!r}")
        if self.override_uncond and not self.cross_attn_override:
            raise ValueError("override_uncond=True needs cross_attn_override=True (the full branch)")
        if self.cache and not self.cross_attn_override:
            raise ValueError(
                "cache=True caches the full branch's cross-attention: it needs cross_attn_override=True"
            )


RECTIFIED_POOLED_MEANS = ("padded", "valid")
RECTIFIED_FIRST_FRAME = ("none", "curve", "true_frame0")


@dataclass(frozen=True)
class RectifiedSpaAttnConfig(SparseAttentionConfig):
    """Rectified SpaAttn: pooled top-p block selection, with the sparse output rectified toward full
    attention from the same pooled estimate.

    Video tokens are reordered along a 3D space-filling curve so that a block of ``block_size``
    tokens is compact. Each query block keeps the key blocks with the largest estimated
    full-attention mass (pooled queries and keys; text keys pooled individually and weighted as
    single tokens) until ``top_p`` is reached, at least ``int((1 - sa_drop_rate) x n_blocks)``,
    plus its 26-neighbourhood blocks and the text blocks (Wan: a "first frame" square of blocks).
    The output of a query block is then ``R x O_sparse + C``: IPAR scales the sparse output by the
    estimated mass it stands for, GAPR adds the pooled values of dropped blocks whose pooled logit
    is trusted. Text queries stay dense.

    Attributes:
        sa_drop_rate: sets the top-k floor. None = the family default (HunyuanVideo 0.8, Wan 0.75,
            CogVideoX 0.75, as in the reference scripts; PixArt 0.75, a dit-accel extension).
        top_p: cumulative estimated mass a query block keeps at least (0.3, as the reference).
        ipar: scale each query block's sparse output by the estimated mass of its kept blocks
            (plus, with ``gapr``, of the dropped blocks GAPR does not trust). False: no scaling.
        gapr: add ``sum(p x mean V)`` of the dropped blocks whose pooled logit passes the
            gain-versus-pooling-error test. ``ipar=gapr=False`` is plain pooled top-p attention.
        neighbours: always keep the blocks within one token (26-neighbourhood) of a query block.
        pooled_means: "padded" (default, the reference: a partial last block is averaged over
            ``block_size`` slots with zeros) or "valid" (over its real tokens; the fix).
        pooled_dtype: "float32" (default: stable selection) or "model" (the activations' dtype,
            as the reference's bf16 pooled math).
        rectify: "per_block" (default, the reference): ``R x O_sparse + C`` with one R and C per
            query block, from its mean query. "per_row" (spec section 4, not in the reference):
            every row adds the compensated blocks' pooled values weighted by its own logits and
            renormalises with the kernel's exact row sum; compensated = the dropped blocks GAPR
            trusts (every dropped block with ``gapr=False``); ``ipar=gapr=False`` stays plain.
        first_frame: a square of blocks every query block of it keeps. "curve" (the reference,
            for Wan): the first ``n_blocks // frames`` blocks of the curve order, which are not
            exactly latent frame 0; "true_frame0": the blocks holding frame 0's tokens; "none".
            None = the family default ("curve" for Wan, "none" for the others).
        dense_steps / dense_layers: None = the family default (Wan 5 steps and layers 0-1 of each
            transformer, CogVideoX 5 steps, HunyuanVideo and PixArt none); otherwise as for
            every method. Wan I2V in the reference keeps only the layers: pass ``dense_steps=0``;
            its Wan 2.2 T2V A14B keeps 3 of 40 steps: ``dense_steps=3``.
    """

    method: ClassVar[str] = "rectified"

    sa_drop_rate: float | None = None
    top_p: float = 0.3
    ipar: bool = True
    gapr: bool = True
    neighbours: bool = True
    pooled_means: str = "padded"
    pooled_dtype: str = "float32"
    rectify: str = "per_block"
    first_frame: str | None = None
    dense_steps: int | None = None  # type: ignore[assignment]
    dense_layers: tuple[int, ...] | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        steps, layers = self.dense_steps, self.dense_layers
        object.__setattr__(self, "dense_steps", 0 if steps is None else steps)
        object.__setattr__(self, "dense_layers", () if layers is None else layers)
        super().__post_init__()
        if steps is None:
            object.__setattr__(self, "dense_steps", None)
        if layers is None:
            object.__setattr__(self, "dense_layers", None)
        if self.sa_drop_rate is not None and not 0.0 <= self.sa_drop_rate <= 1.0:
            raise ValueError(f"sa_drop_rate must lie in [0, 1], got {self.sa_drop_rate!r}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1], got {self.top_p!r}")
        if self.pooled_means not in RECTIFIED_POOLED_MEANS:
            raise ValueError(
                f"pooled_means must be one of {RECTIFIED_POOLED_MEANS}, got {self.pooled_means!r}"
            )
        if self.pooled_dtype not in ("float32", "model"):
            raise ValueError(f"pooled_dtype must be 'float32' or 'model', got {self.pooled_dtype!r}")
        if self.rectify not in ("per_block", "per_row"):
            raise ValueError(f"rectify must be 'per_block' or 'per_row', got {self.rectify!r}")
        if self.first_frame is not None and self.first_frame not in RECTIFIED_FIRST_FRAME:
            raise ValueError(f"first_frame must be one of {RECTIFIED_FIRST_FRAME}, got {self.first_frame!r}")


#: Per-family defaults of the reference scripts: (sa_drop_rate, dense steps, dense layers per
#: transformer, first_frame). PixArt is not in the reference (dit-accel extension, no warm-up).
RECTIFIED_DEFAULTS = {
    "HunyuanVideo": (0.8, 0, (), "none"),
    "Wan": (0.75, 5, (0, 1), "curve"),
    "CogVideoX": (0.75, 5, (), "none"),
    "PixArt": (0.75, 0, (), "none"),
}


#: Dense warm-up per family, as a fraction of the denoising steps (reference: PixArt 5 of 20,
#: CogVideoX 15 of 50; Wan and HunyuanVideo are not in the reference).
RETTENTION_WARMUP = {"PixArt": 5 / 20, "CogVideoX": 15 / 50, "Wan": 0.3, "HunyuanVideo": 0.3}


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


_REGISTRY: dict[str, type[SparseAttentionConfig]] = {}


def register_config(config_cls: type[SparseAttentionConfig]) -> type[SparseAttentionConfig]:
    """Make a config class reachable by its method name (``enable_sparse_attention("name")``)."""
    _REGISTRY[config_cls.method] = config_cls
    return config_cls


for _cls in (
    DenseConfig,
    Window3DConfig,
    TopKConfig,
    VMoBAConfig,
    RettentionConfig,
    RectifiedSpaAttnConfig,
    FreeSwimConfig,
):
    register_config(_cls)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def resolve_config(method: str | SparseAttentionConfig, **overrides: Any) -> SparseAttentionConfig:
    """Turn ``"name"`` + keyword overrides, or a config object (+ overrides), into a config."""
    if isinstance(method, SparseAttentionConfig):
        return method.replace(**overrides) if overrides else method
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name or a config object, got {type(method).__name__}")
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    config_cls = _REGISTRY[method]
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no option(s) {unknown}; valid options: {sorted(valid)}")
    return config_cls(**overrides)


__all__ = [
    "DenseConfig",
    "FreeSwimConfig",
    "RectifiedSpaAttnConfig",
    "RettentionConfig",
    "VMoBAConfig",
    "SparseAttentionConfig",
    "TopKConfig",
    "Window3DConfig",
    "available_methods",
    "register_config",
    "resolve_config",
]
