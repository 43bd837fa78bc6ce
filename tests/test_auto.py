"""``auto``: the budget is spent as promised, short sequences stay exactly dense, bad knobs refused."""

from __future__ import annotations

import re

import pytest
import tiny_pipelines as tp
import torch

import dit_accel
from dit_accel import AutoConfig
from dit_accel.methods.auto import MIN_SPARSE_DENSITY, VIDEO_WARMUP_SHARES, schedule, video_warmup_share


@pytest.mark.parametrize("density", [0.1, 0.25, 0.35, 0.5, 0.9])
@pytest.mark.parametrize("steps", [4, 20, 50])
def test_schedule_spends_exactly_the_budget(density, steps):
    warm, every, sparse = schedule(density, steps, 0.5, None)
    assert warm == int(0.5 * density * steps + 1e-9) and every == 0
    if sparse > MIN_SPARSE_DENSITY:
        assert (warm + (steps - warm) * sparse) / steps == pytest.approx(density)
    assert MIN_SPARSE_DENSITY <= sparse <= 1.0


@pytest.mark.parametrize(("density", "refresh_every"), [(0.35, 5), (0.5, 5), (0.25, 10), (0.6, 3)])
def test_schedule_pays_the_refresh_steps_from_the_budget(density, refresh_every):
    steps = 20
    warm, every, sparse = schedule(density, steps, 0.0, None, refresh_every)
    refreshes = len(range(warm, steps, every))
    assert warm == 0 and every == refresh_every  # the budget pays the most frequent refreshes
    assert (refreshes + (steps - refreshes) * sparse) / steps == pytest.approx(density)
    # unknown step count: the refreshes' share is 1 / refresh_every
    _, _, blind = schedule(density, None, 0.0, None, refresh_every)
    assert 1 / refresh_every + (1 - 1 / refresh_every) * blind == pytest.approx(density)


def test_a_small_budget_buys_fewer_refreshes_not_more_compute():
    # every 5 steps would cost 4 / 20 = 0.2 > 0.125: the interval grows until the budget pays it
    warm, every, sparse = schedule(0.125, 20, 0.0, None, 5)
    refreshes = len(range(0, 20, every))
    assert every > 5 and refreshes + MIN_SPARSE_DENSITY * (20 - refreshes) <= 0.125 * 20
    assert (refreshes + (20 - refreshes) * sparse) / 20 == pytest.approx(0.125)
    assert schedule(0.125, 20, 0.0, None, 2)[1] == every  # a shorter interval asked for: the same
    assert schedule(0.01, 20, 0.0, None, 5)[1:] == (20, MIN_SPARSE_DENSITY)  # one refresh at least


def test_schedule_keeps_a_caller_fixed_warmup_and_handles_unknown_step_counts():
    assert schedule(0.5, 10, 0.5, 0) == (0, 0, 0.5)
    assert schedule(0.5, 10, 0.5, 4) == (4, 0, pytest.approx(1 / 6))
    assert schedule(0.3, None, 0.5, None) == (0, 0, 0.3)
    assert schedule(0.3, 4, 0.5, 9) == (4, 0, 1.0)  # more dense steps than steps: all dense


def test_video_warmup_share_follows_the_measured_points_and_is_flat_outside_them():
    for budget, share in VIDEO_WARMUP_SHARES:
        assert video_warmup_share(budget) == pytest.approx(share)
    assert video_warmup_share(0.1) == VIDEO_WARMUP_SHARES[0][1] == 0.0  # small budgets: no warm-up
    assert video_warmup_share(1.0) == VIDEO_WARMUP_SHARES[-1][1]
    assert video_warmup_share(0.3) == pytest.approx(0.125)  # halfway between 0.25 and 0.35
    shares = [video_warmup_share(b / 100) for b in range(5, 101)]
    assert shares == sorted(shares)  # more budget never buys a smaller share


@pytest.mark.parametrize(
    ("grid", "density", "warm"), [((4, 8, 8), 0.5, 5), ((4, 8, 8), 0.25, 0), ((1, 16, 16), 0.5, 0)]
)
def test_auto_warms_up_video_grids_by_budget_and_leaves_images_without(grid, density, warm):
    from dit_accel.context import AttentionContext, CallContext, LayerContext

    method = dit_accel.methods.build_method(AutoConfig(block_size=16, density=density, min_tokens=0))
    phases = [
        method.phase(AttentionContext(CallContext(grid, "none", s, 20, "cond", "t"), LayerContext("b", 0)))[0]
        for s in range(20)
    ]
    # 20 steps: 0.5 x 0.5 x 20 = 5 dense warm-up steps on video, then the residual's first refresh.
    assert phases[:warm] == ["dense"] * warm and phases[warm] != "dense"
    explicit = dit_accel.methods.build_method(
        AutoConfig(block_size=16, density=density, min_tokens=0, warmup_share=0.0)
    )
    context = AttentionContext(CallContext(grid, "none", 0, 20, "cond", "t"), LayerContext("b", 0))
    assert explicit._schedule(context)[0] == 0  # an explicit share wins


def test_auto_is_the_default_method_and_leaves_short_sequences_exactly_dense():
    pipe, call = tp.build_wan21()  # 420 video tokens, far below any break-even
    stock = tp.run(pipe, call)
    report = dit_accel.enable_sparse_attention(pipe)
    assert isinstance(report.config, AutoConfig)
    assert torch.equal(tp.run(pipe, call), stock)
    report = dit_accel.sparse_attention_report(pipe)
    assert report.mean_density == 1.0
    reason = next(iter(report.dense_reasons.values()))
    assert "420 video tokens < min_tokens=8192" in reason
    assert "dense by policy" in str(report)
    dit_accel.disable_sparse_attention(pipe)


def test_auto_on_a_video_grid_spends_its_budget_on_warmup_refreshes_and_sparse_steps():
    pipe, call = tp.build_wan21()  # a (3, 10, 14) grid: the video regime
    call = {**call, "num_inference_steps": 12}
    dit_accel.enable_sparse_attention(
        pipe, "auto", density=0.5, min_tokens=0, warmup_share=0.25, block_size=16
    )
    out = tp.run(pipe, call)
    report = dit_accel.sparse_attention_report(pipe)
    assert torch.isfinite(out).all()
    warm, every, sparse = schedule(0.5, 12, 0.25, None, 5)
    assert (warm, every) == (1, 5)
    dense_steps = {0, 1, 6, 11}  # the warm-up, then a refresh every 5 steps
    by_step: dict[int, list[float]] = {}
    for r in report.records:
        by_step.setdefault(r["step"], []).append(r["density"])
    assert all(d == 1.0 for s in dense_steps for d in by_step[s])
    later = [d for s in range(12) if s not in dense_steps for d in by_step[s]]
    n_blocks = -(-420 // 16)  # tiles of 16 tokens cover the grid in at least this many blocks
    assert max(abs(d - sparse) for d in later) <= 1 / n_blocks + 1e-6
    assert report.mean_density == pytest.approx(0.5, abs=1 / n_blocks)
    assert report.dense_reasons == {}
    dit_accel.disable_sparse_attention(pipe)


def test_auto_picks_the_measured_regime_per_grid():
    from dit_accel.context import AttentionContext, CallContext, LayerContext
    from dit_accel.methods.corrections import Rectify, Rettention
    from dit_accel.methods.curve_order import block_neighbours, curve_order

    method = dit_accel.methods.build_method(AutoConfig(block_size=16, density=0.25, min_tokens=0))
    g = torch.Generator().manual_seed(0)
    for grid, corrector in (((4, 8, 8), Rettention), ((1, 16, 16), Rectify)):
        call = CallContext(grid, "none", 5, 10, "cond", "transformer")
        context = AttentionContext(call, LayerContext("blocks.0.attn1", 0))
        assert isinstance(method.corrector_for(context), corrector)
        q, k, v = (torch.randn(1, 256, 2, 8, generator=g) for _ in range(3))
        assert torch.equal(method.order(context, q.device).to_slots(q), curve_order(grid).to_slots(q))
        x, _, _ = method.prepare(q, k, v, 8**-0.5, None, context)
        mask = method.plan(x, context).layout.to_block_mask()
        near = block_neighbours(grid, 16)
        k_sparse = method.blocks_kept(16, method.target_density(context))
        assert near.sum(-1).float().mean() > k_sparse  # below the touching blocks' own share
        assert mask.sum(-1).eq(k_sparse).all()
        if grid[0] > 1:  # video: the refreshes' cost leaves the sparse steps under the budget
            assert method.target_density(context) < 0.25
            assert not (mask >= near).all()  # plain top-k: not the touching blocks first
        else:  # one frame: the touching blocks first, as far as the budget goes
            fits = near.sum(-1) <= k_sparse
            assert fits.any() and (mask[:, :, fits] >= near[fits]).all()
    explicit = dit_accel.methods.build_method(AutoConfig(block_size=16, min_tokens=0, correction="rectify"))
    assert isinstance(explicit.corrector_for(context), Rectify)
    call = CallContext((4, 8, 8), "none", 5, 10, "cond", "transformer")
    assert isinstance(explicit.corrector_for(AttentionContext(call, LayerContext("b", 0))), Rectify)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(density=0), "density must be None or lie in (0, 1]"),
        (dict(density=1.5), "density must be None or lie in (0, 1]"),
        (dict(min_tokens=-1), "min_tokens must be None or a non-negative integer"),
        (dict(warmup_share=1.0), "warmup_share must be None or lie in [0, 1)"),
    ],
)
def test_bad_budgets_are_refused_with_the_range(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AutoConfig(**options)


def _plan(grid, density, block=16, seed=0):
    from dit_accel.context import AttentionContext, CallContext, LayerContext

    method = dit_accel.methods.build_method(AutoConfig(block_size=block, density=density, min_tokens=0))
    call = CallContext(grid, "none", 5, 10, "cond", "transformer")
    context = AttentionContext(call, LayerContext("blocks.0.attn1", 0))
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(2, n, 2, 8, generator=g) for _ in range(3))
    x, _, _ = method.prepare(q, k, v, 8**-0.5, None, context)
    return method.plan(x, context).layout.to_block_mask(), method.target_density(context)


@pytest.mark.parametrize(("grid", "density"), [((1, 32, 32), 0.3), ((1, 32, 32), 0.5), ((2, 32, 16), 0.9)])
def test_the_touching_blocks_are_always_kept_and_the_mean_share_is_the_budget(grid, density):
    from dit_accel.methods.curve_order import block_neighbours

    # 1,024 tokens: 64 curve blocks of 16 (one frame: no warm-up; two frames: the sparse steps'
    # share of a 0.9 budget, above the touching blocks' own).
    mask, target = _plan(grid, density)
    near = block_neighbours(grid, 16)
    assert near.sum(-1).float().mean() < target * 64
    assert (mask >= near).all()
    assert abs(mask.float().sum(-1).mean() / 64 - target) <= 1 / 64
    assert mask.sum(-1).min() < mask.sum(-1).max()  # rows get what their neighbourhood leaves


def test_below_the_neighbourhoods_share_the_neighbours_come_first_in_exactly_the_budget():
    from dit_accel.methods.curve_order import block_neighbours

    grid = (1, 8, 16)  # one frame, 8 blocks, each touching about 5 of them: more than a budget of 4
    mask = _plan(grid, 0.5)[0][..., :8]
    near = block_neighbours(grid, 16)
    assert near.sum(-1).float().mean() > 4
    assert mask.sum(-1).eq(4).all()
    fits = near.sum(-1) <= 4
    assert fits.any() and (mask[:, :, fits] >= near[fits]).all()


def test_top_p_curves_count_what_the_top_p_rule_keeps_at_every_p():
    from dit_accel.methods.auto import P_GRID, _mass_after, _rank, _tail_at, _top_p_curve
    from dit_accel.methods.curve_order import block_neighbours
    from dit_accel.methods.pooling import top_p_with_floor

    grid = (4, 8, 8)
    near = block_neighbours(grid, 16)  # 16 curve blocks
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 16, 16, generator=g) * torch.tensor([0.3, 2.0, 6.0]).view(1, 3, 1, 1)
    curve = _top_p_curve(_mass_after(scores), _rank(scores), near)
    mass = torch.softmax(scores.double(), dim=-1)
    for i in range(P_GRID):  # the oracle: Rectified SpaAttn's rule with a floor of one block, float64
        kept = top_p_with_floor(mass, 1 - _tail_at(torch.tensor(float(i))).item(), 1) | near
        assert curve[i].item() == pytest.approx(kept.sum(-1).double().mean().item(), abs=1e-5)
    assert (curve.diff() >= 0).all() and curve[-1] == 16  # p = 1 keeps every block


def test_the_fitted_remaining_mass_interpolates_the_curve_and_stays_in_range():
    from dit_accel.methods.auto import P_GRID, _tail_at, _tail_for

    assert _tail_at(torch.tensor(0.0)) == 1 and _tail_at(torch.tensor(float(P_GRID))) == 0
    assert _tail_at(torch.tensor(8.0)) == 0.25  # halving every 4 points
    curve = torch.linspace(2, 18, P_GRID + 1)  # kept count 2 at p = 0, 18 at p = 1
    assert _tail_for(curve, 10.0).item() == pytest.approx(2.0 ** (-32 / 4))  # halfway: point 32
    assert _tail_for(curve, 2.125).item() == pytest.approx(2.0 ** (-0.5 / 4))
    assert _tail_for(curve, 1.0).item() == 1.0 and _tail_for(curve, 30.0).item() == 0.0


def _video_call(step: int, steps: int = 20):
    from dit_accel.context import CallContext

    return CallContext((4, 16, 16), "none", step, steps, "cond", "transformer")


def test_on_video_grids_one_p_spends_the_budget_over_the_layers_and_rows_that_need_it():
    from dit_accel.context import AttentionContext, LayerContext
    from dit_accel.methods.curve_order import block_neighbours

    method = dit_accel.methods.build_method(
        AutoConfig(block_size=16, density=0.9, warmup_share=0.0, min_tokens=0)
    )
    near = block_neighbours((4, 16, 16), 16)  # 64 curve blocks
    g = torch.Generator().manual_seed(0)
    sharp = torch.randn(1, 2, 64, 64, generator=g) * 3.0  # mass on a few blocks
    flat = torch.randn(1, 2, 64, 64, generator=g) * 0.05  # mass spread over every block
    contexts = [AttentionContext(_video_call(3), LayerContext(f"blocks.{i}.attn1", i)) for i in range(2)]
    target = method.target_density(contexts[0])
    assert near.sum(-1).float().mean() < target * 64  # the touching blocks fit
    for _ in range(2):  # the second pass plans each layer with both layers' latest curves
        masks = [method.video_blocks(s, c) for s, c in zip((sharp, flat), contexts, strict=True)]
    shares = [m.float().sum(-1).mean().item() / 64 for m in masks]
    assert all((m >= near).all() for m in masks)
    assert shares[0] < target < shares[1]  # the flat layer gets more than the budget, the sharp less
    assert sum(shares) / 2 == pytest.approx(target, abs=2 / 64)
    method.reset()  # a new generation forgets the curves
    assert method.curves == {}


def test_the_last_warmup_step_records_every_layers_curve_and_stays_exactly_dense():
    from dit_accel.context import AttentionContext, LayerContext
    from dit_accel.kernels import dense_attention

    method = dit_accel.methods.build_method(
        AutoConfig(block_size=16, density=0.9, min_tokens=0, dense_layers=(2,))
    )
    warm = method._schedule(AttentionContext(_video_call(0), LayerContext("b", 0)))[0]
    assert warm > 1
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1024, 2, 8, generator=g) for _ in range(3))
    for step in (warm - 2, warm - 1):
        for i in range(3):
            context = AttentionContext(_video_call(step), LayerContext(f"blocks.{i}.attn1", i))
            out, density = method.attend(q, k, v, scale=None, key_padding_mask=None, context=context)
            assert density == 1.0 and torch.equal(out, dense_attention(q, k, v, scale=8**-0.5))
        recorded = {key[2] for key in method.curves}
        # only the last warm-up step records, and not for a layer that stays dense
        assert recorded == (set() if step < warm - 1 else {"blocks.0.attn1", "blocks.1.attn1"})
