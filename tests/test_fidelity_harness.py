"""benchmarks/fidelity.py: its metrics and one end-to-end comparison on a tiny pipeline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import tiny_pipelines as tp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fidelity  # noqa: E402


def test_psnr_of_identical_outputs_is_infinite():
    x = torch.randn(10)
    assert fidelity.psnr(x, x) == math.inf


def test_psnr_hand_example():
    reference = torch.tensor([0.0, 2.0, 0.0, 2.0])  # range 2
    output = reference + torch.tensor([0.2, -0.2, 0.2, -0.2])  # mse 0.04
    assert fidelity.psnr(output, reference) == pytest.approx(10 * math.log10(4 / 0.04))


def test_compare_dense_is_exact_and_window_is_sparse():
    pipe, call = tp.build_wan21()
    dense = fidelity.compare(pipe, call, "dense")
    assert dense["relative_l2"] < 1e-6 and dense["mean_density"] == 1.0
    # the bare window (its video default warms up densely for 30 % of the steps)
    sparse = fidelity.compare(pipe, call, "window3d", block_size=16, window=(1, 4, 4), correction=None)
    assert sparse["mean_density"] < 0.5
    assert 0 < sparse["relative_l2"] < 1 and math.isfinite(sparse["psnr_db"])
    # The harness leaves the pipeline as it found it.
    assert not hasattr(pipe.transformer, "_dit_accel_session")


def test_command_line_writes_json(tmp_path):
    out = tmp_path / "result.json"
    result = fidelity.main(
        [
            "--tiny",
            "pixart_sigma",
            "--method",
            "window3d",
            "--option",
            "block_size=16",
            "--option",
            "window=1,4,4",
            "--json",
            str(out),
        ]
    )
    assert out.exists() and result["pipeline"] == "pixart_sigma"
    assert result["options"]["window"] == [1, 4, 4]
