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
