"""Backend selection in ``dit_accel.kernels`` and the element-mask oracle (no GPU, no interpreter)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import dit_accel.kernels as kernels
from dit_accel.kernels import ElementMask, attention_with_stats, block_sparse_attention
from dit_accel.kernels.layout import BlockLayout
from dit_accel.kernels.reference import block_sparse_attention_torch, dense_attention_torch


def _inputs(seq=40, dim=32, dtype=torch.float32, heads=2):
    q = torch.randn(1, seq, heads, dim, dtype=dtype)
    return q, torch.randn_like(q), torch.randn_like(q)


def test_auto_on_cpu_uses_torch(monkeypatch):
    q, k, v = _inputs()
    layout = BlockLayout.full(3, 3, 16, 16)
    calls = []
    monkeypatch.setattr(
        kernels,
        "block_sparse_attention_torch",
        lambda *a, **kw: calls.append(1) or block_sparse_attention_torch(*a, **kw),
    )
    out = block_sparse_attention(q, k, v, layout)
    assert calls == [1] and out.shape == q.shape
    ref = dense_attention_torch(q.double(), k.double(), v.double())
    assert (out.double() - ref.out).abs().max() < 1e-5


def test_bad_backend_name_raises():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="backend"):
        block_sparse_attention(q, k, v, BlockLayout.full(3, 3, 16, 16), backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        attention_with_stats(q, k, v, BlockLayout.full(3, 3, 16, 16), backend="flash")


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    q, k, v = _inputs()
    if kernels.triton_available():
        monkeypatch.setattr(kernels._triton_module(), "interpreter_active", lambda: False)
    else:
        with pytest.raises(RuntimeError, match="Triton failed to import"):
            block_sparse_attention(q, k, v, BlockLayout.full(3, 3, 16, 16), backend="triton")
        return
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        block_sparse_attention(q, k, v, BlockLayout.full(3, 3, 16, 16), backend="triton")


def test_triton_import_failure(monkeypatch):
    """A broken Triton: "auto" falls back silently, "triton" raises naming the import error."""
    monkeypatch.setattr(kernels, "_TRITON", ImportError("no triton here"))
    q, k, v = _inputs()
    layout = BlockLayout.full(3, 3, 16, 16)
    assert not kernels.triton_available()
    assert block_sparse_attention(q, k, v, layout, backend="auto").shape == q.shape
    with pytest.raises(RuntimeError, match="no triton here"):
        block_sparse_attention(q, k, v, layout, backend="triton")


def test_auto_falls_back_for_unsupported_inputs(monkeypatch):
    """float64 (the oracle dtype) is never sent to Triton, even for CUDA tensors."""
    mod = kernels._triton_module()
    if mod is None:
        pytest.skip("Triton not importable")
    q = torch.randn(1, 32, 1, 64, dtype=torch.float64)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert not kernels._use_triton(q, BlockLayout.full(2, 2, 16, 16), None, "auto")
    with pytest.raises(TypeError, match="float64"):
        kernels._use_triton(q, BlockLayout.full(2, 2, 16, 16), None, "triton")


def test_importing_kernels_does_not_import_triton_eagerly():
    with open(kernels.__file__) as f:
        src = f.read()
    assert "\nimport triton" not in src and "\nfrom . import triton_attention" not in src


# ------------------------------------------------------------------ element-mask oracle (torch only)
def test_band_mask_oracles_agree():
    seq = 70
    q, k, v = _inputs(seq, 16, torch.float64)
    mask = ElementMask.band(9, seq)
    layout, part = mask.to_layout(16, 16)
    assert part.any() and not part.all()  # some tiles need the predicate, some do not
    dense = dense_attention_torch(q, k, v, element_mask=mask)
    for flags in (part, None):
        ref = block_sparse_attention_torch(q, k, v, layout, element_mask=mask, kv_partial=flags)
        assert (ref.out - dense.out).abs().max() < 1e-12
        assert (ref.lse - dense.lse).abs().max() < 1e-12
    explicit = torch.stack([torch.tensor([(abs(i - j) <= 9) for j in range(seq)]) for i in range(seq)])
    assert torch.equal(mask.dense(), explicit)


def test_window_classification_is_exact_for_full_tiles():
    grid = (2, 6, 8)
    mask = ElementMask.inward_window(grid, (3, 5))
    full, touched = mask.block_classes(8, 8)
    dense = mask.dense()
    n = math.prod(grid) // 8
    tiles = dense.view(n, 8, n, 8).permute(0, 2, 1, 3)
    assert torch.equal(full, tiles.all(-1).all(-1))
    assert not (tiles.any(-1).any(-1) & ~touched).any()  # touched is conservative


def test_element_mask_validation():
    mask = ElementMask.band(3, 20)
    q, k, v = _inputs(24, 16)
    with pytest.raises(ValueError, match="seq_q=20"):
        block_sparse_attention(q, k, v, BlockLayout.full(2, 2, 16, 16), element_mask=mask)
    with pytest.raises(ValueError, match="kv_partial"):
        block_sparse_attention(
            q, k, v, BlockLayout.full(2, 2, 16, 16), kv_partial=torch.ones(1, 1, 2, 2, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="int32"):
        i32 = torch.zeros(1, 4, dtype=torch.int32)
        ElementMask(torch.zeros(1, 4), i32, i32)


def test_auto_picks_triton_for_supported_cuda_inputs(monkeypatch):
    """bf16/fp16/fp32 CUDA tensors with a supported head dim and block size go to the kernel."""
    if kernels._triton_module() is None:
        if sys.platform.startswith("linux"):
            pytest.fail("Triton is a dependency on Linux and must import")
        pytest.skip("Triton is not a dependency on this platform")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    layout = BlockLayout.full(2, 2, 16, 16)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert kernels._use_triton(torch.randn(1, 32, 1, 64, dtype=dtype), layout, None, "auto")
    assert not kernels._use_triton(torch.randn(1, 32, 1, 64, dtype=torch.bfloat16), layout, None, "torch")
