"""The Triton block-sparse kernel against the float64 oracle.

Triton kernels need TRITON_INTERPRET=1 in the environment before triton is imported to run on the
CPU; ``tests/conftest.py`` sets it for the whole session on machines without CUDA, so the kernel
tests below run in-process there and natively on a CUDA machine. The ahead-of-time sm_90 compile
test needs the interpreter off and runs itself in a subprocess. Every test draws fresh random inputs; the
seed is in every assertion message so that a failure can be replayed (``KERNEL_TEST_SEED=<seed>``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dit_accel.kernels import ElementMask, attention_with_stats, block_sparse_attention
from dit_accel.kernels.layout import BlockLayout, num_blocks
from dit_accel.kernels.reference import block_sparse_attention_torch, dense_attention_torch

REPO = Path(__file__).resolve().parents[1]
IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not IN_INTERPRETER
RUN_KERNELS = IN_INTERPRETER or ON_GPU
DEVICE = "cuda" if ON_GPU else "cpu"
HEAD_DIMS = (64, 72, 80, 96, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Relative L2 error vs float64. bf16 is the loosest: P is rounded to bf16 before P @ V (as in every
# flash kernel), and the interpreter truncates rather than rounds fp32 -> bf16.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except Exception:  # pragma: no cover - platforms without Triton
    HAVE_TRITON = False

kernel_test = pytest.mark.skipif(
    not (RUN_KERNELS and HAVE_TRITON),
    reason="needs CUDA, or TRITON_INTERPRET=1 (run via the subprocess test)",
)


# ------------------------------------------------------------------------------------- compile
@pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(
    "variant",
    [
        dict(
            kernel="sparse",
            dtype="bf16",
            head_dim=128,
            block_m=128,
            block_k=128,
            block_n=64,
            warps=8,
            stages=3,
        ),
        dict(
            kernel="sparse",
            dtype="fp16",
            head_dim=72,
            block_m=128,
            block_k=128,
            block_n=64,
            warps=8,
            stages=3,
            kpm=True,
            ndim=2,
        ),
        dict(
            kernel="sparse", dtype="fp32", head_dim=64, block_m=64, block_k=64, block_n=32, warps=4, stages=2
        ),
        dict(
            kernel="refresh",
            dtype="bf16",
            head_dim=128,
            block_m=64,
            block_k=128,
            block_n=64,
            warps=4,
            stages=3,
        ),
        dict(
            kernel="refresh",
            dtype="fp16",
            head_dim=72,
            block_m=64,
            block_k=128,
            block_n=64,
            warps=4,
            stages=3,
            kpm=True,
            ndim=2,
        ),
    ],
    ids=[
        "sparse-bf16-d128",
        "sparse-fp16-d72-masks",
        "sparse-fp32-d64",
        "refresh-bf16-d128",
        "refresh-fp16-d72-masks",
    ],
)
def test_compiles_for_sm90(variant):
    """Ahead-of-time compile for an H100 (no GPU needed): catches frontend/ptxas breakage and checks
    that the K/V loads are software-pipelined (cp.async), which needs the 16-byte alignment hints."""
    if IN_INTERPRETER:
        # The interpreter replaces triton.jit, so compile in a fresh process with it off.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(
            DIT_ACCEL_NO_INTERPRETER="1",
            PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        )
        selector = f"test_compiles_for_sm90 and {variant['kernel']}-{variant['dtype']}-d{variant['head_dim']}"
        cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", selector]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        assert proc.returncode == 0 and "1 passed" in last and "skipped" not in last, proc.stdout[-6000:]
        return
    import triton
    from triton.backends.compiler import GPUTarget

    from dit_accel.kernels import triton_attention as ta
    from dit_accel.kernels import triton_refresh as tr

    dtype = variant["dtype"]
    consts = dict(
        HEAD_DIM=variant["head_dim"],
        BLOCK_M=variant["block_m"],
        BLOCK_N=variant["block_n"],
        BLOCK_K=variant["block_k"],
        BLOCK_D=ta.block_d_for(variant["head_dim"]),
        HAS_KPM=variant.get("kpm", False),
        MASK_NDIM=variant.get("ndim", 0),
        DOT_F32=dtype == "fp32",
        ALIGN=4 if dtype == "fp32" else 8,
    )
    masks = {"KPM": "u8", "BOX_LO": "i32", "BOX_HI": "i32", "BOX_KC": "i32"}
    if variant["kernel"] == "sparse":
        fn = ta._sparse_attn_fwd
        consts.update(STORE_LSE=True, STORE_STATS=True)
        outs = {"Out": dtype, "LSE": "fp32", "RMAX": "fp32", "RSUM": "fp32"}
        lists = {"IDX": "i32", "CNT": "i32", "PART": "i8"}
        seq_strides = ["stride_qs", "stride_ks", "stride_vs", "stride_os"]
    else:
        fn = tr._refresh_fwd
        consts.update(BLOCK_Q=128)
        outs = {"OutFull": dtype, "OutKept": dtype, "RHO": "fp32"}
        lists = {"KIND": "i8"}
        seq_strides = ["stride_qs", "stride_ks", "stride_vs", "stride_fs", "stride_os"]
    ptrs = {"Q": dtype, "K": dtype, "V": dtype, **outs, **lists, **masks}
    sig = {
        n: "constexpr"
        if n in consts
        else f"*{ptrs[n]}"
        if n in ptrs
        else "fp32"
        if n == "qk_scale"
        else "i32"
        for n in fn.arg_names
    }
    # What the launcher specialises at run time: 16-byte aligned pointers, sequence strides % 16 == 0.
    aligned = list(ptrs) + seq_strides
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    try:
        source = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        kernel = triton.compile(
            source,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": variant["warps"], "num_stages": variant["stages"]},
        )
    except (FileNotFoundError, PermissionError) as exc:  # pragma: no cover - no bundled ptxas
        pytest.skip(f"no CUDA toolchain in this Triton install: {exc}")
    ttgir = kernel.asm["ttgir"]
    assert ttgir.count("async_copy_global_to_local") >= 2, "K/V loads are not pipelined"
    if dtype != "fp32":
        assert "warp_group_dot" in ttgir, "expected Hopper wgmma for 16-bit inputs"


# ------------------------------------------------------------------------------------- helpers
@pytest.fixture
def seed():
    env = os.environ.get("KERNEL_TEST_SEED")
    return int(env) if env else int.from_bytes(os.urandom(4), "little")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(g, batch, seq_q, seq_k, heads, dim, dtype, *, strided=False):
    """q (B,Sq,H,D), k, v (B,Sk,H,D); ``strided`` gives views of (B,H,S,D) storage instead."""

    def make(seq):
        x = torch.randn(batch, heads, seq, dim, generator=g) * 1.5
        x = x.to(dtype).to(DEVICE)
        return x.transpose(1, 2) if strided else x.transpose(1, 2).contiguous()

    return make(seq_q), make(seq_k), make(seq_k)


def _random_layout(g, batch, heads, seq_q, seq_k, bq, bk, density, *, empty_rows=True):
    nq, nk = num_blocks(seq_q, bq), num_blocks(seq_k, bk)
    mask = torch.rand(batch, heads, nq, nk, generator=g) < density
    if empty_rows:
        mask[0, 0, torch.randint(nq, (1,), generator=g)] = False  # at least one empty list
    return BlockLayout.from_block_mask(mask.to(DEVICE), bq, bk)


def _oracle(q, k, v, layout, **kw):
    return block_sparse_attention_torch(q.double(), k.double(), v.double(), layout, **kw)


def _poisoned(q):
    """NaN-filled output and statistics buffers: any element the kernel does not write shows up."""
    out = torch.full_like(q, float("nan"))
    b, s, h = q.shape[0], q.shape[1], q.shape[2]
    stats = [torch.full((b, h, s), float("nan"), device=q.device) for _ in range(3)]
    return out, stats


def _run(q, k, v, layout, *, config=None, **kw):
    from dit_accel.kernels.triton_attention import triton_block_sparse_attention

    out, (lse, rmax, rsum) = _poisoned(q)
    return triton_block_sparse_attention(
        q, k, v, layout, stats="all", out=out, lse=lse, row_max=rmax, row_sum=rsum, config=config, **kw
    )


def _check(res, ref, dtype, seed, what=""):
    tag = f"seed={seed} {what}"
    for name in ("out", "lse", "row_max", "row_sum"):
        assert not torch.isnan(getattr(res, name)).any(), f"NaN in {name} ({tag})"
    out, ref_out = res.out.double().cpu(), ref.out.cpu()
    denom = ref_out.norm()
    err = ((out - ref_out).norm() / denom).item() if denom > 0 else out.norm().item()
    assert err < TOL[dtype], f"relative L2 error {err:.3g} >= {TOL[dtype]} ({tag})"
    # Statistics: the same -inf / zero pattern as the oracle, close values elsewhere.
    lse, ref_lse = res.lse.double().cpu(), ref.lse.cpu()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"LSE -inf pattern differs ({tag})"
    assert torch.equal(res.row_sum.cpu() == 0, ref.row_sum.cpu() == 0), f"row_sum zero pattern ({tag})"
    fin = torch.isfinite(ref_lse)
    stat_tol = 1e-5 if dtype == torch.float32 else 1e-4
    if fin.any():
        lse_err = (lse[fin] - ref_lse[fin]).abs().max()
        assert lse_err < stat_tol * (1 + ref_lse[fin].abs().max()), f"LSE ({tag})"
        rmax, ref_rmax = res.row_max.double().cpu()[fin], ref.row_max.cpu()[fin]
        assert (rmax - ref_rmax).abs().max() < stat_tol * (1 + ref_rmax.abs().max()), f"row_max ({tag})"
        rsum, ref_rsum = res.row_sum.double().cpu()[fin], ref.row_sum.cpu()[fin]
        assert ((rsum - ref_rsum).abs() / ref_rsum).max() < stat_tol, f"row_sum ({tag})"
    empty = torch.isinf(ref_lse)
    if empty.any():
        rows = res.out.transpose(1, 2).cpu()[empty]
        assert (rows == 0).all(), f"rows with nothing to attend must be exactly 0 ({tag})"


def _odd_lengths(g):
    seq_q = int(torch.randint(50, 150, (1,), generator=g))
    seq_k = int(torch.randint(50, 150, (1,), generator=g))
    if seq_k == seq_q:
        seq_k += 7
    return seq_q, seq_k


# ------------------------------------------------------------------------------------- kernel tests
@kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_random_layouts(head_dim, dtype, seed):
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    bq, bk = [(16, 16), (16, 32), (32, 32), (32, 16)][seed % 4]
    density = (0.25, 0.5, 0.8)[seed % 3]
    q, k, v = _inputs(g, 2, seq_q, seq_k, 2, head_dim, dtype, strided=seed % 2 == 0)
    layout = _random_layout(g, 2, 2, seq_q, seq_k, bq, bk, density)
    _check(
        _run(q, k, v, layout),
        _oracle(q, k, v, layout),
        dtype,
        seed,
        f"S=({seq_q},{seq_k}) blocks=({bq},{bk}) density={density}",
    )


@kernel_test
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=lambda d: str(d).split(".")[-1])
def test_empty_and_full_layouts(dtype, seed):
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 1, seq_q, seq_k, 2, 64, dtype)
    nq, nk = num_blocks(seq_q, 32), num_blocks(seq_k, 32)
    empty = BlockLayout.from_block_mask(torch.zeros(1, 1, nq, nk, dtype=torch.bool, device=DEVICE), 32, 32)
    res = _run(q, k, v, empty)
    assert (res.out == 0).all() and torch.isneginf(res.lse).all() and torch.isneginf(res.row_max).all()
    assert (res.row_sum == 0).all(), f"seed={seed}"
    full = BlockLayout.full(nq, nk, 32, 32, device=DEVICE)
    res = _run(q, k, v, full)
    _check(res, _oracle(q, k, v, full), dtype, seed, "full layout")
    dense = dense_attention_torch(q.double(), k.double(), v.double())  # independent oracle
    err = ((res.out.double() - dense.out).norm() / dense.out.norm()).item()
    assert err < TOL[dtype], f"full layout vs dense softmax: {err:.3g} (seed={seed})"


@kernel_test
@pytest.mark.parametrize("dtype", (torch.float16, torch.float32), ids=lambda d: str(d).split(".")[-1])
def test_key_padding(dtype, seed):
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 2, seq_q, seq_k, 2, 80, dtype)
    kpm = torch.rand(2, seq_k, generator=g) < 0.7
    kpm[1, :] = False
    kpm[1, -5:] = True  # batch 1 keeps only its last keys: most rows see padding only
    layout = _random_layout(g, 1, 2, seq_q, seq_k, 16, 16, 0.6, empty_rows=False)
    ref = _oracle(q, k, v, layout, key_padding_mask=kpm.to(DEVICE))
    _check(_run(q, k, v, layout, key_padding_mask=kpm.to(DEVICE)), ref, dtype, seed, "key padding")


@kernel_test
@pytest.mark.parametrize("bh", [(1, 1), (1, 3), (2, 1)], ids=lambda x: f"B{x[0]}H{x[1]}")
def test_broadcast_layouts(bh, seed):
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 2, seq_q, seq_k, 3, 96, torch.bfloat16)
    layout = _random_layout(g, *bh, seq_q, seq_k, 16, 32, 0.5)
    _check(_run(q, k, v, layout), _oracle(q, k, v, layout), torch.bfloat16, seed, f"layout {bh}")


@kernel_test
@pytest.mark.parametrize("bq,bk,block_n", [(32, 32, 16), (16, 64, 16), (32, 48, 16), (64, 64, 32)])
def test_key_sub_tiles(bq, bk, block_n, seed):
    """block_size_k > BLOCK_N: each listed key block is visited as several sub-tiles."""
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 1, seq_q, seq_k, 2, 64, torch.float32)
    layout = _random_layout(g, 1, 2, seq_q, seq_k, bq, bk, 0.6)
    config = {"BLOCK_N": block_n, "num_warps": 4, "num_stages": 2}
    _check(
        _run(q, k, v, layout, config=config),
        _oracle(q, k, v, layout),
        torch.float32,
        seed,
        f"blocks=({bq},{bk}) BLOCK_N={block_n}",
    )


def _mask_check(q, k, v, mask, layout, part, dtype, seed, what):
    res = _run(q, k, v, layout, element_mask=mask, kv_partial=part)
    ref = _oracle(q, k, v, layout, element_mask=mask, kv_partial=part)
    _check(res, ref, dtype, seed, what)
    return res


@kernel_test
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=lambda d: str(d).split(".")[-1])
def test_band_mask(dtype, seed):
    g = _gen(seed)
    seq = int(torch.randint(70, 140, (1,), generator=g))
    width = int(torch.randint(5, 40, (1,), generator=g))
    q, k, v = _inputs(g, 1, seq, seq, 2, 72, dtype)
    mask = ElementMask.band(width, seq, device=DEVICE)
    layout, part = mask.to_layout(16, 16)
    res = _mask_check(q, k, v, mask, layout, part, dtype, seed, f"band w={width} S={seq}")
    # Independent check: materialised |q - k| <= w softmax.
    dense = dense_attention_torch(q.double(), k.double(), v.double(), element_mask=mask)
    err = ((res.out.double() - dense.out).norm() / dense.out.norm()).item()
    assert err < TOL[dtype], f"band vs dense: {err:.3g} (seed={seed})"
    # The predicate on every entry (kv_partial=None) gives the same result.
    _check(_run(q, k, v, layout, element_mask=mask), dense, dtype, seed, "kv_partial=None")


@kernel_test
def test_partial_flags_are_exact_semantics(seed):
    """Entries flagged False are attended whole, even where the predicate would drop keys."""
    g = _gen(seed)
    seq = 96
    q, k, v = _inputs(g, 1, seq, seq, 2, 64, torch.float32)
    mask = ElementMask.band(6, seq, device=DEVICE)
    layout, part = mask.to_layout(16, 16)
    part = part & (torch.rand(part.shape, generator=g) < 0.5).to(DEVICE)
    _mask_check(q, k, v, mask, layout, part, torch.float32, seed, "random flags")
    partial_blocks = torch.zeros(
        1, 1, layout.num_q_blocks, layout.num_k_blocks + 1, dtype=torch.bool, device=DEVICE
    )
    valid = torch.arange(layout.width, device=DEVICE) < layout.kv_counts[..., None]
    target = torch.where(valid & part, layout.kv_indices.long(), layout.num_k_blocks)
    partial_blocks.scatter_(-1, target, True)
    dense = dense_attention_torch(
        q.double(),
        k.double(),
        v.double(),
        block_mask=layout.to_block_mask(),
        block_size_q=16,
        block_size_k=16,
        element_mask=mask,
        partial_block_mask=partial_blocks[..., :-1],
    )
    ref = _oracle(q, k, v, layout, element_mask=mask, kv_partial=part)
    assert (ref.out - dense.out).abs().max() < 1e-10, f"oracles disagree (seed={seed})"


@kernel_test
@pytest.mark.parametrize("permute", [False, True], ids=["grid-order", "permuted"])
def test_window_2d_mask(permute, seed):
    """FreeSwim's inward window on a (frames, rows, cols) grid, optionally in a permuted token order."""
    g = _gen(seed)
    grid = (2, 6, 9)
    seq = math.prod(grid)
    order = torch.randperm(seq, generator=g) if permute else None
    mask = ElementMask.inward_window(grid, (3, 4), order=order, device=DEVICE)
    q, k, v = _inputs(g, 2, seq, seq, 2, 64, torch.bfloat16)
    layout, part = mask.to_layout(16, 32)
    res = _mask_check(q, k, v, mask, layout, part, torch.bfloat16, seed, f"window permute={permute}")
    dense = dense_attention_torch(q.double(), k.double(), v.double(), element_mask=mask)
    err = ((res.out.double() - dense.out).norm() / dense.out.norm()).item()
    assert err < TOL[torch.bfloat16], f"window vs dense: {err:.3g} (seed={seed})"


@kernel_test
def test_window_3d_mask_with_padding(seed):
    g = _gen(seed)
    frames, rows, cols = 3, 5, 6
    seq = frames * rows * cols
    coord = ElementMask.grid_coords(frames, rows, cols, device=DEVICE)
    start = coord - torch.tensor([1, 1, 2], device=DEVICE)[:, None]
    mask = ElementMask.window(start, (2, 3, 4), coord)
    q, k, v = _inputs(g, 2, seq, seq, 2, 128, torch.float16)
    kpm = (torch.rand(2, seq, generator=g) < 0.8).to(DEVICE)
    layout = _random_layout(g, 2, 1, seq, seq, 32, 16, 0.7)
    part = mask.kv_partial(layout)
    res = _run(q, k, v, layout, element_mask=mask, kv_partial=part, key_padding_mask=kpm)
    ref = _oracle(q, k, v, layout, element_mask=mask, kv_partial=part, key_padding_mask=kpm)
    _check(res, ref, torch.float16, seed, "3-D window + padding")


@kernel_test
def test_dispatch_to_triton(seed):
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 1, seq_q, seq_k, 2, 64, torch.float32)
    layout = _random_layout(g, 1, 2, seq_q, seq_k, 32, 32, 0.5)
    ref = _oracle(q, k, v, layout)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, backend="triton")
    assert ((out.double() - ref.out).norm() / ref.out.norm()) < TOL[torch.float32], f"seed={seed}"
    fin = torch.isfinite(ref.lse)
    assert torch.equal(torch.isinf(lse), ~fin) and (lse[fin] - ref.lse[fin]).abs().max() < 1e-4
    stats = attention_with_stats(q, k, v, layout, backend="triton")
    _check(stats, ref, torch.float32, seed, "attention_with_stats")


@kernel_test
@pytest.mark.skipif(ON_GPU, reason="exercises the autotuner with a fake timer under the interpreter")
def test_autotuned_launch_path(monkeypatch, seed):
    """The autotuner wiring the GPU uses (key names, pruning, config kwargs), timed by a fake bench."""
    from dit_accel.kernels import triton_attention as ta

    timings = iter(range(100, 0, -1))  # later configs "run faster": the last pruned one must win

    def fake_bench(kernel_call, quantiles):
        kernel_call()
        t = float(next(timings))
        return [t, t, t]

    monkeypatch.setattr(ta, "_tuning_bench", fake_bench)
    monkeypatch.setattr(ta, "_TUNED", None)
    monkeypatch.setattr(ta, "_autotune_enabled", lambda q: True)
    g = _gen(seed)
    seq_q, seq_k = _odd_lengths(g)
    q, k, v = _inputs(g, 1, seq_q, seq_k, 2, 64, torch.float16)
    layout = _random_layout(g, 1, 2, seq_q, seq_k, 64, 64, 0.6)
    _check(_run(q, k, v, layout), _oracle(q, k, v, layout), torch.float16, seed, "autotuned")
    ((key, best),) = ta._TUNED.cache.items()
    assert (best.kwargs["BLOCK_N"], best.num_warps, best.num_stages) == (64, 8, 4), (key, best)


@kernel_test
def test_unsupported_inputs_raise():
    from dit_accel.kernels.triton_attention import triton_block_sparse_attention

    layout = BlockLayout.full(2, 2, 16, 16, device=DEVICE)
    q = torch.randn(1, 32, 1, 264, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        triton_block_sparse_attention(q, q, q, layout)
    q = torch.randn(1, 32, 1, 64, device=DEVICE, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        block_sparse_attention(q, q, q, layout, backend="triton")
    q = torch.randn(1, 48, 1, 64, device=DEVICE)
    with pytest.raises(ValueError, match="block_size_q"):
        triton_block_sparse_attention(q, q, q, BlockLayout.full(1, 3, 48, 16, device=DEVICE))


@kernel_test
@pytest.mark.skipif(ON_GPU, reason="the GPU run is scripts/gpu_check.sh itself")
def test_gpu_check_toy_runs(tmp_path):
    """scripts/gpu_check.sh (and benchmarks/bench_attention.py) end to end at toy sizes under the
    interpreter, so the one-shot GPU script cannot rot."""
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--toy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    for name in ("bench_attention.md", "bench_attention.json", "correctness.log", "run.log"):
        assert (tmp_path / name).stat().st_size > 0, name
    log = (tmp_path / "correctness.log").read_text()
    assert "FAIL" not in log and "correctness: 0 failure(s)" in log
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| toy-image"), "summary table must come last"
    rows = json.loads((tmp_path / "bench_attention.json").read_text())["rows"]
    assert {r["variant"] for r in rows} >= {"ours full", "ours random", "ours 3d-local", "sdpa-default"}
    assert all(r["time_ms"] for r in rows)


@kernel_test
@pytest.mark.skipif(ON_GPU, reason="the GPU run is scripts/gpu_check.sh itself")
def test_gpu_pipeline_check_script_runs_under_the_interpreter():
    """scripts/gpu_pipeline_check.py (part of gpu_check.sh) cannot rot: one family, fp32, on the CPU."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_pipeline_check.py", "cpu", "wan21"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| wan21 | float32 |" in proc.stdout and "pipeline check: ok" in proc.stdout
