"""torch.compile with sparse attention on CUDA: regional compile (inductor, ``fullgraph=True``) vs eager.

For the tiny Wan 2.1 pipeline in bf16 and each method: the output of eager mode, of
``compile_repeated_blocks(fullgraph=True)`` and, for the default mode, of ``mode="reduce-overhead"``
(the op stays out of CUDA graphs), compared by relative L2; non-zero exit on a failure or a
graph break. Part of ``scripts/gpu_second_call.sh`` (``gpu_check.sh``'s ten minutes are spoken
for); on its own ``python scripts/gpu_compile_check.py``, or on the CPU
``python scripts/gpu_compile_check.py cpu`` (``aot_eager``, no C++ compiler needed; tested).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny_pipelines as tp  # noqa: E402

import dit_accel  # noqa: E402, F401
from dit_accel.quality import relative_l2 as rel  # noqa: E402

METHODS = {
    "window3d": dict(window=(1, 4, 4)),
    "vmoba": dict(),
    "rettention": dict(sparsity=0.2),
    "rectified": dict(dense_steps=0, dense_layers=()),
    "freeswim": dict(base_resolution=(80, 112)),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv) or ["cuda"]
    device = args[0]
    dtype, tol = (torch.bfloat16, 2e-2) if device != "cpu" else (torch.float32, 1e-5)
    modes = (
        [("default", "inductor"), ("reduce-overhead", "inductor")]
        if device != "cpu"
        else [(None, "aot_eager")]
    )
    from torch._dynamo.utils import counters

    failures = 0
    print("| method | mode | compiled vs eager | graph breaks | graphs |")
    print("|---|---|---:|---:|---:|")
    for method, options in METHODS.items():
        for mode, backend in modes:
            pipe, kwargs = tp.build_wan21(dtype=dtype)
            pipe.to(device)
            pipe.enable_sparse_attention(method, block_size=16, **options)
            eager = tp.run(pipe, kwargs)
            torch._dynamo.reset()
            counters.clear()
            compile_kwargs = dict(fullgraph=True, backend=backend)
            if mode is not None and mode != "default":
                compile_kwargs["mode"] = mode
            try:
                pipe.transformer.compile_repeated_blocks(**compile_kwargs)
                compiled = tp.run(pipe, kwargs)
                error = rel(compiled, eager)
            except Exception as exc:  # report and go on: one table for every case
                print(f"| {method} | {mode or backend} | {type(exc).__name__}: {str(exc)[:60]} | | | FAIL")
                failures += 1
                continue
            finally:
                pipe.disable_sparse_attention()
            breaks = sum(counters["graph_break"].values())
            ok = error < tol and breaks == 0
            failures += not ok
            flag = "" if ok else " FAIL"
            graphs = counters["stats"]["unique_graphs"]
            print(f"| {method} | {mode or backend} | {error:.2e} | {breaks} | {graphs} |{flag}", flush=True)
    torch._dynamo.reset()
    print(f"compile check: {'FAIL' if failures else 'ok'} ({failures} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
