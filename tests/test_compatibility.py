"""Sparse attention combined with the rest of diffusers: torch.compile, group offloading, caching hooks.

What is tested here is correctness: each combination runs, and its output equals (compile,
offloading) or stays close to (caching) what each feature gives alone. Graph breaks under
torch.compile are documented in the README, not yet removed.
"""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch
from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

import dit_accel  # noqa: F401  (adds enable_sparse_attention to pipelines)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("method", "options"), [("window3d", dict(window=(1, 4, 4))), ("rectified", dict())])
def test_torch_compile_equals_eager(method, options):
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention(
        method, block_size=16, dense_steps=0, dense_layers=(), **options
    ) if method == ("rectified") else pipe.enable_sparse_attention(method, block_size=16, **options)
    eager = tp.run(pipe, kwargs)
    torch._dynamo.reset()
    pipe.transformer.compile(backend="aot_eager")
    try:
        compiled = tp.run(pipe, kwargs)
        report = pipe.sparse_attention_report()
    finally:
        pipe.disable_sparse_attention()
        torch._dynamo.reset()
    assert torch.isfinite(compiled).all() and rel(compiled, eager) < 1e-6
    assert 0 < report.mean_density < 1


EVERY_METHOD = {
    "dense": dict(),
    "window3d": dict(window=(1, 4, 4)),
    "vmoba": dict(),
    "rettention": dict(sparsity=0.2),
    "rectified": dict(dense_steps=0, dense_layers=()),
    "freeswim": dict(base_resolution=(80, 112)),
}


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


def test_torch_compile_recompiles_only_when_the_grid_changes():
    from torch._dynamo.utils import counters

    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention("window3d", block_size=16, window=(1, 4, 4))
    torch._dynamo.reset()
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
