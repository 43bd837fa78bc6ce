"""Sparse attention combined with the rest of diffusers: torch.compile, group offloading, caching hooks.

What is tested here is correctness: each combination runs, and its output equals (compile,
offloading) or stays close to (caching) what each feature gives alone. Under torch.compile the
attention backend is one custom op: compiled blocks have no graph break (``fullgraph=True``) and
share one graph.
"""

from __future__ import annotations

import ast
import contextlib
import io

import pytest
import tiny_pipelines as tp
import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import dit_accel  # noqa: F401  (adds enable_sparse_attention to pipelines)
from dit_accel.config import resolve_config
from dit_accel.context import CURRENT_CALL, CallContext, LayerContext, register_layer, unregister_layer
from dit_accel.patches.backend import ACTIVE_SESSION
from dit_accel.regional_compile import compile_blocks
from dit_accel.session import SparseSession


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


EVERY_METHOD = {
    "dense": dict(),
    "window3d": dict(window=(1, 4, 4)),
    "vmoba": dict(),
    "rettention": dict(sparsity=0.2),
    "rectified": dict(dense_steps=0, dense_layers=()),
    "freeswim": dict(base_resolution=(80, 112)),
}


def _records(report) -> list[tuple]:
    return [(r["transformer"], r["layer"], r["step"], r["cfg_branch"]) for r in report.records]


@pytest.fixture
def dynamo():
    """Dynamo's counters and caches, fresh for the test and reset after it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def _eager_then_compiled(pipe, kwargs, compile_transformer, method: str, **options) -> tuple[list, object]:
    """Run eagerly, compile with ``compile_transformer(transformer)``, run again: the compiled
    output must equal the eager one. Returns the eager records and the compiled run's report."""
    pipe.enable_sparse_attention(method, block_size=16, **options)
    eager = tp.run(pipe, kwargs)
    eager_records = _records(pipe.sparse_attention_report())
    compile_transformer(pipe.transformer)
    try:
        compiled = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        pipe.disable_sparse_attention()
    assert torch.isfinite(compiled).all() and rel(compiled, eager) < 1e-6
    return eager_records, report


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_compiled_transformer_equals_eager_without_graph_breaks(method, dynamo):
    pipe, kwargs = tp.build_wan21()
    eager_records, report = _eager_then_compiled(
        pipe, kwargs, lambda t: t.compile(backend="aot_eager"), method, **EVERY_METHOD[method]
    )
    assert dict(dynamo["graph_break"]) == {}
    assert dynamo["stats"]["unique_graphs"] >= 1  # it did compile
    # Every routed layer reported under its own name at every step, as in eager mode.
    assert _records(report) == eager_records


def test_sparse_attention_enabled_on_a_torch_compile_wrapper(dynamo):
    """``pipe.transformer = torch.compile(pipe.transformer)``, then enable: the wrapped model is patched."""
    pipe, kwargs = tp.build_wan21()
    stock = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    eager = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    compiled = tp.run(pipe, kwargs)
    density = pipe.sparse_attention_report().mean_density
    pipe.disable_sparse_attention()
    assert rel(compiled, eager) < 1e-6 and 0 < density < 1
    assert dict(dynamo["graph_break"]) == {}
    assert rel(tp.run(pipe, kwargs), stock) < 1e-6  # disabled through the wrapper


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_regionally_compiled_blocks_share_one_graph_without_breaks(method, dynamo):
    """diffusers' regional compilation with ``fullgraph=True``: a graph break would raise."""
    pipe, kwargs = tp.build_wan21()
    _, report = _eager_then_compiled(
        pipe,
        kwargs,
        lambda t: t.compile_repeated_blocks(fullgraph=True, backend="aot_eager"),
        method,
        **EVERY_METHOD[method],
    )
    # One graph for all blocks: the layer is a graph input, not a per-block constant.
    assert dynamo["stats"]["unique_graphs"] == 1
    assert {r["layer"] for r in report.records} == {f"blocks.{i}.attn1" for i in range(2)}


@pytest.mark.parametrize("family", ["hunyuan_video", "cogvideox", "pixart_alpha"])
def test_compiled_blocks_without_breaks_in_every_family(family, dynamo):
    """``regional_compile.compile_blocks`` (``fullgraph=True``; the render command's ``--compile``)."""
    pipe, kwargs = tp.BUILDERS[family]()
    compiled_blocks = []

    def compile_all(transformer) -> None:
        compiled_blocks.append(compile_blocks(transformer, backend="aot_eager"))

    _, report = _eager_then_compiled(pipe, kwargs, compile_all, "window3d", window=(1, 4, 4))
    assert 0 < report.mean_density < 1
    blocks = [
        b
        for name in ("transformer_blocks", "single_transformer_blocks")
        for b in getattr(pipe.transformer, name, ())
    ]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert compiled_blocks[0] >= len(blocks)  # HunyuanVideo also declares its token refiner blocks


def test_compile_blocks_refuses_a_model_without_blocks():
    with pytest.raises(ValueError, match="no repeated blocks"):
        compile_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_attention_op_fake_matches_real(method, dtype):
    """torch.library.opcheck: schema, fake implementation (shape, dtype, strides), AOT dispatch,
    with a method serving the call (a 3x10x14 Wan grid, text-free self-attention)."""
    config = resolve_config(method, block_size=16, **EVERY_METHOD[method])
    session = SparseSession(config)
    call = CallContext((3, 10, 14), "none", 1, 4, "cond", "transformer")
    key = register_layer(LayerContext("blocks.0.attn1", 0))
    q, k, v = (torch.randn(1, 420, 2, 16, dtype=dtype) for _ in range(3))
    tokens = (ACTIVE_SESSION.set(session), CURRENT_CALL.set(call))
    try:
        result = torch.library.opcheck(
            torch.ops.dit_accel.attention.default, (q, k, v, None, 0.0, False, None, False, key)
        )
    finally:
        CURRENT_CALL.reset(tokens[1])
        ACTIVE_SESSION.reset(tokens[0])
        unregister_layer(key)
    assert set(result.values()) == {"SUCCESS"}, result
    assert session.records, "the method did not serve the call"


def test_attention_op_is_kept_out_of_cuda_graphs():
    """Its Python (step counts, per-grid layouts) must run on every call, never be replayed."""
    assert torch.Tag.cudagraph_unsafe in torch.ops.dit_accel.attention.default.tags


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_group_offloading_gives_the_same_output(method):
    pipe, kwargs = tp.build_wan21()
    options = dict(block_size=16, **EVERY_METHOD[method])
    pipe.enable_sparse_attention(method, **options)
    plain = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    pipe.transformer.enable_group_offload(
        onload_device=torch.device("cpu"),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
    )
    pipe.enable_sparse_attention(method, **options)
    offloaded = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    assert torch.equal(offloaded, plain)


def _offload(pipe, kind: str) -> None:
    if kind == "model":
        pipe.enable_model_cpu_offload(device="cpu")
        return
    # What enable_sequential_cpu_offload does to each component, with the CPU as execution device.
    # The pipeline method itself names the device "cpu:0", on which accelerate 1.15 fails to move
    # Conv3d weights back to the meta device (with or without dit-accel); on a GPU it is "cuda:0".
    from accelerate import cpu_offload

    cpu_offload(pipe.transformer, torch.device("cpu"), offload_buffers=len(pipe.transformer._parameters) > 0)


@pytest.mark.parametrize("sparse_first", [False, True])
@pytest.mark.parametrize("offload", ["model", "sequential"])
@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_cpu_offload_gives_the_same_output(method, offload, sparse_first):
    """accelerate-based offloading. Sequential offload keeps the weights on the meta device and
    loads them for each module call; the method's layer hooks and state must not notice."""
    pipe, kwargs = tp.build_wan21()
    options = dict(block_size=16, **EVERY_METHOD[method])
    pipe.enable_sparse_attention(method, **options)
    plain = tp.run(pipe, kwargs)
    if not sparse_first:
        pipe.disable_sparse_attention()
    _offload(pipe, offload)
    if not sparse_first:
        pipe.enable_sparse_attention(method, **options)
    offloaded = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    if offload == "sequential":
        assert pipe.transformer.blocks[0].attn1.to_q.weight.device.type == "meta"
    assert torch.equal(offloaded, plain)
    assert len(report.records) > 0


def test_model_offload_with_compiled_blocks(dynamo):
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    plain = tp.run(pipe, kwargs)
    pipe.enable_model_cpu_offload(device="cpu")
    compile_blocks(pipe.transformer, backend="aot_eager")
    try:
        assert torch.equal(tp.run(pipe, kwargs), plain)
    finally:
        pipe.disable_sparse_attention()


def _caches(pipe):
    return {
        "first_block_cache": FirstBlockCacheConfig(threshold=0.2),
        "pyramid_attention_broadcast": PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
        "taylorseer": TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1),
    }


@pytest.mark.parametrize("cache", ["first_block_cache", "pyramid_attention_broadcast", "taylorseer"])
def test_caching_hooks_with_a_stateful_method(cache):
    """Finite, within a few times each feature's own error of dense, and the step count is right."""
    pipe, kwargs = tp.build_wan21()
    kwargs = dict(kwargs, num_inference_steps=6)
    dense = tp.run(pipe, kwargs)
    options = dict(block_size=16, sparsity=0.2)
    pipe.enable_sparse_attention("rettention", **options)
    sparse = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    pipe.transformer.enable_cache(_caches(pipe)[cache])
    try:
        cached = tp.run(pipe, kwargs)
        pipe.enable_sparse_attention("rettention", **options)
        both = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
        pipe.disable_sparse_attention()
    finally:
        pipe.transformer.disable_cache()
    assert torch.isfinite(both).all()
    assert rel(both, dense) <= 2 * (rel(sparse, dense) + rel(cached, dense)) + 1e-6
    # Skipped blocks or steps do not shift the step count: the method sees steps 0..5.
    assert sorted({r["step"] for r in report.records}) == list(range(6))


@pytest.mark.parametrize("regional", [False, True])
def test_torch_compile_recompiles_only_when_the_grid_changes(regional):
    from torch._dynamo.utils import counters

    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    torch._dynamo.reset()
    if regional:
        compile_blocks(pipe.transformer, backend="aot_eager", dynamic=False)
    else:
        pipe.transformer.compile(backend="aot_eager", dynamic=False)
    try:
        graphs = []
        for size in ((160, 224), (160, 224), (192, 224), (192, 224)):
            tp.run(pipe, dict(kwargs, height=size[0], width=size[1]))
            graphs.append(counters["stats"]["unique_graphs"])
    finally:
        pipe.disable_sparse_attention()
        torch._dynamo.reset()
    assert graphs[1] == graphs[0] and graphs[3] == graphs[2] > graphs[1], graphs


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_first_block_cache_with_every_method(method):
    pipe, kwargs = tp.build_wan21()
    kwargs = dict(kwargs, num_inference_steps=6)
    dense = tp.run(pipe, kwargs)
    options = dict(block_size=16, **EVERY_METHOD[method])
    pipe.enable_sparse_attention(method, **options)
    sparse = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    try:
        cached = tp.run(pipe, kwargs)
        pipe.enable_sparse_attention(method, **options)
        both = tp.run(pipe, kwargs)
        pipe.disable_sparse_attention()
    finally:
        pipe.transformer.disable_cache()
    assert torch.isfinite(both).all()
    assert rel(both, dense) <= 2 * (rel(sparse, dense) + rel(cached, dense)) + 1e-6


def _mag_ratios(pipe, kwargs) -> list[float]:
    """MagCache's calibration run (dense, nothing skipped); it prints the ratios per CFG branch."""
    pipe.transformer.enable_cache(
        MagCacheConfig(calibrate=True, num_inference_steps=kwargs["num_inference_steps"])
    )
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            tp.run(pipe, kwargs)
    finally:
        pipe.transformer.disable_cache()
    lists = [ast.literal_eval(line) for line in printed.getvalue().splitlines() if line.startswith("[1")]
    assert lists and len(lists[0]) == kwargs["num_inference_steps"], printed.getvalue()
    return lists[0]


@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_mag_cache_with_every_method(method):
    """MagCache skips whole steps' blocks; the methods' step count follows the pipeline's steps."""
    pipe, kwargs = tp.build_wan21()
    steps = 8
    kwargs = dict(kwargs, num_inference_steps=steps)
    dense = tp.run(pipe, kwargs)
    options = dict(block_size=16, **EVERY_METHOD[method])
    pipe.enable_sparse_attention(method, **options)
    sparse = tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()
    config = MagCacheConfig(threshold=0.05, num_inference_steps=steps, mag_ratios=_mag_ratios(pipe, kwargs))
    ran: list[int] = []  # denoising steps at which the blocks ran

    def block_ran(module, args):
        ran.append(list(pipe.scheduler.timesteps).index(pipe.current_timestep))

    hook = pipe.transformer.blocks[0].norm2.register_forward_pre_hook(block_ran)
    pipe.transformer.enable_cache(config)
    try:
        cached = tp.run(pipe, kwargs)
        cached_calls = len(ran)
        ran.clear()
        pipe.enable_sparse_attention(method, **options)
        both = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
        pipe.disable_sparse_attention()
    finally:
        pipe.transformer.disable_cache()
        hook.remove()
    assert cached_calls < 2 * steps  # MagCache did skip
    assert torch.isfinite(both).all()
    assert rel(both, dense) <= 2 * (rel(sparse, dense) + rel(cached, dense)) + 1e-6
    assert {r["step"] for r in report.records} == set(ran)


def test_two_pipelines_in_two_threads_give_their_own_results():
    """Layer, call and session context are per thread: concurrent generations do not mix."""
    import threading

    runs = {}
    for name, method, options in (
        ("a", "window3d", dict(window=(1, 4, 4))),
        ("b", "rettention", dict(sparsity=0.2)),
    ):
        pipe, kwargs = tp.build_wan21(seed=1 if name == "b" else 0)
        pipe.enable_sparse_attention(method, block_size=16, **options)
        runs[name] = (pipe, kwargs, tp.run(pipe, kwargs))
    results, errors = {}, []

    def generate(name: str) -> None:
        pipe, kwargs, _ = runs[name]
        try:
            for _ in range(2):
                results.setdefault(name, []).append(tp.run(pipe, kwargs))
        except Exception as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=generate, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pipe, _, _ in runs.values():
        pipe.disable_sparse_attention()
    assert not errors, errors
    for name, (_, _, alone) in runs.items():
        assert all(torch.equal(out, alone) for out in results[name])


def test_gpu_compile_check_script_runs_on_the_cpu():
    """scripts/gpu_compile_check.py (the second GPU call) cannot rot: every method, aot_eager."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_compile_check.py", "cpu"],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "aot_eager" in line]
    assert {r.split("|")[1].strip() for r in rows} == EVERY_METHOD.keys() - {"dense"}
    assert "compile check: ok" in proc.stdout
