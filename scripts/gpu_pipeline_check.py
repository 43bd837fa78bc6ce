"""The whole integration path on CUDA: tiny pipelines with window3d through the Triton kernel.

For each family: dense (SDPA) vs window3d with a window covering the grid (Triton, full layout),
and window3d with a small window through Triton vs the same layout through the PyTorch path.
Relative L2 of the output latents; non-zero exit on a failure. Part of scripts/gpu_check.sh;
``python scripts/gpu_pipeline_check.py cpu`` with TRITON_INTERPRET=1 runs the same on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_pipelines as tp  # noqa: E402

import dit_accel  # noqa: E402, F401
from dit_accel.quality import relative_l2 as rel  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """argv: [device [pipeline names...]]; default: cuda and every listed family, fp32 and bf16."""
    args = list(sys.argv[1:] if argv is None else argv) or ["cuda"]
    device, names = args[0], args[1:] or ["wan21", "wan22", "hunyuan_video", "cogvideox", "pixart_sigma"]
    dtypes = ((torch.float32, 1e-3), (torch.bfloat16, 3e-2)) if device != "cpu" else ((torch.float32, 1e-3),)
    failures = 0
    print("| pipeline | dtype | full window (Triton) vs dense | small window Triton vs torch | density |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        for dtype, tol in dtypes:
            pipe, kwargs = tp.BUILDERS[name](dtype=dtype)
            pipe.to(device)
            dense = tp.run(pipe, kwargs)
            pipe.enable_sparse_attention(
                "window3d", block_size=64, window=(64, 64, 64), kernel_backend="triton", correction=None
            )
            full = tp.run(pipe, kwargs)
            pipe.enable_sparse_attention(
                "window3d", block_size=16, window=(1, 4, 4), kernel_backend="triton", correction=None
            )
            small = tp.run(pipe, kwargs)
            density = pipe.sparse_attention_report().mean_density
            pipe.enable_sparse_attention(
                "window3d", block_size=16, window=(1, 4, 4), kernel_backend="torch", correction=None
            )
            small_ref = tp.run(pipe, kwargs)
            pipe.disable_sparse_attention()
            e_full, e_small = rel(full, dense), rel(small, small_ref)
            ok = e_full < tol and e_small < tol and density < 0.5
            failures += not ok
            flag = "" if ok else " FAIL"
            print(
                f"| {name} | {str(dtype)[6:]} | {e_full:.2e} | {e_small:.2e} | {density:.3f} |{flag}",
                flush=True,
            )
    print(f"pipeline check: {'FAIL' if failures else 'ok'} ({failures} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
