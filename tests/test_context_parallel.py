"""Ulysses context parallelism with dit-accel's backend: two gloo processes on the CPU.

Each rank sees the whole sequence for half of the heads after diffusers' all-to-all, so a method's
per-head layouts stay right; the output must equal the single-process one. Ring attention is
refused. diffusers places each rank on accelerator ``rank % device_count()``, which is 0 on a
CPU-only machine: the workers count the CPU as one device (a test-only shim).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

METHODS = {
    # the bare window and rectification: their video defaults warm up densely for 30 % of the steps
    "window3d": dict(block_size=16, window=(1, 4, 4), correction=None),
    "vmoba": dict(block_size=16),
    "rectified": dict(block_size=16, dense_steps=0, dense_layers=(), correction="rectify"),
    "rettention": dict(block_size=16, sparsity=0.2, warmup_fraction=0.0),
    "freeswim": dict(block_size=16, base_resolution=(80, 112)),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, method: str, ring: bool, parallel_first: bool, results) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.accelerator.device_count = lambda: 1  # the CPU-only shim (see the module docstring)
    try:
        import tiny_pipelines as tp
        from diffusers import ContextParallelConfig

        import dit_accel

        pipe, _ = tp.build_wan21()
        transformer = pipe.transformer
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, 3, 20, 28, generator=g)
        text = torch.randn(1, 16, transformer.config.text_dim, generator=g)

        def two_steps() -> list[torch.Tensor]:  # a second step: Re-ttention's first sparse step
            return [transformer(x, torch.tensor([t]), text, return_dict=False)[0] for t in (500.0, 400.0)]

        dit_accel.enable_sparse_attention(transformer, method, **METHODS[method])
        single = two_steps()
        dit_accel.enable_sparse_attention(transformer, method, **METHODS[method])  # fresh state
        config = (
            ContextParallelConfig(ring_degree=world) if ring else ContextParallelConfig(ulysses_degree=world)
        )
        transformer.enable_parallelism(config=config)
        try:
            parallel = two_steps()
            density = dit_accel.sparse_attention_report(transformer).mean_density
            error = max(float((p - s).norm() / s.norm()) for p, s in zip(parallel, single, strict=True))
            outcome = ("ok", error, density)
        except NotImplementedError as error:
            outcome = ("refused", str(error), None)
        if rank == 0:
            results.put(outcome)
    except Exception as error:  # report anything else to the test instead of hanging it
        if rank == 0:
            results.put(("error", repr(error), None))
    finally:
        dist.destroy_process_group()


def _run(method: str, ring: bool = False, parallel_first: bool = False):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, 2, port, method, ring, parallel_first, results))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        return results.get(timeout=240)
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ulysses_equals_one_process(method):
    status, error, density = _run(method)
    assert status == "ok", error
    assert error < 1e-5 and 0 < density < 1, (error, density)


def test_parallelism_enabled_first_works_too():
    status, error, density = _run("window3d", parallel_first=True)
    assert status == "ok" and error < 1e-5 and density < 1, (status, error, density)


def test_ring_attention_is_refused():
    status, message, _ = _run("window3d", ring=True)
    assert status == "refused" and "ring attention" in message, message
