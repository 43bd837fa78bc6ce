"""The ``dit-accel`` command as installed."""

from __future__ import annotations

import subprocess
import sys

from dit_accel.cli import main


def test_info_lists_families_and_methods(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Wan, HunyuanVideo, CogVideoX, PixArt" in out
    assert "dense, rectified, rettention, vmoba, window3d" in out


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "dit_accel.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("dit-accel ")
