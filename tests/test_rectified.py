"""Rectified SpaAttn against the spec's hand examples and an independent float64 implementation.

The oracle below re-implements spec sections 3.3-3.4 with plain loops over blocks and a dense
masked softmax per query row. It takes the curve permutation and the neighbour matrix as inputs
(both are tested on their own in ``test_curve_order.py``), as the spec's oracle does.
"""

from __future__ import annotations

import math

import pytest
import tiny_pipelines as tp
import torch
from families import resolved

from dit_accel import RectifiedSpaAttnConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.kernels import num_blocks
from dit_accel.methods.curve_order import block_neighbours, curve_order
from dit_accel.methods.pooling import (
    PooledBlocks,
    estimated_block_mass,
    gapr_trusted,
    rectification,
    top_k_floor,
    top_p_with_floor,
)
from dit_accel.methods.rectified import RectifiedSpaAttn

FAMILIES = {"none": "Wan", "last": "HunyuanVideo", "first": "CogVideoX"}


def context(grid, text_position, family, step=7, layer=3):
    return AttentionContext(
        CallContext(grid, text_position, step, 10, "cond", "transformer"),
        LayerContext(f"blocks.{layer}.attn1", layer),
    )


# ------------------------------------------------------------------------------ hand examples
def test_top_p_with_floor_hand_example():
    mass = torch.tensor([0.40, 0.25, 0.20, 0.10, 0.05], dtype=torch.float64).view(1, 1, 1, 5)
    # No cumulative sum is <= 0.3, so n = max(0 + 1, 2) = 2.
    assert top_p_with_floor(mass, 0.3, 2).flatten().tolist() == [True, True, False, False, False]
    # Two cumulative sums (0.40, 0.65) are <= 0.7: n = 3.
    assert top_p_with_floor(mass, 0.7, 2).flatten().tolist() == [True, True, True, False, False]
    assert top_p_with_floor(mass, 0.0, 0).flatten().tolist() == [True, False, False, False, False]
    assert top_p_with_floor(mass, 1.0, 0).all() and top_p_with_floor(mass, 0.3, 9).all()


def test_rectification_hand_example():
    """theta 0.3, k_min 2 keeps {0, 1}; block 3 untrusted: R = 0.75, C = 0.20 v2 + 0.05 v4."""
    mass = torch.tensor([0.40, 0.25, 0.20, 0.10, 0.05], dtype=torch.float64).view(1, 1, 1, 5)
    kept = top_p_with_floor(mass, 0.3, 2)
    trusted = torch.tensor([True, True, True, False, True]).view(1, 1, 1, 5)
    v_mean = torch.arange(10, dtype=torch.float64).view(1, 1, 5, 2)
    r, c = rectification(mass, kept, trusted, v_mean, ipar=True, gapr=True)
    assert math.isclose(float(r), 0.75, abs_tol=1e-15)
    assert torch.allclose(c.flatten(), 0.20 * v_mean[0, 0, 2] + 0.05 * v_mean[0, 0, 4], atol=1e-15, rtol=0)
    r, c = rectification(mass, kept, trusted, v_mean, ipar=True, gapr=False)  # IPAR alone
    assert math.isclose(float(r), 0.65, abs_tol=1e-15) and (c == 0).all()
    r, c = rectification(mass, kept, trusted, v_mean, ipar=False, gapr=True)  # GAPR alone
    assert float(r) == 1.0 and torch.allclose(c.flatten(), 0.20 * v_mean[0, 0, 2] + 0.05 * v_mean[0, 0, 4])


def _pooled(rows: list[list[float]]) -> PooledBlocks:
    x = torch.tensor(rows, dtype=torch.float64)
    mean = x.mean(0)
    dev = (x - mean).abs().mean(0)
    return PooledBlocks(mean.view(1, 1, 1, -1), dev.view(1, 1, 1, -1), torch.ones(1, 1))


def test_gapr_hand_example():
    q = _pooled([[1, 0], [1, 2]])  # mean [1, 1], deviation [0, 1]
    # k mean [1, 0], deviation [1, 0]: gain 1, error 0 + 1 -> not trusted (strict >).
    assert not gapr_trusted(q, _pooled([[2, 0], [0, 0]])).item()
    # k mean [2, 0], deviation [1, 0]: gain 2, error 1 -> trusted.
    assert gapr_trusted(q, _pooled([[3, 0], [1, 0]])).item()


def test_isolated_pooling_hand_example():
    """B = 128, two video blocks and two text tokens, all logits equal: p~_J = 32 / 64.5, text 1/129."""
    q_mean = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    k_mean = torch.zeros(1, 1, 2, 4, dtype=torch.float64)
    text = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    mass = estimated_block_mass(q_mean, k_mean, torch.full((1, 2), 128.0), 1.0, text, None)
    assert torch.allclose(mass.flatten(), torch.tensor([32 / 64.5, 32 / 64.5, 1 / 129], dtype=torch.float64))
    # A padded text key does not count: one text token among 257.
    mass = estimated_block_mass(
        q_mean, k_mean, torch.full((1, 2), 128.0), 1.0, text, torch.tensor([[True, False]])
    )
    assert torch.allclose(mass[..., 2].flatten(), torch.tensor([1 / 257], dtype=torch.float64))


def test_top_k_floor_rounds_like_the_reference():
    assert top_k_floor(900, 0.8) == 179  # (1 - 0.8) * 900 = 179.99... in floating point
    assert top_k_floor(591, 0.75) == 147 and top_k_floor(330, 0.85) == 49


# ------------------------------------------------------------------------------ float64 oracle
def _block_stats(x, rows, valid, bs, means):
    """mean and mean |x - mean| of the given rows (list of tensors (D,)), spec 3.3/3.5."""
    real = [r for r, ok in zip(rows, valid, strict=True) if ok]
    if means == "padded":
        mean = sum(real, torch.zeros_like(x)) / bs
        dev = (
            sum((torch.abs(r - mean) for r in real), torch.zeros_like(x)) + (bs - len(real)) * mean.abs()
        ) / bs
        return mean, dev, float(bs)
    n = max(len(real), 1)
    mean = sum(real, torch.zeros_like(x)) / n
    return mean, sum((torch.abs(r - mean) for r in real), torch.zeros_like(x)) / n, float(len(real))


def oracle(q, k, v, grid, text_position, n_text, padding, cfg, drop, first_frame, scale):
    batch, total, heads, dim = q.shape
    n_video = total - n_text
    video = slice(n_text, total) if text_position == "first" else slice(0, n_video)
    text = slice(0, n_text) if text_position == "first" else slice(n_video, total)
    perm = curve_order(grid).gather
    bs = cfg.block_size
    n_v = num_blocks(n_video, bs)
    nbr = block_neighbours(grid, bs) if cfg.neighbours else torch.eye(n_v, dtype=torch.bool)
    square = set()
    if first_frame == "curve":
        square = set(range(n_v // grid[0]))
    elif first_frame == "true_frame0":
        pos = curve_order(grid).inverse
        square = {int(pos[t]) // bs for t in range(grid[1] * grid[2])}
    k_min = int((1 - drop) * n_v)
    out = torch.zeros_like(q)
    for b in range(batch):
        text_ok = padding[b, text]
        for h in range(heads):
            qv, kv, vv = (x[b, video, h][perm] for x in (q, k, v))
            tk, tv = k[b, text, h], v[b, text, h]
            blocks = [list(range(i * bs, min((i + 1) * bs, n_video))) for i in range(n_v)]
            qs = [
                _block_stats(qv[0], [qv[r] for r in blk], [True] * len(blk), bs, cfg.pooled_means)
                for blk in blocks
            ]
            ks = [
                _block_stats(kv[0], [kv[r] for r in blk], [True] * len(blk), bs, cfg.pooled_means)
                for blk in blocks
            ]
            vs = [
                _block_stats(vv[0], [vv[r] for r in blk], [True] * len(blk), bs, cfg.pooled_means)
                for blk in blocks
            ]
            for i, blk in enumerate(blocks):
                qm, qd, _ = qs[i]
                logits = [scale * float(qm @ km) for km, _, _ in ks]
                logits += [scale * float(qm @ tk[t]) for t in range(n_text) if text_ok[t]]
                mx = max(logits)
                e = [math.exp(x - mx) for x in logits]
                p = [x / sum(e) for x in e]
                weighted = [ks[j][2] * p[j] for j in range(n_v)]
                if n_text:
                    z = sum(weighted) + sum(p[n_v:])
                    mass = [w / z for w in weighted] + [sum(p[n_v:]) / z]
                else:
                    mass = [w / sum(weighted) for w in weighted]
                order = sorted(range(len(mass)), key=lambda c, mass=mass: (-mass[c], c))
                csum, below = 0.0, 0
                for c in order:
                    csum += mass[c]
                    below += csum <= cfg.top_p
                n_keep = min(max(below + 1, k_min), len(mass))
                kept = set(order[:n_keep])
                kept |= {j for j in range(n_v) if nbr[i, j]}
                if i in square:
                    kept |= square
                kept.add(n_v)  # the merged text column is always on (MM only; harmless otherwise)
                trusted = [
                    abs(float(qm @ ks[j][0])) > abs(float(qd @ ks[j][0])) + abs(float(qm @ ks[j][1]))
                    for j in range(n_v)
                ]
                r, comp = 1.0, torch.zeros(dim, dtype=torch.float64)
                if cfg.gapr:
                    for j in range(n_v):
                        if j not in kept and trusted[j]:
                            comp = comp + mass[j] * vs[j][0]
                if cfg.ipar:
                    carried = [c for c in range(len(mass)) if c in kept or (cfg.gapr and not trusted[c])]
                    r = sum(mass[c] for c in carried)
                # Dense masked softmax of each query row of block i over kept video blocks + text.
                key_idx = [t for j in sorted(kept) if j < n_v for t in blocks[j]]
                keys = torch.cat([kv[key_idx], tk[text_ok]])
                vals = torch.cat([vv[key_idx], tv[text_ok]])
                compensated = [j for j in range(n_v) if j not in kept and (trusted[j] or not cfg.gapr)]
                for row in blk:
                    w = torch.softmax(scale * (keys @ qv[row]), dim=0)
                    o = w @ vals
                    if cfg.rectify == "per_row" and (cfg.ipar or cfg.gapr):
                        # Exact kept keys plus each compensated block as n_j copies of its mean key/value.
                        e_kept = torch.exp(scale * (keys @ qv[row]))
                        e_pool = [ks[j][2] * math.exp(scale * float(qv[row] @ ks[j][0])) for j in compensated]
                        numer = e_kept @ vals + sum(
                            (e * vs[j][0] for e, j in zip(e_pool, compensated, strict=True)), 0.0
                        )
                        o = numer / (e_kept.sum() + sum(e_pool))
                    elif cfg.ipar or cfg.gapr:
                        o = r * o + comp
                    out[b, video, h][perm[row]] = o
            if n_text:
                keys = torch.cat([k[b, video, h], tk])[
                    torch.cat([torch.ones(n_video, dtype=torch.bool), text_ok])
                ]
                vals = torch.cat([v[b, video, h], tv])[
                    torch.cat([torch.ones(n_video, dtype=torch.bool), text_ok])
                ]
                w = torch.softmax(scale * (q[b, text, h] @ keys.T), dim=-1)
                out[b, text, h] = w @ vals
    return out


def _inputs(grid, n_text, text_position, seed):
    g = torch.Generator().manual_seed(seed)
    total = grid[0] * grid[1] * grid[2] + n_text
    # Smooth per-position structure plus noise, so pooled logits carry signal and GAPR's test splits.
    base = torch.randn(1, total, 2, 8, generator=g, dtype=torch.float64)
    q, k, v = (base * 0.8 + torch.randn(2, total, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(2, total, dtype=torch.bool)
    if n_text:
        text = slice(0, n_text) if text_position == "first" else slice(total - n_text, total)
        padding[1, text] = torch.arange(n_text) < 2
    return q, k, v, padding


@pytest.mark.parametrize("text_position", ["none", "last", "first"])
@pytest.mark.parametrize(("ipar", "gapr"), [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("means", ["padded", "valid"])
@pytest.mark.parametrize("rectify", ["per_block", "per_row"])
def test_rectified_equals_the_float64_oracle(text_position, ipar, gapr, means, rectify):
    seed = torch.Generator().seed()
    # 98 tokens: the last block holds 2 tokens, so padded and valid means differ a lot there.
    grid, n_text = (2, 7, 7), (0 if text_position == "none" else 5)
    cfg = RectifiedSpaAttnConfig(
        block_size=16,
        sa_drop_rate=0.9,
        top_p=0.3,
        ipar=ipar,
        gapr=gapr,
        pooled_means=means,
        neighbours=False,
        rectify=rectify,
    )
    q, k, v, padding = _inputs(grid, n_text, text_position, seed)
    family = FAMILIES[text_position]
    method = RectifiedSpaAttn(resolved(cfg, family))
    out, density = method(
        q, k, v, scale=None, key_padding_mask=padding, context=context(grid, text_position, family)
    )
    first = "curve" if family == "Wan" else "none"
    ref = oracle(q, k, v, grid, text_position, n_text, padding, cfg, 0.9, first, 8**-0.5)
    err = float((out - ref).norm() / ref.norm())
    assert not torch.isnan(out).any() and err < 1e-10, f"seed {seed}: rel L2 {err:.3g}"
    assert 0 < float(density) < 1, f"seed {seed}"


@pytest.mark.parametrize("first_frame", ["curve", "true_frame0", "none"])
def test_first_frame_square_and_neighbours_match_the_oracle(first_frame):
    seed = torch.Generator().seed()
    grid = (4, 6, 6)
    # rectify given: the paper's correction on video too (the video default is the residual)
    cfg = RectifiedSpaAttnConfig(block_size=16, sa_drop_rate=0.95, first_frame=first_frame, rectify="per_row")
    q, k, v, padding = _inputs(grid, 0, "none", seed)
    out, _ = RectifiedSpaAttn(resolved(cfg, "Wan"))(
        q, k, v, scale=0.3, key_padding_mask=padding, context=context(grid, "none", "Wan")
    )
    ref = oracle(q, k, v, grid, "none", 0, padding, cfg, 0.95, first_frame, 0.3)
    assert float((out - ref).norm() / ref.norm()) < 1e-10, f"seed {seed}"


def test_keeping_every_block_gives_dense_attention():
    """sa_drop_rate 0: the floor keeps every block, so R = 1, C = 0 and the output is dense."""
    from dit_accel.kernels import dense_attention

    seed = torch.Generator().seed()
    grid = (3, 5, 7)
    q, k, v, padding = _inputs(grid, 4, "last", seed)
    config = RectifiedSpaAttnConfig(block_size=16, sa_drop_rate=0.0)
    method = RectifiedSpaAttn(resolved(config, "HunyuanVideo"))
    out, density = method(
        q, k, v, scale=None, key_padding_mask=padding, context=context(grid, "last", "HunyuanVideo")
    )
    ref = dense_attention(q, k, v, key_padding_mask=padding)
    assert float((out - ref).norm() / ref.norm()) < 1e-12, f"seed {seed}"
    assert float(density) == 1.0


def test_family_defaults_pick_dense_steps_and_layers():
    def method(family, **fields):
        return RectifiedSpaAttn(resolved(RectifiedSpaAttnConfig(**fields), family))

    grid = (2, 4, 4)
    reference = method("Wan", preset="reference")  # the reference scripts' schedule
    assert reference.keeps_dense(context(grid, "none", "Wan", step=4, layer=7))  # 5 dense steps
    assert reference.keeps_dense(context(grid, "none", "Wan", step=9, layer=1))  # layers 0-1
    assert not reference.keeps_dense(context(grid, "none", "Wan", step=5, layer=2))
    # dit-accel's Wan default: none of its own; its video correction warms up instead (3 of 10 steps)
    default = method("Wan")
    assert (default.config.dense_steps, default.config.dense_layers) == (0, ())
    assert [default.keeps_dense(context(grid, "none", "Wan", step=s, layer=1)) for s in (2, 3, 9)] == [
        True,
        False,
        False,
    ]
    assert method("HunyuanVideo").config.dense_steps == 0  # (the video correction's warm-up aside)
    assert not method("HunyuanVideo").keeps_dense(context(grid, "last", "HunyuanVideo", step=5, layer=0))
    assert method("CogVideoX").keeps_dense(context(grid, "first", "CogVideoX", step=4, layer=0))
    assert method("HunyuanVideo").drop_rate() == 0.8
    explicit = method("Wan", dense_steps=0, dense_layers=(3,), sa_drop_rate=0.5)
    assert not explicit.keeps_dense(context(grid, "none", "Wan", step=5, layer=0))
    assert explicit.keeps_dense(context(grid, "none", "Wan", step=9, layer=3))
    assert explicit.drop_rate() == 0.5


@pytest.mark.parametrize(
    "options",
    [
        dict(top_p=1.5),
        dict(sa_drop_rate=-0.1),
        dict(pooled_means="mean"),
        dict(first_frame="frame0"),
        dict(pooled_dtype="bf16"),
        dict(dense_steps=-1),
    ],
)
def test_config_rejects_bad_values(options):
    with pytest.raises(ValueError):
        RectifiedSpaAttnConfig(**options)


@pytest.mark.parametrize(
    "name", ["wan21", "wan22", "hunyuan_video", "cogvideox", "cogvideox15", "pixart_alpha"]
)
def test_tiny_pipelines_run_sparse_and_restore(name):
    pipe, kwargs = tp.BUILDERS[name]()
    dense = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("rectified", block_size=16, dense_steps=0, dense_layers=())
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    assert torch.isfinite(out).all()
    assert 0 < report.mean_density < 1
    assert not torch.equal(out, dense)
    assert torch.equal(tp.run(pipe, kwargs), dense)


def test_per_row_rectify_is_the_same_in_row_chunks():
    from dit_accel.methods.pooling import per_row_rectify, pool_blocks

    seed = torch.Generator().seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v, out = (torch.randn(2, 75, 3, 8, generator=g, dtype=torch.float64) for _ in range(4))
    kp = pool_blocks(k, 16, None, "valid", torch.float64)
    vp = pool_blocks(v, 16, None, "valid", torch.float64)
    row_max = torch.randn(2, 3, 75, generator=g, dtype=torch.float64)
    row_sum = torch.rand(2, 3, 75, generator=g, dtype=torch.float64) + 0.5
    compensated = torch.rand(2, 3, 5, 5, generator=g) < 0.5
    args = (out, row_max, row_sum, q, kp, vp.mean, compensated, 16, 0.3)
    whole = per_row_rectify(*args)
    chunked = per_row_rectify(*args, max_elements=1)  # one block of rows at a time
    assert torch.allclose(whole, chunked, atol=1e-14, rtol=0), f"seed {seed}"
    # Rows with nothing compensated keep the sparse output exactly.
    none = per_row_rectify(out, row_max, row_sum, q, kp, vp.mean, torch.zeros_like(compensated), 16, 0.3)
    assert torch.allclose(none, out, atol=1e-14, rtol=0)


def test_gpu_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/bench_rectified.py is what runs on a lent GPU; the toy run keeps it from rotting."""
    from benchmark_scripts import run_script

    run_script(
        "benchmarks/bench_rectified.py", "--toy", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path)
    )
    rows = [r for r in (tmp_path / "bench_rectified.md").read_text().splitlines() if r.startswith("| toy")]
    assert len(rows) == 6
    densities = [float(r.rstrip(" |").rsplit("|", 1)[1]) for r in rows]
    assert all(0 < d < 1 for d in densities), rows
