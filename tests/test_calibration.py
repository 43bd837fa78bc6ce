"""``auto``'s calibration: the kept-mass curves are the softmax's, the allocation spends exactly
the budget where it keeps the most mass, plans are saved, loaded and checked against the model."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import tiny_pipelines as tp
import torch

import dit_accel
from dit_accel import AutoConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.methods.calibration import allocate, kept_mass_curves


def _operands(grid, heads=2, batch=2, text=0, seed=0):
    method = dit_accel.methods.build_method(AutoConfig(block_size=16, min_tokens=0))
    call = CallContext(grid, "none" if not text else "last", 0, 10, "cond", "transformer")
    context = AttentionContext(call, LayerContext("blocks.0.attn1", 0))
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2] + text
    q, k, v = (torch.randn(batch, n, heads, 8, generator=g) * 2 for _ in range(3))
    x, _, _ = method.prepare(q, k, v, 8**-0.5, None, context)
    return method, context, x


@pytest.mark.parametrize(
    ("grid", "text"), [((2, 8, 12), 0), ((2, 8, 12), 7), ((1, 16, 16), 0), ((3, 10, 14), 0), ((3, 10, 14), 5)]
)
def test_kept_mass_curves_are_the_float64_softmax_mass_of_the_best_blocks(grid, text):
    method, context, x = _operands(grid, text=text)
    ranking = method.block_scores(x, context)
    curves = kept_mass_curves(x, ranking)
    # float64 oracle: full softmax over every key (text included), block sums, best blocks first
    q, keys = x.q.double(), x.keys.double()
    logits = torch.einsum("bshd,bthd->bhst", q, keys) * x.scale
    logits = logits.masked_fill(~x.key_valid[:, None, None], -torch.inf)
    p = logits.softmax(-1)
    n = ranking.shape[-1]
    pad = torch.nn.functional.pad
    video_keys = x.keys.shape[1] - text  # 420 tokens without text: a partial last block
    block = pad(p[..., :video_keys], (0, n * 16 - video_keys)).reshape(*p.shape[:3], n, 16).sum(-1)
    block = pad(block, (0, 0, 0, n * 16 - block.shape[2]))  # (B, H, n x 16, n)
    rows = pad(x.video_ok.double(), (0, n * 16 - x.video_ok.shape[1]))[:, None, :, None]
    per_qblock = (block * rows).reshape(*block.shape[:2], n, 16, n).sum(3)  # (B, H, n_q, n)
    counts = rows.reshape(rows.shape[0], 1, n, 16).sum(-1)[..., None]
    best = per_qblock.gather(-1, ranking.argsort(-1, descending=True)).cumsum(-1)
    expected = best.sum((0, 2)) / counts.sum((0, 2))
    assert torch.isfinite(curves).all()
    assert (curves - expected).norm() / expected.norm() < 1e-5
    assert (curves.diff(dim=-1) >= -1e-6).all()  # more blocks never keep less
    text_p = pad(p[..., video_keys:], (0, 0, 0, n * 16 - p.shape[2]))
    text_share = (text_p * rows).sum(-1).sum((0, 2)) / counts[..., 0].sum((0, 2))
    assert torch.allclose(curves[:, -1].double(), 1 - text_share, atol=1e-5)  # all blocks: all but text


def test_the_allocation_spends_exactly_the_budget_and_matches_the_exhaustive_optimum():
    n = 6
    k = torch.arange(1, n + 1, dtype=torch.float32)
    concentrated = 1 - 0.5 ** (2 * k)  # nearly everything in the first block
    uniform = k / n
    middling = 1 - 0.5**k
    curves = {"a": torch.stack([concentrated, uniform]), "b": middling[None].repeat(2, 1)}
    for density in (0.3, 0.5, 0.75):
        counts = allocate(curves, density, minimum=1)
        table = torch.stack([counts["a"], counts["b"]])
        assert int(table.sum()) == round(density * n * 4) and (table >= 1).all() and (table <= n).all()
        kept = sum(float(curves[name][h, int(counts[name][h]) - 1]) for name in "ab" for h in range(2))
        heads = (concentrated, uniform, middling, middling)
        best = max(
            sum(float(c[c_k - 1]) for c, c_k in zip(heads, ks, strict=True))
            for ks in itertools.product(range(1, n + 1), repeat=4)
            if sum(ks) == round(density * n * 4)
        )
        assert kept == pytest.approx(best)
    assert allocate(curves, 0.75, minimum=1)["a"].tolist() == [3, 6]  # the uniform head gets the most
    assert (allocate(curves, 0.01, minimum=2)["a"] == 2).all()  # never below the floor


def test_a_calibrated_plan_is_measured_once_saved_and_loaded_by_a_later_run(tmp_path):
    pipe, call = tp.build_wan21()  # a (3, 10, 14) grid: the video regime
    call = {**call, "num_inference_steps": 10}
    path = tmp_path / "plan.json"
    options = dict(density=0.4, min_tokens=0, block_size=16, calibrate=str(path))
    dit_accel.enable_sparse_attention(pipe, "auto", **options)
    first = tp.run(pipe, call)
    report = dit_accel.sparse_attention_report(pipe)
    assert torch.isfinite(first).all()
    assert all(r["density"] == 1.0 for r in report.records if r["step"] == 0)  # the measured step
    assert all("calibration" in reason for reason in report.dense_reasons.values())
    n_blocks = -(-420 // 16)
    assert report.mean_density == pytest.approx(0.4, abs=1 / n_blocks)  # paid from the budget
    saved = json.loads(path.read_text())["grids"]["3x10x14/block16"]
    assert sorted(saved) == ["transformer.blocks.0.attn1", "transformer.blocks.1.attn1"]
    second = tp.run(pipe, call)  # a later generation of the same session: the plan, no measuring
    report = dit_accel.sparse_attention_report(pipe)
    assert report.dense_reasons == {}
    assert report.mean_density == pytest.approx(0.4, abs=1 / n_blocks)
    sparse = {}  # per layer, the densities of the sparse steps (dense ones count 1 for all layers)
    for r in report.records:
        if r["density"] < 1:
            sparse.setdefault(r["layer"], set()).add(round(r["density"], 6))
    assert all(len(d) == 1 for d in sparse.values())  # one calibrated budget per layer ...
    low, high = sorted(d.pop() for d in sparse.values())
    assert high - low >= 1 / (2 * n_blocks) - 1e-6  # ... and they differ: a block of one of 2 heads
    dit_accel.disable_sparse_attention(pipe)

    dit_accel.enable_sparse_attention(pipe, "auto", **options)  # a new run finds the plan
    assert torch.equal(tp.run(pipe, call), second)
    dit_accel.disable_sparse_attention(pipe)
    dit_accel.enable_sparse_attention(pipe, "auto", **{**options, "calibrate": False})
    assert not torch.equal(tp.run(pipe, call), second)  # without it: the uniform budget
    dit_accel.disable_sparse_attention(pipe)


def test_a_plan_from_another_model_or_not_a_plan_is_refused_with_the_path(tmp_path):
    pipe, call = tp.build_wan21()
    path = tmp_path / "plan.json"
    curves = [[0.5] * 27]  # one head: the tiny Wan has two
    path.write_text(
        json.dumps(
            {
                "format": "dit-accel calibration 1",
                "grids": {"3x10x14/block16": {"transformer.blocks.0.attn1": curves}},
            }
        )
    )
    dit_accel.enable_sparse_attention(pipe, "auto", min_tokens=0, block_size=16, calibrate=path)
    with pytest.raises(ValueError, match="measured on another model"):
        tp.run(pipe, call)
    dit_accel.disable_sparse_attention(pipe)
    path.write_text("{}")
    dit_accel.enable_sparse_attention(pipe, "auto", min_tokens=0, block_size=16, calibrate=path)
    with pytest.raises(ValueError, match="not a dit-accel calibration file"):
        tp.run(pipe, call)
    dit_accel.disable_sparse_attention(pipe)


@pytest.mark.parametrize("value", [3, "", None, 0.5])
def test_bad_calibrate_values_are_refused(value):
    with pytest.raises(ValueError, match=re.escape("calibrate must be True, False or the path")):
        AutoConfig(calibrate=value)


def test_calibrated_counts_keep_the_touching_blocks_or_below_them_the_grids_order():
    from dit_accel.methods.auto import _calibrated_blocks
    from dit_accel.methods.curve_order import block_neighbours
    from dit_accel.methods.topk import top_k_mask

    grid = (1, 32, 32)  # 64 curve blocks of 16
    near = block_neighbours(grid, 16)
    near_blocks = float(near.sum(-1).float().mean())
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 64, 64, generator=g)
    counts = torch.tensor([4, 16, 40]).view(1, -1, 1, 1)  # below the neighbourhood, above, far above
    assert near_blocks > 4
    mask = _calibrated_blocks(scores, near, near_blocks, counts, near_first=True)
    assert mask[:, 0].sum(-1).eq(4).all()  # neighbours first, exactly the count
    assert (mask[:, 0, near.sum(-1) <= 4] >= near[near.sum(-1) <= 4]).all()
    plain = _calibrated_blocks(scores, near, near_blocks, counts, near_first=False)  # video grids
    assert torch.equal(plain[:, 0], top_k_mask(scores[:, 0], 4))  # below it: plain top-k
    assert torch.equal(plain[:, 1:], mask[:, 1:])
    for head, count in ((1, 16), (2, 40)):
        assert (mask[:, head] >= near).all()
        assert abs(float(mask[:, head].float().sum(-1).mean()) - count) <= 1
