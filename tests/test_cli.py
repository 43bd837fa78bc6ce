"""The ``dit-accel`` command: info, render (tiny pipelines saved to disk, the demo model), bench."""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_pipelines as tp
import torch

import dit_accel.api
import dit_accel.cli as cli
from dit_accel.cli import main
from dit_accel.output_file import IMAGE_SUFFIXES, VIDEO_SUFFIXES, write_frames

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def reports(monkeypatch):
    """The reports render reads, in order (the main method's first, then the dense baseline's)."""
    seen = []
    real = dit_accel.api.sparse_attention_report

    def spy(pipe):
        seen.append(real(pipe))
        return seen[-1]

    monkeypatch.setattr(dit_accel.api, "sparse_attention_report", spy)
    return seen


def test_render_writes_video_sidecar_and_dense_comparison(wan_dir, tmp_path, capsys, reports):
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
    config = sidecar["method_config"]  # the session's full config, family defaults included
    assert config["type"] == "Window3DConfig" and config["window"] == [1, 4, 4] and config["block_size"] == 16
    assert config["dense_steps"] == reports[0].config.dense_steps and "kernel_backend" in config
    assert sidecar["density"] == reports[0].mean_density  # not rounded
    assert (sidecar["height"], sidecar["width"], sidecar["num_frames"], sidecar["steps"]) == (160, 224, 9, 3)
    assert sidecar["guidance_scale"] == 5.0  # the Wan model-card default
    assert 0 < sidecar["density"] < 1 and sidecar["dense"]["density"] == 1.0
    assert 0 < sidecar["attention_seconds"] < sidecar["wall_seconds"]
    assert sidecar["psnr_db_vs_dense"] > 20 and 0 < sidecar["ssim_vs_dense"] <= 1
    assert sidecar["frames_written"] == 9 and sidecar["peak_memory_bytes"] > 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "PSNR" in printed


def test_render_image_model_writes_the_image_file_asked_for_and_refuses_a_video_name(tmp_path, capsys):
    pipe, kwargs = tp.build_pixart_sigma()
    pipe.save_pretrained(tmp_path / "pixart")
    out = tmp_path / "image.jpg"
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
    assert sidecar["output"] == str(out) and sidecar["num_frames"] is None
    from PIL import Image

    with Image.open(out) as image:
        assert image.format == "JPEG" and image.size == (kwargs["width"], kwargs["height"])
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "image.mp4")]) == 2
    err = capsys.readouterr().err
    assert "this model renders an image, not a video; use one of .png" in err and "Traceback" not in err
    assert not (tmp_path / "image.mp4").exists()


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
            # window3d's video correction runs 30 % of the steps dense, then a refresh: four steps
            # (one dense, one refresh) leave two sparse ones to measure
            "4",
            "--cases",
            "wan21",
            "--methods",
            "dense",
            "window3d",
            "freeswim",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = (tmp_path / "pipeline_cpu.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| wan21")]
    assert [r.split("|")[2].strip() for r in rows] == ["dense", "window3d", "freeswim"]
    assert float(rows[1].split("|")[6]) < 1 and float(rows[2].split("|")[6]) < 1  # fewer blocks than dense


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


# ------------------------------------------------------------------ refused before anything loads
@pytest.fixture
def nothing_loads(monkeypatch):
    """A refusal must come before the pipeline is loaded: loading fails the test."""
    import dit_accel.render as render_module

    def load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the settings were checked")

    monkeypatch.setattr(render_module, "load_pipeline", load)


def _refused(capsys, tmp_path, *extra: str) -> str:
    """Exit status 2 and one line on stderr, no traceback; returns the line."""
    args = ["render", "--model", "demo", "--prompt", "red square moving right"]
    code = main([*args, "--output", str(tmp_path / "x.mp4"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dit-accel render: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method-option", "nosuch=1"], "Window3DConfig has no option(s) ['nosuch']; valid options:"),
        (["--method-option", "window=-1"], "--method-option: window must have 3 entries"),
        (["--method-option", "window=abc"], "window must be an int or a sequence of ints, got 'abc'"),
        (["--method-option", "window=(0,4,4)"], "--method-option: window extents must be >= 1"),
        (["--method-option", "block_size=-16"], "block_size must be a positive integer, got -16"),
        (["--method-option", "block_size=1.5"], "block_size must be a positive integer, got 1.5"),
    ],
)
def test_bad_window3d_options_are_refused_naming_the_field(capsys, tmp_path, nothing_loads, extra, message):
    assert message in _refused(capsys, tmp_path, "--method", "window3d", *extra)


@pytest.mark.parametrize(
    ("method", "option", "message"),
    [
        ("vmoba", "threshold=2", "--method-option: threshold must lie in [0, 1], got 2"),
        ("rettention", "sparsity=-0.5", "--method-option: sparsity must lie in (0, 1], got -0.5"),
        ("freeswim", "window=-1", "--method-option: window must have 2 entries"),
    ],
)
def test_bad_method_options_are_refused_naming_the_field(
    capsys, tmp_path, nothing_loads, method, option, message
):
    assert message in _refused(capsys, tmp_path, "--method", method, "--method-option", option)


def test_method_option_values_are_python_literals_or_text():
    value = cli._option_value
    assert value("16") == 16 and value("0.3") == 0.3 and value("-1") == -1
    assert value("1,4,4") == (1, 4, 4) and value("(1, 4, 4)") == (1, 4, 4) and value("[1, 4, 4]") == (1, 4, 4)
    assert value("true") is True and value("False") is False and value("none") is None
    assert value("abc") == "abc" and value("torch") == "torch" and value("a,b") == "a,b"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "-3"], "--steps must be a positive integer, got -3"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--num-frames", "-5"], "--num-frames must be a positive integer, got -5"),
        (["--num-frames", "0"], "--num-frames must be a positive integer, got 0"),
        (["--height", "0"], "--height must be a positive integer, got 0"),
        (["--width", "-32"], "--width must be a positive integer, got -32"),
        (["--guidance-scale", "-1"], "--guidance-scale must be a number >= 0"),
        (["--guidance-scale", "nan"], "--guidance-scale must be a number >= 0"),
    ],
)
def test_non_positive_sizes_steps_and_negative_guidance_are_refused(
    capsys, tmp_path, nothing_loads, extra, message
):
    assert message in _refused(capsys, tmp_path, *extra)


def test_base_resolution_off_the_token_grid_is_refused_with_the_nearest_valid_size(
    capsys, tmp_path, nothing_loads
):
    extra = ["--method", "freeswim", "--height", "64", "--width", "64", "--base-resolution", "32x30"]
    assert "the nearest valid base-resolution width is 32" in _refused(capsys, tmp_path, *extra)


def test_base_resolution_without_freeswim_is_refused(capsys, tmp_path, nothing_loads):
    assert "use it with --method freeswim" in _refused(capsys, tmp_path, "--base-resolution", "32x32")


def test_output_under_a_file_is_refused(capsys, tmp_path, nothing_loads):
    (tmp_path / "notes.txt").write_text("a file")
    line = _refused(capsys, tmp_path, "--output", str(tmp_path / "notes.txt" / "x.mp4"))
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder; choose another path" in line


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_output_in_a_folder_where_files_cannot_be_created_is_refused(capsys, tmp_path, nothing_loads):
    line = _refused(capsys, tmp_path, "--output", "/proc/x.mp4")
    assert "cannot create files in /proc; choose a folder you can write to" in line


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out.png", "this model renders a video, not an image; use one of .mp4"),
        ("noext", "no file extension; use one of videos: .mp4"),
        ("clip.flv", "dit-accel cannot write .flv files; use one of videos: .mp4"),
    ],
)
def test_output_extensions_without_a_writer_are_refused_with_the_list(
    capsys, tmp_path, nothing_loads, name, message
):
    assert message in _refused(capsys, tmp_path, "--output", str(tmp_path / name))


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--prompt", "a purple triangle", "--prompt: the demo model does not know 'a', 'purple', 'triangle'"),
        ("--prompt", "red square moving right quickly", "does not know 'quickly'; its words are moving, red"),
        ("--prompt", "red square", "the demo model understands prompts like 'red square moving right'"),
        ("--negative-prompt", "blurry", "--negative-prompt: the demo model does not know 'blurry'"),
    ],
)
def test_demo_prompts_outside_its_vocabulary_are_refused(
    capsys, tmp_path, nothing_loads, flag, text, message
):
    assert message in _refused(capsys, tmp_path, flag, text)


def test_every_render_option_has_help():
    parser = cli.build_parser()
    render = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [a.dest for a in render.choices["render"]._actions if not a.help]
    assert undocumented == []


# ------------------------------------------------------------------ the file asked for is the file written
@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_every_video_extension_is_written_in_its_own_format(tmp_path, suffix):
    import imageio.v2 as imageio

    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / f"clip{suffix}"
    write_frames(frames, path, fps=8)
    with imageio.get_reader(str(path)) as reader:
        count = reader.count_frames() if suffix != ".gif" else len(list(reader))
        assert count == 5 and reader.get_data(0).shape[:2] == (32, 48)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_extension_is_written_in_its_own_format(tmp_path, suffix):
    from PIL import Image

    path = tmp_path / f"image{suffix}"
    write_frames(np.zeros((1, 32, 48, 3), dtype=np.uint8), path, fps=None)
    with Image.open(path) as image:
        assert image.format == {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, suffix[1:].upper())


def test_demo_render_to_gif_writes_that_gif_and_records_the_session_config(tmp_path, capsys, reports):
    from PIL import Image

    out = tmp_path / "clip.gif"
    args = ["render", "--model", "demo", "--prompt", "red square moving right", "--steps", "1"]
    assert main([*args, "--guidance-scale", "1", "--output", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.json"]
    with Image.open(out) as image:
        assert image.format == "GIF" and image.n_frames == 9
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    report = reports[0]
    assert sidecar["method_requested"] == "auto" and sidecar["method"] == report.method
    assert sidecar["method_config"]["type"] == type(report.config).__name__
    assert sidecar["method_config"]["block_size"] == report.config.block_size == 32  # the demo's blocks
    assert sidecar["density"] == report.mean_density and sidecar["output"] == str(out)
    # 576 tokens: auto stays exactly dense, and says why in the sidecar and the summary.
    assert report.method == "auto" and report.mean_density == 1.0
    assert sidecar["dense_reasons"] == [
        "576 video tokens < min_tokens=8192 (below it the block-sparse cpu path loses to dense attention)"
    ]
    assert "dense by policy: 576 video tokens < min_tokens=8192" in capsys.readouterr().out


# ------------------------------------------------------------------ bench
def test_bench_finds_the_checkout_the_working_directory_is_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "PACKAGE_PARENT", tmp_path / "site-packages")  # a non-editable install
    monkeypatch.chdir(ROOT / "tests")
    assert main(["bench", "pipeline", "--help"]) == 0
    assert "usage: bench_pipeline.py" in capsys.readouterr().out


def test_bench_outside_a_checkout_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "PACKAGE_PARENT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "attention"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "site-packages" / "benchmarks") in err and f"at or above {tmp_path}" in err
    assert "the benchmarks ship only in the source checkout" in err and "git clone <repository-url>" in err


def test_bench_pipeline_times_every_method_by_default(capsys):
    from dit_accel import available_methods

    assert main(["bench", "pipeline", "--help"]) == 0
    default = capsys.readouterr().out.split("(default:", 1)[1].split(")", 1)[0].split()
    assert default == ["dense", *(m for m in available_methods() if m != "dense")]
    assert "freeswim" in default


def test_benchmark_commit_outside_a_checkout_is_unknown_without_git_noise(tmp_path, capfd):
    commit = runpy.run_path(str(ROOT / "benchmarks" / "timing.py"))["commit"]
    assert commit(tmp_path) == "unknown"
    assert "fatal" not in capfd.readouterr().err
    if shutil.which("git") and (ROOT / ".git").exists():
        assert commit() != "unknown"  # this checkout's own commit, wherever the script is run from
