"""The foundation's contract on every supported family, with tiny random-weight pipelines."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

import dit_accel
from dit_accel import DenseConfig, Window3DConfig
from dit_accel.context import LAYER_KEY_ATTR

NAMES = list(tp.BUILDERS)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    """(name, pipe, kwargs, stock output) built once per family; tests leave the pipe disabled."""
    pipe, kwargs = tp.BUILDERS[request.param]()
    stock = tp.run(pipe, kwargs)
    yield request.param, pipe, kwargs, stock
    pipe.disable_sparse_attention()


def test_dense_method_matches_stock_pipeline(built):
    name, pipe, kwargs, stock = built
    pipe.enable_sparse_attention("dense")
    try:
        out = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        pipe.disable_sparse_attention()
    assert rel_l2(out, stock) < 1e-5
    assert report.records, "no attention call went through dit-accel"
    assert report.mean_density == 1.0


def test_dense_through_block_kernel_matches_stock_pipeline(built):
    name, pipe, kwargs, stock = built
    pipe.enable_sparse_attention(DenseConfig(use_block_kernel=True, block_size=16))
    try:
        out = tp.run(pipe, kwargs)
    finally:
        pipe.disable_sparse_attention()
    assert rel_l2(out, stock) < 1e-5


def test_window_covering_the_grid_equals_dense(built):
    name, pipe, kwargs, stock = built
    # Per-row rectification is exact when nothing is dropped. The video default (the residual)
    # is not: Re-ttention's drift scales rows by 1 + 0.04 per sparse step since the refresh.
    pipe.enable_sparse_attention("window3d", block_size=16, window=(64, 64, 64), correction="rectify")
    try:
        out = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        pipe.disable_sparse_attention()
    assert report.mean_density == 1.0
    assert rel_l2(out, stock) < 1e-5


def test_small_window_is_sparse_and_finite(built):
    name, pipe, kwargs, stock = built
    # correction="rectify": every call sparse (the video default refreshes densely every 5 steps)
    pipe.enable_sparse_attention(Window3DConfig(block_size=16, window=(1, 4, 4), correction="rectify"))
    try:
        out = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        pipe.disable_sparse_attention()
    assert torch.isfinite(out).all()
    assert report.mean_density < 0.5
    assert all(r["density"] < 1 for r in report.records)
    # The sparse layout really changed the computation.
    assert rel_l2(out, stock) > 1e-4


def test_disable_restores_bit_identical_outputs(built):
    name, pipe, kwargs, stock = built
    processors = {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    state_keys = list(pipe.transformer.state_dict())
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    tp.run(pipe, kwargs)
    assert list(pipe.transformer.state_dict()) == state_keys  # layer keys are not weights
    pipe.disable_sparse_attention()
    assert torch.equal(tp.run(pipe, kwargs), stock)
    after = {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is p for n, p in processors.items())
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer._forward_hooks
    for module in pipe.transformer.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert not hasattr(module, LAYER_KEY_ATTR)
    assert "cache_context" not in vars(pipe.transformer)


def test_disabled_pipeline_equals_a_never_patched_one(built):
    name, pipe, kwargs, stock = built
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    pipe.disable_sparse_attention()
    fresh, fresh_kwargs = tp.BUILDERS[name]()
    assert torch.equal(tp.run(pipe, kwargs), tp.run(fresh, fresh_kwargs))


def test_context_reports_grid_steps_and_layers(built):
    name, pipe, kwargs, stock = built
    spec = tp.SPECS[name]
    seen = []
    from dit_accel import context as ctx_module

    original = dit_accel.methods.window3d.Window3D.attend

    def spy(self, q, k, v, *, scale, key_padding_mask, context):
        seen.append(context)
        return original(self, q, k, v, scale=scale, key_padding_mask=key_padding_mask, context=context)

    dit_accel.methods.window3d.Window3D.attend = spy
    try:
        pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
        tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        dit_accel.methods.window3d.Window3D.attend = original
        pipe.disable_sparse_attention()
    assert ctx_module.current_context() is None
    assert {c.call.grid for c in seen} == {spec["token_grid"]}
    steps = kwargs["num_inference_steps"]
    assert sorted({c.call.step_index for c in seen}) == list(range(steps))
    layers = {c.layer.name for c in seen}
    assert spec["self_attn"] in layers
    if spec["cross_attn"]:
        assert spec["cross_attn"] not in layers
    # Every routed layer runs once per transformer call.
    assert len(report.records) == len(seen)


@pytest.mark.parametrize("name", ["wan21", "hunyuan_video"])
def test_cfg_branches_come_from_cache_context(name):
    pipe, kwargs = tp.BUILDERS[name]()
    pipe.enable_sparse_attention("dense")
    tp.run(pipe, kwargs)
    records = pipe.sparse_attention_report().records
    pipe.disable_sparse_attention()
    for step in range(kwargs["num_inference_steps"]):
        assert {r["cfg_branch"] for r in records if r["step"] == step} == {"cond", "uncond"}


def test_wan22_patches_both_experts_with_one_step_count():
    pipe, kwargs = tp.build_wan22()
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    tp.run(pipe, kwargs)
    records = pipe.sparse_attention_report().records
    pipe.disable_sparse_attention()
    by_transformer = {}
    for r in records:
        by_transformer.setdefault(r["transformer"], set()).add(r["step"])
    assert set(by_transformer) == {"transformer", "transformer_2"}
    assert by_transformer["transformer"].isdisjoint(by_transformer["transformer_2"])
    assert by_transformer["transformer"] | by_transformer["transformer_2"] == set(
        range(kwargs["num_inference_steps"])
    )


def test_new_generation_starts_fresh_records():
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention("dense")
    tp.run(pipe, kwargs)
    first = len(pipe.sparse_attention_report().records)
    tp.run(pipe, kwargs, seed=1)
    second = pipe.sparse_attention_report().records
    pipe.disable_sparse_attention()
    assert len(second) == first
    assert sorted({r["step"] for r in second}) == list(range(kwargs["num_inference_steps"]))


def test_hunyuan_padded_text_keys_are_ignored_by_window3d():
    pipe, kwargs = tp.build_hunyuan_video()
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    out = tp.run(pipe, kwargs)
    calls = []

    def perturb_padding(module, args, kwargs_):
        mask = kwargs_["encoder_attention_mask"]
        enc = kwargs_["encoder_hidden_states"].clone()
        enc[~mask.bool()] = 1e3
        kwargs_["encoder_hidden_states"] = enc
        calls.append(1)
        return args, kwargs_

    handle = pipe.transformer.register_forward_pre_hook(perturb_padding, with_kwargs=True, prepend=True)
    try:
        perturbed = tp.run(pipe, kwargs)
    finally:
        handle.remove()
        pipe.disable_sparse_attention()
    assert calls
    assert rel_l2(perturbed, out) < 1e-5


def test_enabling_twice_and_switching_methods():
    pipe, kwargs = tp.build_wan21()
    stock = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    sparse = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("dense")
    dense = tp.run(pipe, kwargs)
    assert pipe.sparse_attention_report().method == "dense"
    assert len(pipe.transformer._forward_pre_hooks) == 1
    pipe.disable_sparse_attention()
    pipe.disable_sparse_attention()
    assert rel_l2(dense, stock) < 1e-5
    assert rel_l2(sparse, stock) > 1e-4
    assert torch.equal(tp.run(pipe, kwargs), stock)


def test_enable_after_model_cpu_offload():
    pipe, kwargs = tp.build_wan21()
    stock = tp.run(pipe, kwargs)
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.enable_sparse_attention("dense")
    out = tp.run(pipe, kwargs)
    records = pipe.sparse_attention_report().records
    pipe.disable_sparse_attention()
    assert records
    assert rel_l2(out, stock) < 1e-5
    assert torch.equal(tp.run(pipe, kwargs), stock)


def test_bare_transformer_functions():
    pipe, kwargs = tp.build_wan21()
    stock = tp.run(pipe, kwargs)
    dit_accel.enable_sparse_attention(
        pipe.transformer, "window3d", block_size=16, window=(1, 4, 4), correction=None
    )
    sparse = tp.run(pipe, kwargs)
    report = dit_accel.sparse_attention_report(pipe.transformer)
    dit_accel.disable_sparse_attention(pipe.transformer)
    assert report.mean_density < 0.5
    assert rel_l2(sparse, stock) > 1e-4
    assert torch.equal(tp.run(pipe, kwargs), stock)


def test_dense_steps_and_dense_layers_keep_those_calls_exact():
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention(
        "window3d", block_size=16, window=(1, 4, 4), dense_steps=1, dense_layers=[1], correction=None
    )
    tp.run(pipe, kwargs)
    records = pipe.sparse_attention_report().records
    pipe.disable_sparse_attention()
    for r in records:
        expected_dense = r["step"] == 0 or r["layer_index"] == 1
        assert (r["density"] == 1.0) == expected_dense, r


def test_per_token_timesteps_of_wan22_ti2v_count_steps():
    """Wan 2.2 TI2V-5B passes a (batch, tokens) timestep; its largest value marks the step."""
    pipe, _ = tp.build_wan21()
    transformer = pipe.transformer
    grid = tp.SPECS["wan21"]["token_grid"]
    latents = torch.randn(1, 16, grid[0], grid[1] * 2, grid[2] * 2)
    text = torch.randn(1, 16, transformer.config.text_dim)
    dit_accel.enable_sparse_attention(transformer, "dense")
    for t in (900.0, 600.0, 300.0):
        per_token = torch.full((1, grid[0] * grid[1] * grid[2]), t)
        per_token[:, : grid[1] * grid[2]] = 0.0  # the conditioning frame is clean
        with torch.no_grad():
            transformer(
                hidden_states=latents, timestep=per_token, encoder_hidden_states=text, return_dict=False
            )
    steps = [r["step"] for r in dit_accel.sparse_attention_report(transformer).records]
    dit_accel.disable_sparse_attention(transformer)
    assert steps == [0, 0, 1, 1, 2, 2]
