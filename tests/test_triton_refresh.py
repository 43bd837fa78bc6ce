"""The fused Triton refresh kernel (dense output, rho, rho x O_S in one pass) against float64.

Runs in Triton's interpreter on CPU machines (``conftest.py``) and natively on CUDA. Inputs are
fresh random draws, lengths are not multiples of the block sizes, outputs are NaN-poisoned first;
the seed is in every message (``KERNEL_TEST_SEED=<seed>`` replays one).
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.bench_rettention import two_pass_refresh
from dit_accel.kernels import BlockLayout, ElementMask, num_blocks, refresh_attention
from dit_accel.kernels.refresh import refresh_attention_torch

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not IN_INTERPRETER
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

try:
    from dit_accel.kernels.triton_refresh import DROPPED, KEPT, KEPT_WHERE_PREDICATE, block_kinds

    HAVE_TRITON = True
except Exception:  # pragma: no cover - platforms without Triton
    HAVE_TRITON = False

pytestmark = pytest.mark.skipif(
    not (HAVE_TRITON and (IN_INTERPRETER or ON_GPU)), reason="needs CUDA, or TRITON_INTERPRET=1 with Triton"
)


@pytest.fixture
def seed():
    env = os.environ.get("KERNEL_TEST_SEED")
    return int(env) if env else int.from_bytes(os.urandom(4), "little")


def kept_mask(layout, flagged, pred, seq_q, seq_k, batch, heads):
    """Token-level (B, H, Sq, Sk) kept keys: listed blocks, and the predicate on flagged blocks."""
    bq, bk = layout.block_size_q, layout.block_size_k
    listed = layout.expand(batch, heads).to_block_mask().cpu()

    def tokens(block_level):
        return block_level.repeat_interleave(bq, 2)[:, :, :seq_q].repeat_interleave(bk, 3)[..., :seq_k]

    kept = tokens(listed)
    if flagged is not None:
        kept &= ~tokens(flagged) | pred
    return kept


def flagged_blocks(layout, kv_partial, batch, heads):
    """Block-level (B, H, n_qb, n_kb): listed entries whose kv_partial flag is set."""
    lay = layout.expand(batch, heads)
    flagged = torch.zeros(batch, heads, lay.num_q_blocks, lay.num_k_blocks, dtype=torch.bool)
    part = kv_partial.expand(batch, heads, -1, -1).cpu()
    for b in range(batch):
        for h in range(heads):
            for r in range(lay.num_q_blocks):
                for e in range(int(lay.kv_counts[b, h, r])):
                    flagged[b, h, r, int(lay.kv_indices[b, h, r, e])] |= bool(part[b, h, r, e])
    return flagged


def oracle(q, k, v, kept, key_ok, scale):
    """float64 materialised sums on the given (already rounded) inputs."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double().cpu(), k.double().cpu()) * scale
    s = s.masked_fill(~key_ok[:, None, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    total = e.sum(-1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    w_full, w_kept = e / safe[..., None], e * kept / safe[..., None]
    vd = v.double().cpu()
    out_full = torch.einsum("bhqk,bkhd->bqhd", w_full, vd)
    kept_out = torch.einsum("bhqk,bkhd->bqhd", w_kept, vd)
    return out_full, (e * kept).sum(-1) / safe, kept_out


def poisoned(q):
    b, s, h, _ = q.shape
    nan = float("nan")
    return dict(
        out_full=torch.full_like(q, nan),
        kept_out=torch.full_like(q, nan),
        rho=torch.full((b, h, s), nan, device=q.device),
    )


def run_fused(q, k, v, layout, config=None, **masks):
    from dit_accel.kernels.triton_refresh import triton_refresh_attention

    return triton_refresh_attention(q, k, v, layout, config=config, **masks, **poisoned(q))


def rel_l2(got, want):
    got = got.double().cpu()
    assert not torch.isnan(got).any(), "NaN in kernel output"
    denom = want.norm()
    return float((got - want).norm() / denom) if denom > 0 else float(got.norm())


def check(res, want, dtype, tag):
    out_full, rho, kept_out = want
    assert rel_l2(res.out_full, out_full) < TOL[dtype], f"out_full ({tag})"
    assert rel_l2(res.kept_out, kept_out) < TOL[dtype], f"kept_out ({tag})"
    got_rho = res.rho.double().cpu()
    assert not torch.isnan(got_rho).any(), f"NaN in rho ({tag})"
    assert float((got_rho - rho).abs().max()) < 1e-5, f"rho ({tag})"
    empty = rho == 0
    assert (got_rho[empty] == 0).all(), f"rows with no kept key must have rho exactly 0 ({tag})"
    assert (res.kept_out.transpose(1, 2).cpu()[empty] == 0).all(), f"kept_out of such rows must be 0 ({tag})"


def random_inputs(g, batch, seq_q, seq_k, heads, dim, dtype):
    def make(seq):
        return (torch.randn(batch, seq, heads, dim, generator=g) * 1.5).to(dtype).to(DEVICE)

    return make(seq_q), make(seq_k), make(seq_k)


@pytest.mark.parametrize(
    ("dtype", "head_dim"),
    [
        (torch.float32, 64),
        (torch.float32, 72),
        (torch.float16, 80),
        (torch.bfloat16, 128),
        (torch.bfloat16, 64),
    ],
    ids=["fp32-d64", "fp32-d72", "fp16-d80", "bf16-d128", "bf16-d64"],
)
@pytest.mark.parametrize("masks", ["none", "padding", "band", "band+padding"])
def test_fused_refresh_matches_float64_oracle(dtype, head_dim, masks, seed):
    g = torch.Generator().manual_seed(seed)
    seq_q, seq_k = (int(torch.randint(40, 130, (1,), generator=g)) for _ in range(2))
    bq, bk, block_m = [(32, 16, 16), (16, 32, 16), (32, 48, 32), (64, 32, 32)][seed % 4]
    batch, heads = 2, 2
    q, k, v = random_inputs(g, batch, seq_q, seq_k, heads, head_dim, dtype)
    layout_bh = [(1, 1), (1, 2), (2, 2)][seed % 3]  # broadcast layouts too
    mask = torch.rand(*layout_bh, num_blocks(seq_q, bq), num_blocks(seq_k, bk), generator=g) < 0.45
    mask[0, 0, 0] = False  # a query block with nothing kept
    layout = BlockLayout.from_block_mask(mask.to(DEVICE), bq, bk)

    key_ok = torch.ones(batch, seq_k, dtype=torch.bool)
    kw = {}
    if "padding" in masks:
        key_ok = torch.rand(batch, seq_k, generator=g) < 0.8
        key_ok[1] = False
        key_ok[1, -3:] = True  # batch 1: nearly all padding
        kw["key_padding_mask"] = key_ok.to(DEVICE)
    flagged = pred = None
    if "band" in masks:
        element_mask = ElementMask.band(int(torch.randint(4, 30, (1,), generator=g)), seq_q, seq_k)
        kv_partial = torch.rand(*layout_bh, *layout.kv_indices.shape[2:], generator=g) < 0.6
        kw.update(element_mask=element_mask, kv_partial=kv_partial.to(DEVICE))
        flagged, pred = flagged_blocks(layout, kv_partial, batch, heads), element_mask.dense()
    kept = kept_mask(layout, flagged, pred, seq_q, seq_k, batch, heads) & key_ok[:, None, None, :]

    scale = 0.11
    config = dict(BLOCK_M=block_m, BLOCK_N=16, num_warps=4, num_stages=2)
    res = run_fused(q, k, v, layout, config=config, scale=scale, **kw)
    tag = f"seed={seed} S=({seq_q},{seq_k}) blocks=({bq},{bk}) BLOCK_M={block_m} layout{layout_bh} {masks}"
    check(res, oracle(q, k, v, kept, key_ok, scale), dtype, tag)


def test_default_config_and_refresh_attention_route_here(seed):
    """backend='triton' runs the fused kernel with its default launch config; same results."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_inputs(g, 1, 150, 141, 2, 64, torch.float32)
    mask = torch.rand(1, 2, num_blocks(150, 64), num_blocks(141, 32), generator=g) < 0.5
    layout = BlockLayout.from_block_mask(mask.to(DEVICE), 64, 32)
    res = refresh_attention(q, k, v, layout, backend="triton")
    kept = kept_mask(layout, None, None, 150, 141, 1, 2)
    check(
        res,
        oracle(q, k, v, kept, torch.ones(1, 141, dtype=torch.bool), 64**-0.5),
        torch.float32,
        f"seed={seed}",
    )


def test_fused_equals_two_passes(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_inputs(g, 2, 75, 75, 2, 32, torch.float32)
    padding = (torch.rand(2, 75, generator=g) < 0.9).to(DEVICE)
    mask = torch.rand(2, 2, num_blocks(75, 16), num_blocks(75, 16), generator=g) < 0.5
    layout = BlockLayout.from_block_mask(mask.to(DEVICE), 16, 16)
    band = ElementMask.band(11, 75, 75)
    fused = refresh_attention(q, k, v, layout, key_padding_mask=padding, element_mask=band, backend="triton")
    two = two_pass_refresh(q, k, v, layout, key_padding_mask=padding, element_mask=band, backend="triton")
    for name, a, b in zip(("out_full", "rho", "kept_out"), fused, two, strict=True):
        assert rel_l2(a, b.double().cpu()) < 1e-5, f"{name} seed={seed}"


def test_full_layout_gives_rho_one_and_zero_residual(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_inputs(g, 1, 70, 90, 3, 64, torch.float32)
    layout = BlockLayout.full(num_blocks(70, 32), num_blocks(90, 32), 32, 32, device=DEVICE)
    res = run_fused(q, k, v, layout)
    assert float((res.rho - 1).abs().max()) < 1e-6, f"seed={seed}"
    assert torch.equal(res.out_full, res.kept_out), f"seed={seed}: every tile kept, so both sums are equal"


def test_rows_with_no_valid_key_are_zero():
    q, k, v = (torch.randn(1, 40, 2, 64, device=DEVICE) for _ in range(3))
    layout = BlockLayout.full(num_blocks(40, 16), num_blocks(40, 16), 16, 16, device=DEVICE)
    padding = torch.zeros(1, 40, dtype=torch.bool, device=DEVICE)
    res = run_fused(q, k, v, layout, key_padding_mask=padding)
    assert (res.out_full == 0).all() and (res.kept_out == 0).all() and (res.rho == 0).all()


def test_the_torch_path_serves_cpu_tensors_by_default():
    q, k, v = (torch.randn(1, 33, 1, 16, dtype=torch.float64) for _ in range(3))
    layout = BlockLayout.from_block_mask(torch.rand(1, 1, 3, 3) < 0.5, 16, 16)
    auto = refresh_attention(q, k, v, layout)  # float64 on CPU: PyTorch one-pass path
    for a, b in zip(auto, refresh_attention_torch(q, k, v, layout), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="float64"):
        refresh_attention(q, k, v, layout, backend="triton")


def test_block_kinds_codes_listed_and_flagged_blocks():
    # One query block lists key blocks 3 and 1 (unsorted: the codes do not need sorted lists), then
    # padding; another lists 0 and 2.
    layout = BlockLayout(
        torch.tensor([[[[3, 1, 9], [0, 2, 7]]]], dtype=torch.int32),
        torch.tensor([[[2, 2]]], dtype=torch.int32),
        16,
        16,
        4,
    )
    assert block_kinds(layout, None, None).tolist() == [[[[0, 1, 0, 1], [1, 0, 1, 0]]]]
    band = ElementMask.band(3, 32, 64)
    partial = torch.tensor([[[[True, False, True], [False, True, True]]]])
    got = block_kinds(layout, band, partial).tolist()
    assert got == [
        [[[DROPPED, KEPT, DROPPED, KEPT_WHERE_PREDICATE], [KEPT, DROPPED, KEPT_WHERE_PREDICATE, DROPPED]]]
    ]
    everything_flagged = block_kinds(layout, band, None).tolist()
    assert everything_flagged == [[[[0, 2, 0, 2], [2, 0, 2, 0]]]]
