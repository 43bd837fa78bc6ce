"""The ``dit-accel`` command: info, render (tiny pipelines saved to disk, the demo model), bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tiny_pipelines as tp
import torch

from dit_accel.cli import main


def test_info_lists_families_and_methods(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Wan, HunyuanVideo, CogVideoX, PixArt" in out
    assert "dense, freeswim, rectified, rettention, topk, vmoba, window3d" in out


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "dit_accel.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("dit-accel ")


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    pipe, kwargs = tp.build_wan21()
    path = tmp_path_factory.mktemp("wan21")
    pipe.save_pretrained(path)
    return path, kwargs["prompt"]


def _frames(path) -> int:
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return reader.count_frames()


def test_render_writes_video_sidecar_and_dense_comparison(wan_dir, tmp_path, capsys):
    model, prompt = wan_dir
    out = tmp_path / "clip.mp4"
    args = [
        "render",
        "--model",
        str(model),
        "--prompt",
        prompt,
        "--height",
        "160",
        "--width",
        "224",
        "--num-frames",
        "9",
        "--steps",
        "3",
        "--method",
        "window3d",
        "--method-option",
        "block_size=16",
        "--method-option",
        "window=1,4,4",
        "--compare-dense",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert _frames(out) == 9
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["family"] == "Wan" and sidecar["method"] == "window3d"
    assert sidecar["method_options"] == {"block_size": 16, "window": [1, 4, 4]}
    assert (sidecar["height"], sidecar["width"], sidecar["num_frames"], sidecar["steps"]) == (160, 224, 9, 3)
    assert sidecar["guidance_scale"] == 5.0  # the Wan model-card default
    assert 0 < sidecar["density"] < 1 and sidecar["dense"]["density"] == 1.0
    assert 0 < sidecar["attention_seconds"] < sidecar["wall_seconds"]
    assert sidecar["psnr_db_vs_dense"] > 20 and 0 < sidecar["ssim_vs_dense"] <= 1
    assert sidecar["frames_written"] == 9 and sidecar["peak_memory_bytes"] > 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "PSNR" in printed


def test_render_image_model_writes_png(tmp_path):
    pipe, kwargs = tp.build_pixart_sigma()
    pipe.save_pretrained(tmp_path / "pixart")
    out = tmp_path / "image.mp4"
    args = [
        "render",
        "--model",
        str(tmp_path / "pixart"),
        "--prompt",
        kwargs["prompt"],
        "--height",
        str(kwargs["height"]),
        "--width",
        str(kwargs["width"]),
        "--steps",
        "2",
        "--method",
        "dense",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["output"].endswith(".png") and sidecar["num_frames"] is None
    from PIL import Image

    assert Image.open(sidecar["output"]).size == (kwargs["width"], kwargs["height"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--height", "170"], "the nearest valid height is 176"),
        (["--offload", "model"], "--offload needs a CUDA device"),
        (["--compile", "--offload", "sequential"], "use --offload model with --compile"),
        (
            ["--height", "1600", "--width", "1600", "--num-frames", "161", "--steps", "50"],
            "minutes on the CPU",
        ),
    ],
)
def test_render_errors_name_the_fix(wan_dir, tmp_path, capsys, extra, message):
    model, prompt = wan_dir
    args = [
        "render",
        "--model",
        str(model),
        "--prompt",
        prompt,
        "--num-frames",
        "9",
        "--steps",
        "1",
        "--output",
        str(tmp_path / "x.mp4"),
        *extra,
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_render_unknown_model_and_method(tmp_path, capsys):
    args = [
        "render",
        "--model",
        str(tmp_path / "missing"),
        "--prompt",
        "x",
        "--output",
        str(tmp_path / "x.mp4"),
    ]
    assert main(args) == 2
    assert "could not load model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "--model", "demo", "--prompt", "x", "--method", "magic", "--output", "x.mp4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_bench_commands_run_at_toy_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["bench", "attention", "--toy", "--device", "cpu", "--skip-bench", "--out", str(tmp_path)]) == 0
    )
    assert (tmp_path / "correctness.log").exists()
    code = main(
        [
            "bench",
            "pipeline",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--cases",
            "wan21",
            "--methods",
            "dense",
            "window3d",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = (tmp_path / "pipeline_cpu.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| wan21")]
    assert [r.split("|")[2].strip() for r in rows] == ["dense", "window3d"]
    assert float(rows[1].split("|")[6]) < 1  # window3d computes fewer blocks than dense


def test_render_compile_compiles_the_transformer_blocks(wan_dir, tmp_path, monkeypatch):
    import dit_accel.regional_compile as regional

    real, compiled = regional.compile_blocks, []

    def spy(transformer, **kwargs):  # aot_eager: no C++ compiler needed on the test machine
        compiled.append(real(transformer, backend="aot_eager", **kwargs))
        return compiled[-1]

    monkeypatch.setattr(regional, "compile_blocks", spy)
    model, prompt = wan_dir
    out = tmp_path / "compiled.mp4"
    size = ["--height", "160", "--width", "224", "--num-frames", "9", "--steps", "2"]
    torch._dynamo.reset()
    try:
        code = main(
            ["render", "--model", str(model), "--prompt", prompt, *size, "--compile", "--output", str(out)]
        )
    finally:
        torch._dynamo.reset()
    assert code == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert compiled == [2]  # tiny Wan: two blocks, compiled once
    assert sidecar["compiled"] is True and sidecar["density"] > 0
    assert _frames(out) == 9


def test_out_of_memory_suggests_offload(wan_dir, tmp_path, capsys, monkeypatch):
    import dit_accel.render as render_module

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(render_module, "_run", exhausted)
    model, prompt = wan_dir
    args = [
        "render",
        "--model",
        str(model),
        "--prompt",
        prompt,
        "--height",
        "160",
        "--width",
        "224",
        "--num-frames",
        "9",
        "--steps",
        "1",
        "--output",
        str(tmp_path / "x.mp4"),
    ]
    assert main(args) == 2
    assert "out of memory at 160x224: try --offload model" in capsys.readouterr().err
