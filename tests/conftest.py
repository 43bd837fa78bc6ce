"""Test-session setup.

Without a GPU, Triton kernels run in Triton's CPU interpreter, which must be switched on before
triton is first imported: it is switched on here, for the whole session, so the kernel tests run
in-process against the float64 oracle. Nothing else in the suite runs Triton on the CPU (the
"auto" kernel backend picks the PyTorch path for CPU tensors). ``DIT_ACCEL_NO_INTERPRETER=1``
leaves it off, for the tests that compile for a GPU target in a subprocess.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available() and os.environ.get("DIT_ACCEL_NO_INTERPRETER") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch 2.13 (CPU): in a few percent of fresh processes with more than one thread, the very first
# float64 torch.exp returns values off by ~3e-9 relative (later calls are exact; seen with
# OMP_NUM_THREADS=1 never). The float64 oracle tests compare at 1e-12, so warm the kernel up once
# here, on a tensor large enough to run on every thread, before any test runs.
torch.exp(torch.linspace(-20.0, 5.0, 1 << 16, dtype=torch.float64))
