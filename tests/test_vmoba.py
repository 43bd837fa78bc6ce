"""VMoBA as a method: its output against a float64 oracle built from the spec, and on tiny pipelines."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch
from benchmark_scripts import run_script

from dit_accel import VMoBAConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods.vmoba import VMoBA
from dit_accel.methods.vmoba_partition import chunk_partition, layer_kind
from dit_accel.methods.vmoba_select import chunk_gate, select_chunks

TINY = dict(
    block_size=16,
    scale_chunks=False,
    temporal_chunk_size=1,
    spatial_chunk_size=(5, 7),
    st_chunk_size=(1, 5, 7),
)


def context(grid, text_position="none", layer=0):
    return AttentionContext(
        CallContext(grid, text_position, 0, None, "cond", "transformer"),
        LayerContext(f"blocks.{layer}.attn1", layer),
    )


def oracle(q, k, v, grid, kind, size, text_position, n_text, padding, config, tile_slots=None):
    """Spec section 5, written independently of the method: unpadded chunk order, dense masked softmax.

    ``tile_slots``: the padded slot of every token in chunk order (fast mode): select per query
    block of the padded order from the block's mean query instead of per query.
    """
    part = chunk_partition(grid, kind, size, pad_to=1)
    total = q.shape[1]
    n_video = total - n_text
    video = slice(n_text, total) if text_position == "first" else slice(0, n_video)
    qv, kv = (x[:, video][:, part.gather] for x in (q, k))
    chunk = part.chunk_of_slot
    mean_k = torch.stack([kv[:, chunk == c].float().mean(1) for c in range(part.num_chunks)], dim=1)
    topk = {"1d": config.temporal_topk, "2d": config.spatial_topk, "3d": config.st_topk}[kind]
    options = dict(
        mode=config.select_mode, threshold=config.threshold, topk=topk, scope=config.threshold_type
    )
    if tile_slots is None:
        sel = select_chunks(chunk_gate(qv, mean_k), chunk, **options)
    else:
        # Fast mode: tiles are runs of block_size slots of the method's padded chunk order; real
        # tokens keep their relative order there, so tile i holds the tokens whose slot // block is i.
        tile = tile_slots // config.block_size
        tiles = [torch.nonzero(tile == i).squeeze(1) for i in range(int(tile.max()) + 1)]
        tiles = [t for t in tiles if t.numel()]
        pooled = torch.stack([qv[:, t].float().mean(1) for t in tiles], dim=1)
        held = [torch.bincount(chunk[t], minlength=part.num_chunks) for t in tiles]
        own = torch.stack([h.argmax() for h in held])
        tile_sel = select_chunks(chunk_gate(pooled, mean_k), own, **options)
        sel = torch.zeros(q.shape[0], q.shape[2], n_video, part.num_chunks, dtype=torch.bool)
        for i, t in enumerate(tiles):
            sel[:, :, t] = tile_sel[:, :, i : i + 1] | (held[i] > 0)
    # Allowed (query slot, key slot) pairs in chunk order, then back to the original token order.
    allowed_video = sel[:, :, :, chunk]  # (B, H, Lq, Lk) in chunk order
    inv = part.inverse
    allowed_video = allowed_video[:, :, inv][:, :, :, inv]
    batch, heads = q.shape[0], q.shape[2]
    allowed = torch.ones(batch, heads, total, total, dtype=torch.bool)
    idx_v = torch.arange(total)[video]
    allowed[:, :, idx_v[:, None], idx_v[None, :]] = allowed_video
    return dense_attention_torch(q, k, v, block_mask=allowed, key_padding_mask=padding).out


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("text_position", ["none", "first", "last"])
@pytest.mark.parametrize("mode", ["parity", "fast"])
def test_vmoba_equals_the_spec_oracle(layer, text_position, mode):
    g = torch.Generator()
    g.seed()
    grid, n_text = (3, 10, 14), (0 if text_position == "none" else 7)
    config = VMoBAConfig(mode=mode, correction=None, **TINY)  # the selection alone
    method = VMoBA(config)
    total = grid[0] * grid[1] * grid[2] + n_text
    q, k, v = (torch.randn(2, total, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(2, total, dtype=torch.bool)
    if n_text:
        text = slice(0, n_text) if text_position == "first" else slice(total - n_text, total)
        padding[1, text] = torch.arange(n_text) < 3
    out, density = method(
        q, k, v, scale=None, key_padding_mask=padding, context=context(grid, text_position, layer)
    )
    kind = layer_kind(layer)
    size = {"1d": 1, "2d": (5, 7), "3d": (1, 5, 7)}[kind]
    slots = method.partition(layer, grid, torch.device("cpu")).real_slots
    fast_tiles = slots if mode == "fast" else None
    ref = oracle(q, k, v, grid, kind, size, text_position, n_text, padding, config, tile_slots=fast_tiles)
    assert float((out - ref).norm() / ref.norm()) < 1e-10
    assert 0 < float(density) <= 1


def test_layers_cycle_through_1d_2d_3d_partitions():
    method = VMoBA(VMoBAConfig(**TINY))
    kinds = [method.partition(i, (3, 10, 14), torch.device("cpu")).kind for i in range(6)]
    assert kinds == ["1d", "2d", "3d", "1d", "2d", "3d"]


def test_default_chunks_scale_to_odd_grids():
    method = VMoBA(VMoBAConfig())
    for layer in range(3):
        part = method.partition(layer, (21, 45, 80), torch.device("cpu"))
        assert part.num_tokens == 21 * 45 * 80
        assert int(part.valid.sum()) == part.num_tokens
        assert part.pad_to in (16, 32, 64, 128)
        assert torch.all((part.chunk_start[1:] - part.chunk_start[:-1]) % part.pad_to == 0)
        assert part.pad_to == 16 or part.num_slots <= 1.125 * part.num_tokens
    # At the reference grid the reference chunk counts come back (spec section 2).
    parts = [method.partition(i, (20, 30, 52), torch.device("cpu")) for i in range(3)]
    assert [p.num_chunks for p in parts] == [10, 130, 325]
    # Key blocks: 3,120- and 240-token chunks pad to 128 cheaply; 96-token cubes take 32 (no padding).
    assert [p.pad_to for p in parts] == [128, 128, 32]


def test_topk_values_with_threshold_mode_warn():
    with pytest.warns(UserWarning, match="ignored"):
        VMoBAConfig(st_topk=4)


@pytest.mark.parametrize("name", ["wan21", "hunyuan_video", "cogvideox"])
@pytest.mark.parametrize("mode", ["parity", "fast"])
def test_tiny_pipelines_run_sparse_and_restore(name, mode):
    pipe, kwargs = tp.BUILDERS[name]()
    stock = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("vmoba", mode=mode, **TINY)
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    assert torch.isfinite(out).all()
    assert report.mean_density < 1
    assert float((out - stock).norm() / stock.norm()) > 1e-5
    assert torch.equal(tp.run(pipe, kwargs), stock)


def test_gpu_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/bench_vmoba.py is what runs on a lent GPU; the toy run keeps it from rotting."""
    run_script(
        "benchmarks/bench_vmoba.py",
        "--toy",
        "--device",
        "cpu",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
        "--parity-budget",
        "30",
    )
    table = (tmp_path / "bench_vmoba.md").read_text()
    assert "| fast |" in table and "Break-even" in table and "Parity mode" in table
