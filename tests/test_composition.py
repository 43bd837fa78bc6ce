"""One attention path: corrections compose with every planner, against float64 oracles."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch
from families import resolved

import dit_accel
from dit_accel import (
    RectifiedSpaAttnConfig,
    RectifyCorrection,
    RettentionCorrection,
    TopKConfig,
    VMoBAConfig,
    Window3DConfig,
)
from dit_accel.config import resolve_config
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.methods import build_method
from dit_accel.methods.corrections import rettention_phase


def context(grid, step=3, steps=10, layer=2, branch="cond"):
    call = CallContext(grid, "none", step, steps, branch, "transformer")
    return AttentionContext(call, LayerContext(f"blocks.{layer}.attn1", layer))


def inputs(n, seed, heads=2, dim=8):
    g = torch.Generator().manual_seed(seed)
    # A smooth-ish signal plus noise, so that pooled blocks mean something.
    base = torch.randn(1, n, heads, dim, generator=g, dtype=torch.float64).cumsum(1) / 4
    return tuple(base + torch.randn(1, n, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))


def per_row_oracle(q, k, v, valid, kept, block_q, block_k, scale):
    """Independent statement of per-row rectification in slot order, float64: each row attends its
    kept (real) keys exactly and adds every dropped key block as n_J copies of its mean real key
    and value. ``valid``: bool (slots,), False for padding slots."""
    _, n, heads, _ = q.shape
    out = torch.empty_like(q)
    n_kb = kept.shape[-1]
    for h in range(heads):
        for i in range(n):
            qb = i // block_q
            logits, values = [], []
            for j in range(n_kb):
                keys = torch.arange(j * block_k, min((j + 1) * block_k, n))
                keys = keys[valid[keys]]
                if len(keys) == 0:
                    continue
                if kept[0, h if kept.shape[1] > 1 else 0, qb, j]:
                    logits.append(scale * k[0, keys, h] @ q[0, i, h])
                    values.append(v[0, keys, h])
                else:
                    k_mean, v_mean = k[0, keys, h].mean(0), v[0, keys, h].mean(0)
                    log_count = torch.log(torch.tensor(float(len(keys)), dtype=torch.float64))
                    logits.append((scale * k_mean @ q[0, i, h] + log_count).view(1))
                    values.append(v_mean.view(1, -1))
            s = torch.cat(logits)
            p = torch.softmax(s, 0)
            out[0, i, h] = p @ torch.cat(values)
    return out


@pytest.mark.parametrize(
    "config",
    [
        TopKConfig(density=0.25, block_size=16, correction="rectify"),
        Window3DConfig(window=(2, 4, 4), block_size=16, correction=RectifyCorrection(gapr=False)),
        VMoBAConfig(
            block_size=16, scale_chunks=False, st_chunk_size=(1, 4, 4), threshold=0.3, correction="rectify"
        ),
    ],
    ids=["topk", "window3d", "vmoba"],
)
def test_per_row_rectify_on_any_planner_equals_the_oracle(config):
    grid = (2, 8, 8)
    q, k, v = inputs(128, seed=1)
    method = build_method(resolved(config, "Wan"))
    ctx = context(grid)
    out, density = method(q, k, v, scale=None, key_padding_mask=None, context=ctx)
    x, order, _ = method.prepare(q, k, v, 8**-0.5, None, ctx)
    plan = method.plan(x, ctx)
    kept = plan.layout.to_block_mask()
    oracle = per_row_oracle(x.q, x.k, x.v, x.video_ok[0], kept, x.block_q, x.block_k, x.scale)
    expected = order.from_slots(oracle)
    assert 0 < float(density) < 1
    assert float((out - expected).norm() / expected.norm()) < 1e-10


def test_rectify_lowers_the_error_of_every_planner_on_smooth_inputs():
    grid = (2, 8, 8)
    q, k, v = inputs(128, seed=2)
    dense = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * 8**-0.5, -1)
    dense = torch.einsum("bhqk,bkhd->bqhd", dense, v)
    for config in (TopKConfig(density=0.25, block_size=16), Window3DConfig(window=(2, 4, 4), block_size=16)):
        errors = []
        for correction in (None, "rectify"):
            method = build_method(resolved(config.replace(correction=correction), "Wan"))
            out, _ = method(q, k, v, scale=None, key_padding_mask=None, context=context(grid))
            errors.append(float((out - dense).norm() / dense.norm()))
        assert errors[1] < errors[0], (type(config).__name__, errors)


def test_rettention_on_a_static_window_follows_the_equations():
    """Re-ttention's correction on window3d's layout, step by step against float64 (spec 3.3-3.4)."""
    grid, steps = (2, 8, 8), 10
    correction = RettentionCorrection(warmup_fraction=0.2, refresh_every=3)
    method = build_method(Window3DConfig(window=(2, 4, 4), block_size=16, correction=correction))
    method_order = method.order(context(grid), torch.device("cpu"))
    tile_mask = method.layout(grid, 0, torch.device("cpu")).to_block_mask()[0, 0]
    slot_mask = tile_mask.repeat_interleave(16, 0).repeat_interleave(16, 1)
    inv = method_order.inverse
    allowed = slot_mask[inv][:, inv]  # token order
    g = torch.Generator().manual_seed(3)
    rho_cache = delta = None
    for step in range(steps):
        q, k, v = (torch.randn(1, 128, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
        out, density = method(q, k, v, scale=None, key_padding_mask=None, context=context(grid, step, steps))
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 8**-0.5
        p = torch.softmax(s, -1)
        o_full = torch.einsum("bhqk,bkhd->bqhd", p, v)
        rho = (p * allowed).sum(-1)
        o_s = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s.masked_fill(~allowed, -torch.inf), -1), v)
        kind, since = rettention_phase(step, steps, 0.2, 3)
        if kind in ("dense", "refresh"):
            expected = o_full
            if kind == "refresh":
                rho_cache, delta = rho, o_full - rho.transpose(1, 2)[..., None] * o_s
        else:
            expected = (rho_cache + 0.04 * (since - 1)).transpose(1, 2)[..., None] * o_s + delta
            assert float(density) < 1
        assert float((out - expected).norm() / expected.norm()) < 1e-10, (step, kind)


def test_rectifieds_own_correction_is_its_reference_rectification():
    grid = (2, 8, 8)
    q, k, v = inputs(128, seed=4)
    base = resolved(RectifiedSpaAttnConfig(block_size=16, sa_drop_rate=0.8, preset="reference"), "Wan")
    explicit = RectifyCorrection(mode="per_block", ipar=True, gapr=True, pooled_means="padded")
    outs = {}
    for name, correction in (("default", "default"), ("explicit", explicit), ("none", None)):
        method = build_method(base.replace(correction=correction))
        outs[name] = method(q, k, v, scale=None, key_padding_mask=None, context=context(grid, step=7))[0]
    plain = build_method(base.replace(ipar=False, gapr=False))
    outs["plain"] = plain(q, k, v, scale=None, key_padding_mask=None, context=context(grid, step=7))[0]
    assert torch.equal(outs["default"], outs["explicit"])
    assert torch.equal(outs["none"], outs["plain"])
    assert not torch.equal(outs["default"], outs["none"])


@pytest.mark.parametrize(
    ("method", "options", "reason"),
    [
        ("dense", {}, "drops nothing"),
        ("freeswim", {}, "twin branch is its correction"),
        ("vmoba", {"mode": "parity"}, "mode='fast'"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_reason(method, options, reason):
    pipe, _ = tp.build_wan21()
    with pytest.raises(ValueError, match=reason):
        dit_accel.enable_sparse_attention(pipe, method, correction="rectify", **options)
    # Nothing was installed: the pipeline is stock.
    assert getattr(pipe.transformer, "_dit_accel_session", None) is None


def test_unknown_correction_names_the_choices():
    with pytest.raises(ValueError, match="rectify"):
        TopKConfig(correction="per_row")


def test_composed_methods_run_on_a_pipeline_and_report_their_state():
    pipe, call = tp.build_wan21()
    stock = tp.run(pipe, call)
    results = {}
    composed = (
        ("vmoba", {"correction": "rectify"}),
        ("window3d", {"correction": "rettention", "window": (1, 4, 4)}),
    )
    for method, options in composed:
        dit_accel.enable_sparse_attention(pipe, method, block_size=16, **options)
        out = tp.run(pipe, call)
        results[method] = (out, dit_accel.sparse_attention_report(pipe))
        session = pipe.transformer._dit_accel_session
        assert len(session.cache) > 0  # orders and layouts were built once per grid ...
        dit_accel.disable_sparse_attention(pipe)
        assert len(session.cache) == 0 and len(session.method.state) == 0  # ... and freed on disable
        assert torch.isfinite(out).all() and not torch.equal(out, stock)
    assert results["window3d"][1].state_bytes > 0  # Re-ttention's rho and residual, per layer and branch
    assert results["vmoba"][1].state_bytes == 0
    assert all(report.mean_density < 1 for _, report in results.values())
    assert torch.equal(tp.run(pipe, call), stock)


def test_family_defaults_fill_the_correction_too():
    pipe, _ = tp.build_pixart_alpha()
    dit_accel.enable_sparse_attention(pipe, "window3d", block_size=16, correction="rettention")
    config = pipe.transformer._dit_accel_session.config
    dit_accel.disable_sparse_attention(pipe)
    assert isinstance(config.correction, RettentionCorrection)
    assert config.correction.warmup_fraction == pytest.approx(5 / 20)  # PixArt's reference warm-up
    assert config.dense_steps == 0 and config.dense_layers == ()


def test_the_reference_preset_restores_the_papers_fields_and_family_tables():
    ours = resolved(RectifiedSpaAttnConfig(), "Wan")
    paper = resolved(RectifiedSpaAttnConfig(preset="reference"), "Wan")
    assert (ours.rectify, ours.gapr, ours.pooled_means) == ("per_row", False, "valid")
    assert (paper.rectify, paper.gapr, paper.pooled_means) == ("per_block", True, "padded")
    assert (paper.dense_steps, paper.dense_layers, paper.first_frame) == (5, (0, 1), "curve")
    # A field given explicitly wins over the preset, also when it equals our default.
    assert RectifiedSpaAttnConfig(preset="reference", gapr=False).gapr is False
    assert RectifiedSpaAttnConfig(preset="reference").replace(gapr=False).gapr is False
    assert RectifiedSpaAttnConfig(preset="reference").replace(top_p=0.5).gapr is True
    assert RectifiedSpaAttnConfig(top_p=0.5).replace(preset="reference").gapr is True
    assert RectifiedSpaAttnConfig(gapr=False).replace(preset="reference").gapr is False
    assert resolve_config("rectified", preset="reference", top_p=0.5).rectify == "per_block"
    with pytest.raises(ValueError, match="preset must be one of"):
        RectifiedSpaAttnConfig(preset="paper")


@pytest.mark.parametrize(
    ("config", "warmed_up"),
    [
        (Window3DConfig(window=(2, 4, 4), block_size=16), True),
        (VMoBAConfig(block_size=16), False),
        (RectifiedSpaAttnConfig(block_size=16, dense_steps=0), True),
    ],
    ids=["window3d", "vmoba", "rectified"],
)
def test_video_grids_default_to_their_measured_correction_and_images_to_per_row_rectification(
    config, warmed_up
):
    from dit_accel.methods.corrections import VIDEO_CORRECTION, Rectify, Rettention, RettentionCorrection

    method = build_method(config)
    video, image = context((4, 8, 8)), context((1, 16, 16))
    assert isinstance(method.corrector_for(image), Rectify)
    assert isinstance(method.corrector_for(video), Rettention)  # the residual on every video grid
    if warmed_up:  # window3d, rectified: Re-ttention's own warm-up (30 % of 10 steps dense) first
        assert method.corrector_for(video).config == RettentionCorrection()
        assert [method.phase(context((4, 8, 8), step=s))[0] for s in (0, 2, 3)] == [
            "dense",
            "dense",
            "refresh",
        ]
    else:  # vmoba: refreshes from the first sparse step
        assert method.corrector_for(video).config == VIDEO_CORRECTION
        assert VIDEO_CORRECTION.warmup_fraction == 0.0
        assert method.phase(context((4, 8, 8), step=0)) == ("refresh", 0)
    for explicit in ("rectify", None):  # an explicit choice applies to every grid
        chosen = build_method(config.replace(correction=explicit))
        assert chosen.corrector_for(video) is chosen.corrector_for(image)
    reference = build_method(config.replace(preset="reference"))
    assert reference.corrector_for(video) is reference.corrector_for(image)
    if isinstance(config, RectifiedSpaAttnConfig):  # the paper's options ask for the paper's correction
        own = build_method(config.replace(rectify="per_block"))
        assert isinstance(own.corrector_for(video), Rectify)
