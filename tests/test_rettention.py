"""Re-ttention: schedule, the stateful ratio/residual correction against float64 equations, pipelines."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch
from benchmark_scripts import run_script
from families import resolved

from dit_accel import RettentionConfig
from dit_accel.context import AttentionContext, CallContext, LayerContext
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods.rettention import Rettention, phase


def test_pixart_schedule_matches_the_reference():
    kinds = [phase(s, 20, 5 / 20, 5) for s in range(20)]
    assert [k for k, _ in kinds] == ["dense"] * 5 + (["refresh"] + ["sparse"] * 4) * 3
    assert [since for k, since in kinds if k == "sparse"][:4] == [1, 2, 3, 4]


def test_cogvideox_schedule_matches_the_reference():
    kinds = [phase(s, 50, 15 / 50, 5)[0] for s in range(50)]
    assert kinds[:15] == ["dense"] * 15
    assert [s for s, k in enumerate(kinds) if k == "refresh"] == [15, 20, 25, 30, 35, 40, 45]
    assert kinds.count("sparse") == 28


def test_schedule_scales_with_the_number_of_steps():
    kinds = [phase(s, 40, 5 / 20, 5)[0] for s in range(40)]
    assert kinds[:10] == ["dense"] * 10 and kinds[10] == "refresh"


def _context(step, grid, layer="blocks.0.attn1", branch="cond", steps=20, family="PixArt"):
    return AttentionContext(
        CallContext(grid, "none", step, steps, branch, "transformer"), LayerContext(layer, 0)
    )


def _band_mask(n, sparsity):
    half = int(n * sparsity) // 2
    idx = torch.arange(n)
    return (idx[:, None] - idx[None, :]).abs() <= half


def _float64_reference(q, k, v, allowed):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    full = e.sum(-1)
    kept = (e * allowed).sum(-1)
    rho = kept / full
    o_full = torch.einsum("bhqk,bkhd->bqhd", e / full[..., None], v)
    o_s = torch.einsum("bhqk,bkhd->bqhd", e * allowed / kept[..., None], v)
    return rho, o_full, o_s


def test_twenty_step_run_follows_the_equations_step_by_step():
    """A stateful float64 re-statement of spec 3.3-3.4 against the method, PixArt's 20-step schedule."""
    g = torch.Generator()
    g.seed()
    grid, sparsity = (1, 6, 9), 0.25
    n = 54
    method = Rettention(resolved(RettentionConfig(sparsity=sparsity, block_size=16), "PixArt"))
    allowed = _band_mask(n, sparsity)[None, None]
    rho_cache = delta = None
    for step in range(20):
        q, k, v = (torch.randn(2, n, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
        out, density = method(q, k, v, scale=None, key_padding_mask=None, context=_context(step, grid))
        rho, o_full, o_s = _float64_reference(q, k, v, allowed)
        kind, since = phase(step, 20, 5 / 20, 5)
        if kind == "dense":
            expected = o_full
        elif kind == "refresh":
            rho_cache = rho
            delta = o_full - rho.transpose(1, 2)[..., None] * o_s
            expected = o_full
        else:
            r = (rho_cache + 0.04 * (since - 1)).transpose(1, 2)[..., None]
            expected = r * o_s + delta
            assert float(density) < 1
        assert float((out - expected).norm() / expected.norm()) < 1e-10, (step, kind)


def test_full_mask_gives_rho_one_and_no_residual():
    g = torch.Generator()
    g.seed()
    # A 3D window (video grid) at sparsity 1 spans the whole grid: the mask keeps every key.
    method = Rettention(resolved(RettentionConfig(sparsity=1.0, block_size=16), "Wan"))
    grid = (2, 4, 5)
    q, k, v = (torch.randn(1, 40, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    method(q, k, v, scale=None, key_padding_mask=None, context=_context(15, grid, steps=50, family="Wan"))
    state = method.state.get("transformer.blocks.0.attn1", "cond")
    assert torch.allclose(state["rho"], torch.ones_like(state["rho"]))
    assert float(state["delta"].abs().max()) < 1e-12
    out, _ = method(
        q, k, v, scale=None, key_padding_mask=None, context=_context(16, grid, steps=50, family="Wan")
    )
    assert float((out - dense_attention_torch(q, k, v).out).norm()) < 1e-10


def test_state_is_kept_per_branch_and_sized():
    method = Rettention(resolved(RettentionConfig(block_size=16, sparsity=0.25), "PixArt"))
    q = torch.randn(1, 54, 2, 8)
    for branch in ("cond", "uncond"):
        method(q, q, q, scale=None, key_padding_mask=None, context=_context(5, (1, 6, 9), branch=branch))
    assert len(method.state) == 2
    # rho (B, H, N) float32 + delta (B, N, H, D) in the activations' dtype, per branch.
    assert method.state.nbytes() == 2 * (2 * 54 * 4 + 54 * 2 * 8 * 4)


def test_state_can_live_on_the_cpu_in_low_precision():
    config = RettentionConfig(block_size=16, sparsity=0.25, state_dtype="bfloat16", state_device="cpu")
    method = Rettention(resolved(config, "PixArt"))
    q = torch.randn(1, 54, 2, 8)
    method(q, q, q, scale=None, key_padding_mask=None, context=_context(5, (1, 6, 9)))
    state = method.state.get("transformer.blocks.0.attn1", "cond")
    assert state["delta"].dtype == torch.bfloat16 and state["delta"].device.type == "cpu"
    assert state["rho"].dtype == torch.float32


def test_auto_state_device_leaves_a_quarter_of_the_gpu_free(monkeypatch):
    from dit_accel.methods.corrections import state_device

    gib = 2**30
    free = {"now": 30 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["now"], 80 * gib))
    cuda = torch.device("cuda", 0)
    assert state_device("auto", cuda, 9 * gib) == cuda  # 21 GiB left >= 20
    assert state_device("auto", cuda, 11 * gib).type == "cpu"  # 19 GiB left < 20
    free["now"] = 70 * gib
    assert state_device("auto", cuda, 11 * gib) == cuda
    assert state_device("same", cuda, 79 * gib) == cuda
    assert state_device("cpu", cuda, 1).type == "cpu"
    assert state_device("auto", torch.device("cpu"), 100 * gib).type == "cpu"  # never queries a GPU


@pytest.mark.parametrize("name", ["pixart_alpha", "pixart_sigma", "cogvideox", "wan21", "hunyuan_video"])
def test_tiny_pipelines_run_sparse_reset_and_restore(name):
    pipe, kwargs = tp.BUILDERS[name]()
    stock = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("rettention", block_size=16, sparsity=0.1, warmup_fraction=0.25)
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    session_method = pipe.transformer._dit_accel_session.method
    assert torch.isfinite(out).all()
    assert report.mean_density < 1 and report.state_bytes > 0
    # The residual makes sparse steps close to dense, but the computation did change.
    assert not torch.equal(out, stock)
    # A new generation never reuses stale state: the same call again gives the same output.
    assert torch.equal(tp.run(pipe, kwargs), out)
    pipe.disable_sparse_attention()
    assert len(session_method.state) == 0
    assert torch.equal(tp.run(pipe, kwargs), stock)


def test_switches_change_the_output():
    pipe, kwargs = tp.build_cogvideox()
    kwargs = dict(kwargs, num_inference_steps=6)  # warm-up 2, refresh 2, sparse 3-5: the drift shows
    outs = {}
    for options in ({}, {"use_ratio": False}, {"use_residual": False}, {"fix_text_rows": True}):
        pipe.enable_sparse_attention(
            "rettention", block_size=16, sparsity=0.1, warmup_fraction=0.25, **options
        )
        outs[tuple(options)] = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    base = outs[()]
    for key, out in outs.items():
        if key:
            assert not torch.equal(out, base), key


def test_gpu_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/bench_rettention.py is what runs on a lent GPU; the toy run keeps it from rotting."""
    run_script(
        "benchmarks/bench_rettention.py", "--toy", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path)
    )
    table = (tmp_path / "bench_rettention.md").read_text()
    assert "toy-video" in table and "toy-image" in table


def test_wan22_experts_keep_separate_state():
    """Both experts have layers named blocks.N.attn1; their cached statistics must not mix."""
    pipe, kwargs = tp.build_wan22()
    kwargs = dict(kwargs, num_inference_steps=8)
    pipe.enable_sparse_attention(
        "rettention", block_size=16, sparsity=0.1, warmup_fraction=0.25, refresh_every=2
    )
    tp.run(pipe, kwargs)
    keys = {layer for layer, _ in pipe.transformer._dit_accel_session.method.state._entries}
    pipe.disable_sparse_attention()
    assert any(k.startswith("transformer.") for k in keys) and any(
        k.startswith("transformer_2.") for k in keys
    )
