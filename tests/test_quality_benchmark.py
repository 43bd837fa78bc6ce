"""benchmarks/quality.py: teacher forcing, the gain columns, and its quick mode end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

import dit_accel
from benchmarks import quality
from benchmarks.proxies.models import build_proxy

SMALL = dict(num_frames=2, height=32, width=64, num_inference_steps=3, guidance_scale=3.0, output_type="pt")


@pytest.fixture(scope="module")
def pipe():
    pipe = build_proxy("video", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_teacher_forcing_feeds_the_teachers_latents_into_every_later_step(pipe):
    teacher = quality.generate(pipe, SMALL, seed=0)
    other = quality.generate(pipe, SMALL, seed=1)
    forced = quality.generate(pipe, SMALL, seed=1, teacher=teacher.latents)
    # Step 0 starts from seed 1's noise; every later step sees the teacher's latents, so the same
    # (dense) model gives the teacher's outputs there.
    assert torch.equal(forced.outputs[0], other.outputs[0])
    assert not torch.equal(other.outputs[1], teacher.outputs[1])
    for step in range(1, 3):
        assert torch.equal(forced.outputs[step], teacher.outputs[step])
    assert len(forced.outputs) == len(forced.latents) == 3


def test_interpolation_is_linear_inside_the_curve_and_blank_outside():
    points = [(0.25, 20.0), (0.5, 30.0)]
    assert quality.interpolate(points, 0.375) == pytest.approx(25.0)
    assert quality.interpolate(points, 0.25) == pytest.approx(20.0)
    assert quality.interpolate(points, 0.2) is None
    assert quality.interpolate(points, 0.6) is None


def test_gains_compare_with_the_baseline_at_the_rows_density():
    rows = [
        quality.Row("a1", "topk", role="baseline a", result=dict(density=0.25, psnr=20.0)),
        quality.Row("a2", "topk", role="baseline a", result=dict(density=0.5, psnr=30.0)),
        quality.Row("m", "window3d", result=dict(density=0.4, psnr=29.0)),
    ]
    quality.add_gains(rows)
    assert rows[2].result["gain_a"] == pytest.approx(29.0 - 26.0)
    assert rows[2].result["gain_b"] is None


def test_quick_mode_fills_every_column_and_writes_table_plot_and_sheet(tmp_path):
    argv = [
        "--proxy",
        "video",
        "--untrained",
        "--quick",
        "--size",
        "2x32x64",
        "--block-size",
        "16",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--auto-density",
        "0.6",
        "--out",
        str(tmp_path),
    ]
    rows = quality.main(argv)
    extra = [r for r in rows if r.label == "auto density=0.6"]
    assert len(extra) == 1 and extra[0].options["density"] == 0.6
    assert 0.4 < extra[0].result["density"] < 0.8, extra[0].result  # the budget, not the balanced 0.35
    roles = {r.role for r in rows}
    assert {"dense", "baseline a", "baseline b", "default"} <= roles
    assert {r.method for r in rows if r.role == "default"} >= {
        "window3d",
        "vmoba",
        "rettention",
        "rectified",
        "freeswim",
        "auto",
    }
    for row in rows:
        for column in ("density", "psnr", "ssim", "latent_l2", "tf_error", "seconds"):
            value = row.result[column]
            assert not math.isnan(value), (row.label, column)
        if row.role != "dense":
            assert 0.0 < row.result["density"] <= 1.0
    baselines = [r for r in rows if r.role == "baseline a"]
    assert all(r.result["gain_a"] == pytest.approx(0.0) for r in baselines)
    stem = tmp_path / "quality_video_untrained_quick"
    table = (stem.with_suffix(".md")).read_text()
    assert "| topk d=0.25 | baseline a |" in table and "Commit:" in table and "Machine:" in table
    assert len(json.loads(stem.with_suffix(".json").read_text())) == len(rows)
    readme = quality.summary([stem.with_suffix(".json")]).splitlines()
    defaults = [r for r in rows if r.role == "default"]
    assert len(readme) == 2 + len(defaults) + sum(r.role == "auto" for r in rows)
    assert any(line.startswith("| video_untrained_quick | auto default |") for line in readme)
    for png in (stem.with_suffix(".png"), tmp_path / "quality_video_untrained_quick_sheet.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_realized_density_equals_its_target(pipe):
    row = quality.Row("topk", "topk", {"density": 0.25, "block_size": 16})
    dense = {0: quality.generate(pipe, SMALL, seed=0)}
    result, _ = quality.measure(pipe, SMALL, row, [0], dense)
    # Grid 2x4x8 tokens in (1, 4, 4) tiles: 4 blocks, one kept per query block.
    assert result["density"] == pytest.approx(0.25)


def test_calibrated_rows_load_one_plan_made_from_another_seed(pipe, tmp_path):
    row = quality.Row("auto calibrated", "auto", {"density": 0.5, "min_tokens": 0, "block_size": 16})
    path = quality.calibration_plan(pipe, SMALL, row, tmp_path / "plan.json")
    saved = json.loads(path.read_text())["grids"]
    assert list(saved) == ["2x4x8/block16"]  # the 2x32x64 px clip: 8 px per token
    assert len(saved["2x4x8/block16"]) == len(pipe.transformer.blocks)
    before = path.read_text()
    assert quality.calibration_plan(pipe, SMALL, row, path) == path and path.read_text() == before
    labels = [r.label for r in quality.grid_rows("video", False, 1, "calibrate")]
    assert "auto density=0.35 calibrated" in labels and "auto density=0.25" in labels


def test_an_interrupted_table_resumes_from_its_saved_rows_and_only_with_the_same_settings(tmp_path):
    argv = ["--proxy", "video", "--untrained", "--quick", "--size", "2x32x64", "--block-size", "16"]
    argv += ["--steps", "2", "--warmup", "1", "--only", "topk d=0.25", "--out", str(tmp_path)]
    first = quality.main(argv)
    measured = next(r for r in first if r.label == "topk d=0.25").result
    folder = tmp_path / "quality_video_untrained_quick.partial"
    assert not folder.exists()  # removed once the table is written

    # A run that stopped after this row left it saved: a resumed run takes it instead of
    # measuring again (the planted PSNR shows which), a run with other settings does not.
    def plant(settings):
        row = quality.Row("topk d=0.25", "topk", result=dict(measured, psnr=123.0))
        quality.Checkpoint(folder, dict(vars(settings), seeds=[0]), resume=False).save(row, None)

    def psnr(rows):
        return next(r for r in rows if r.label == "topk d=0.25").result["psnr"]

    plant(quality.parse_args(argv))
    assert psnr(quality.main([*argv, "--resume"])) == 123.0
    assert psnr(quality.main(argv)) == pytest.approx(measured["psnr"])  # without --resume: measured
    plant(quality.parse_args(argv))
    assert psnr(quality.main([*argv, "--guidance", "2.0", "--resume"])) != 123.0


def test_an_update_measures_only_the_named_rows_and_keeps_the_others(tmp_path):
    argv = ["--proxy", "video", "--untrained", "--quick", "--size", "2x32x64", "--block-size", "16"]
    argv += ["--steps", "2", "--warmup", "1", "--only", "topk d=0.25", "--out", str(tmp_path)]
    quality.main(argv)
    table = tmp_path / "quality_video_untrained_quick.json"
    rows = json.loads(table.read_text())
    for entry in rows:  # plant values a measurement cannot give
        if entry["label"] == "topk d=0.25":
            entry["psnr"] = 123.0
    rows.append(dict(rows[-1], label="kept from before", psnr=77.0))
    table.write_text(json.dumps(rows))
    updated = quality.main([*argv[:-4], "--only", "topk d=0.5", "--out", str(tmp_path), "--update"])
    psnr = {r.label: r.result["psnr"] for r in updated}
    assert psnr["topk d=0.25"] == 123.0 and psnr["kept from before"] == 77.0  # not measured
    assert math.isfinite(psnr["topk d=0.5"]) and psnr["topk d=0.5"] != psnr["topk d=0.25"]
    assert "the others are the previous table's" in table.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="no table"):
        quality.main([*argv[:-2], "--out", str(tmp_path / "empty"), "--update"])


def test_refresh_rows_give_auto_the_residual_with_their_interval_and_change_its_schedule():
    from dit_accel.methods.auto import schedule

    rows = [r for r in quality.grid_rows("video", False, 5, "refresh") if "refresh_every" in r.label]
    assert {r.options["refresh_every"] for r in rows} == set(quality.REFRESH_INTERVALS)
    row = next(r for r in rows if r.options["refresh_every"] == 10)
    quality.resolve_row(row, {}, None, "video")
    correction = row.options["correction"]
    assert "refresh_every" not in row.options
    assert isinstance(correction, dit_accel.RettentionCorrection) and correction.refresh_every == 10
    assert correction.warmup_fraction == 0.0  # auto pays its refreshes from the budget
    # The interval is the shortest the budget may use: 20 steps at 0.35 refresh every 5 or every 10.
    assert schedule(0.35, 20, 0.0, None, 5)[1] == 5
    assert schedule(0.35, 20, 0.0, None, 10)[1] == 10
