"""Quality versus attention compute: dense plus every method over a grid of its knobs, on a trained
proxy model (or any local diffusers pipeline), with two pooled top-k baselines in the same table.

Every row is one method setting, run twice from the dense run's seed:
- **free run**: a normal generation. Columns: realized mean density (the report's: fraction of
  query x key blocks computed, averaged over steps, layers and CFG passes), PSNR and SSIM of the
  final decoded frames and relative L2 of the final latents, each against dense.
- **teacher-forced run**: after every step the latents are replaced by the dense trajectory's, so
  each step's transformer input is the dense one; the column is the mean over steps of the
  relative L2 between the (guided) model output and dense's at that step. Sampled videos are
  chaotic (a small early difference can move an object); this error is not, so it is the best
  signal for comparing attention approximations. The output is read where the pipeline hands it
  to ``scheduler.step``, so any diffusers pipeline with ``callback_on_step_end`` works.

Baselines, at the same densities: (a) ``topk`` (pooled top-k blocks, no correction, uniform over
steps and layers) and (b) the same with ``WARMUP`` dense warm-up steps. "vs (a)" / "vs (b)" are a
row's PSNR minus the baseline's, interpolated linearly at the row's realized density (blank
outside the baseline's range). Writes ``results/quality_<name>.md``, ``quality_<name>.png`` (PSNR
and teacher-forced error vs density) and ``quality_<name>_sheet.png`` (dense vs each method's
default), plus the rows as JSON.

    python benchmarks/quality.py --proxy video            # full grid (about an hour on 2 CPU cores)
    python benchmarks/quality.py --quick                  # a small grid, under 5 minutes (video proxy)
    python benchmarks/quality.py --model PATH --prompt "..." --steps 20   # a local diffusers pipeline
    python benchmarks/quality.py --summary benchmarks/results/quality_*.json  # the README's table
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dit_accel  # noqa: E402
from benchmarks.timing import commit, machine  # noqa: E402
from dit_accel.quality import psnr, relative_l2, ssim  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WARMUP = 5  # dense warm-up steps of baseline (b), of 20 (the measurement)
DENSITIES = (0.125, 0.25, 0.5, 0.75)
#: Shortest refresh intervals of the residual swept by ``--grid refresh`` (steps; the default is 5).
REFRESH_INTERVALS = (2, 3, 5, 10, 40)


@dataclass
class Row:
    """One benchmark row: a label, a method name and its config overrides; ``role`` is "dense",
    "baseline a", "baseline b", "default", "reference" or "grid"."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    role: str = "grid"
    result: dict = field(default_factory=dict)


def grid_rows(kind: str, quick: bool, warmup: int, grid: str = "methods") -> list[Row]:
    """The settings to run for a video (Wan-like, 3D grid) or image (PixArt-like, one frame) model.

    ``grid``: "methods" (every method at its default, at its reference preset and over its
    knobs, and ``auto`` over its budget), "combinations" (every planner with every correction),
    "auto" (the policy over its budget and warm-up share), "calibrate" (``auto`` with and without
    a calibrated plan), "refresh" (``auto`` on video grids with the residual's shortest refresh
    interval swept, to run at several ``--steps``, and its drift off) or "all". Knob values are chosen so
    that each method spans the baselines' density range on the proxies' grids (32 blocks per
    sequence); the results file has the realized densities. The baselines are in every grid.
    """
    densities = (0.25, 0.5) if quick else DENSITIES
    rows = [Row("dense", "dense", role="dense")]
    rows += [Row(f"topk d={d}", "topk", {"density": d}, "baseline a") for d in densities]
    rows += [
        Row(f"topk d={d} +{warmup} dense", "topk", {"density": d, "dense_steps": warmup}, "baseline b")
        for d in densities
    ]
    if grid in ("methods", "all"):
        rows += _method_rows(kind, quick, warmup)
    if grid in ("combinations", "all") and not quick:
        rows += _combination_rows(kind)
    if grid in ("methods", "auto", "all"):
        rows += _auto_rows(kind, densities, quick, sweep=grid != "methods")
    if grid in ("calibrate", "all"):
        rows += _auto_rows(kind, densities, quick, sweep=False) + _calibrated_rows(densities)
    if grid == "refresh":
        rows += [
            Row(
                f"auto density={d} refresh_every={n}",
                "auto",
                {"density": d, "min_tokens": 0, "refresh_every": n},
            )
            for d in (0.25, 0.35)
            for n in REFRESH_INTERVALS
        ]
        rows += [  # the residual's drift (Re-ttention's 0.04 per step since the refresh) switched off
            Row(f"auto density={d} drift=0.0", "auto", {"density": d, "min_tokens": 0, "drift": 0.0})
            for d in (0.35, 0.5)
        ]
    return rows


def _auto_rows(kind: str, densities: tuple[float, ...], quick: bool, sweep: bool) -> list[Row]:
    """``auto`` at its balanced budget and at the baselines' densities, and (``sweep``) its
    warm-up share swept and the other grid kind's correction in place of its own (video grids
    default to Re-ttention's residual, one-frame grids to per-row rectification).
    ``min_tokens=0``: the proxies are shorter than the CPU break-even, where ``auto`` would stay
    dense; these rows measure the policy's quality, not its speed."""
    always = {"min_tokens": 0}
    rows = [Row("auto default", "auto", dict(always), "default")]
    if quick:
        return rows
    rows += [_auto_row(d) for d in densities]
    if sweep:
        rows += [
            Row(f"auto density={d} warmup_share={w}", "auto", {"density": d, "warmup_share": w, **always})
            for d in (0.25, 0.35, 0.5, 0.75)
            for w in (0.0, 0.25, 0.5, 0.75)
        ]
        other = "rectify" if kind == "video" else "rettention"
        rows += [
            Row(f"auto density={d} correction={other}", "auto", {"density": d, "correction": other, **always})
            for d in (0.25, 0.35, 0.5)
        ]
    return rows


def _auto_row(density: float) -> Row:
    """``auto`` at a budget (``min_tokens=0``: see ``_auto_rows``)."""
    return Row(f"auto density={density}", "auto", {"density": density, "min_tokens": 0}, "auto")


def _calibrated_rows(densities: tuple[float, ...]) -> list[Row]:
    """``auto`` with ``calibrate=``: a plan measured on another seed's first step (one
    unmeasured generation makes it), then loaded, as a later run would."""
    return [
        Row(f"auto density={d} calibrated", "auto", {"density": d, "min_tokens": 0, "calibrate": PLAN})
        for d in (*densities, 0.35)
    ]


def _method_rows(kind: str, quick: bool, warmup: int) -> list[Row]:
    rows = [Row(f"{m} default", m, {}, "default") for m in ("window3d", "vmoba", "rettention", "rectified")]
    if kind == "video":
        rows.append(Row("freeswim base=half", "freeswim", {"base_resolution": "half"}, "default"))
    if quick:
        return rows
    reference = {"preset": "reference"}
    rows += [
        Row(f"{m} reference", m, dict(reference), "reference")
        for m in ("window3d", "vmoba", "rettention", "rectified")
    ]
    if kind == "video":
        rows.append(
            Row(
                "freeswim reference base=half",
                "freeswim",
                {"base_resolution": "half", **reference},
                "reference",
            )
        )
    windows = _windows(kind)
    rows += [Row(f"window3d window={w}", "window3d", {"window": w}) for w in windows]
    if kind == "video":  # the default window takes Re-ttention's correction with its warm-up
        bare = {"correction": None}
        rows += [
            Row(f"window3d default + none +{warmup} dense", "window3d", {**bare, "dense_steps": warmup}),
            *(Row(f"window3d window={w} + none", "window3d", {"window": w, **bare}) for w in windows[::2]),
        ]
    else:  # per-row rectification with dense warm-up steps
        rows += [
            Row(f"window3d window={w} +{warmup} dense", "window3d", {"window": w, "dense_steps": warmup})
            for w in windows[:2]
        ]
    rows += [Row(f"vmoba threshold={t}", "vmoba", {"threshold": t}) for t in (0.1, 0.5)]
    if kind == "video":  # VMoBA's residual refreshes from the first step: with dense warm-up steps
        warm = {"dense_steps": warmup}
        rows += [
            Row(f"vmoba default +{warmup} dense", "vmoba", dict(warm)),
            Row(f"vmoba threshold=0.1 +{warmup} dense", "vmoba", {**warm, "threshold": 0.1}),
        ]
    rows += [Row(f"rettention sparsity={s}", "rettention", {"sparsity": s}) for s in (0.125, 0.25)]
    rows += [Row(f"rectified drop={r}", "rectified", {"sa_drop_rate": r}) for r in (0.875, 0.5)]
    no_dense = {"dense_steps": 0, "dense_layers": ()}
    rows += [
        Row(f"rectified drop={r} no dense steps", "rectified", {"sa_drop_rate": r, **no_dense})
        for r in (0.75, 0.5)
    ]
    per_row = {"rectify": "per_row", "gapr": False}
    rows += [
        Row(
            f"rectified per_row drop={r} no dense steps",
            "rectified",
            {"sa_drop_rate": r, **per_row, **no_dense},
        )
        for r in (0.875, 0.75, 0.5)
    ]
    rows += [
        Row(
            f"rectified per_row drop={r} +{warmup} dense",
            "rectified",
            {"sa_drop_rate": r, **per_row, "dense_steps": warmup, "dense_layers": ()},
        )
        for r in (0.875, 0.75)
    ]
    return rows


def _windows(kind: str) -> list[tuple[int, int, int]]:
    return (
        [(8, 16, 8), (4, 16, 16), (8, 16, 16)] if kind == "video" else [(1, 8, 16), (1, 16, 16), (1, 16, 32)]
    )


def _combination_rows(kind: str) -> list[Row]:
    """Every planner at about a quarter of the blocks with no correction, per-row and per-block
    rectification and Re-ttention's correction (its own schedule: warm-up and refreshes)."""
    planners = [
        ("topk d=0.25", "topk", {"density": 0.25}),
        (f"window3d window={_windows(kind)[1]}", "window3d", {"window": _windows(kind)[1]}),
        ("vmoba", "vmoba", {}),
        ("rectified drop=0.75", "rectified", {"sa_drop_rate": 0.75, "dense_steps": 0, "dense_layers": ()}),
        ("rettention mask sparsity=0.25", "rettention", {"sparsity": 0.25}),
    ]
    corrections = [
        ("none", None),
        ("rectify per_row", "rectify"),
        ("rectify per_block", "per_block"),
        ("rettention", "rettention"),
    ]
    rows = []
    for label, method, options in planners:
        for name, correction in corrections:
            value = {"per_block": "rectify_per_block"}.get(correction, correction)
            rows.append(Row(f"{label} + {name}", method, {**options, "correction": value}, "combination"))
    return rows


# --- running one pipeline call ---------------------------------------------------------------


@dataclass
class Run:
    outputs: list[torch.Tensor]  # model output handed to scheduler.step, per step
    latents: list[torch.Tensor]  # latents after each step
    frames: torch.Tensor  # decoded output, (..., H, W, 3) in [0, 1]
    seconds: float


def generate(pipe: Any, call: dict, seed: int, teacher: list[torch.Tensor] | None = None) -> Run:
    """One generation from ``seed``; with ``teacher``, step i's output latents are replaced by
    ``teacher[i]`` so that every step's input is the teacher's."""
    outputs: list[torch.Tensor] = []
    latents: list[torch.Tensor] = []
    scheduler = pipe.scheduler
    original_step = scheduler.step

    def recording_step(model_output, *args, **kwargs):
        outputs.append(model_output.detach().float().cpu())
        return original_step(model_output, *args, **kwargs)

    def on_step_end(_pipe, i, _t, tensors):
        latents.append(tensors["latents"].detach().float().cpu())
        if teacher is not None:
            return {"latents": teacher[i].to(tensors["latents"])}
        return {}

    scheduler.step = recording_step
    try:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            result = pipe(**call, generator=generator, callback_on_step_end=on_step_end)
        seconds = time.perf_counter() - start
    finally:
        del scheduler.step  # back to the class's method
    frames = result
    for attr in ("frames", "images"):
        frames = getattr(frames, attr, frames)
    frames = torch.as_tensor(frames).float()
    if frames.shape[-1] != 3:  # (..., 3, H, W) tensors
        frames = frames.movedim(-3, -1)
    return Run(outputs, latents, frames.clamp(0, 1), seconds)


#: A row option: the run's calibration plan (``calibration_plan``).
PLAN = "<plan>"
#: The seed of the generation that measures a calibration plan: not one the rows are scored on.
CALIBRATION_SEED = 1000


def calibration_plan(pipe: Any, call: dict, row: Row, path: Path) -> Path:
    """``path``, made by one generation from ``CALIBRATION_SEED`` if it does not exist yet (its
    curves do not depend on the budget, so every calibrated row of a run loads the same plan)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        dit_accel.enable_sparse_attention(pipe, row.method, **{**row.options, "calibrate": str(path)})
        try:
            generate(pipe, call, CALIBRATION_SEED)
        finally:
            dit_accel.disable_sparse_attention(pipe)
    return path


def measure(
    pipe: Any, call: dict, row: Row, seeds: list[int], dense: dict[int, Run]
) -> tuple[dict, torch.Tensor]:
    """The row's columns, averaged over seeds, and the first seed's frames."""
    metrics: dict[str, list[float]] = {}
    first_frames = None
    options = dict(row.options)
    for seed in seeds:
        dit_accel.enable_sparse_attention(pipe, row.method, **options)
        try:
            free = generate(pipe, call, seed)
            density = dit_accel.sparse_attention_report(pipe).mean_density
            forced = generate(pipe, call, seed, teacher=dense[seed].latents)
        finally:
            dit_accel.disable_sparse_attention(pipe)
        ref = dense[seed]
        first_frames = free.frames[0] if first_frames is None else first_frames
        tf = [relative_l2(o, r) for o, r in zip(forced.outputs, ref.outputs, strict=True)]
        values = dict(
            density=density,
            psnr=psnr(free.frames, ref.frames, peak=1.0),
            ssim=ssim(
                free.frames.reshape(-1, *free.frames.shape[-3:]),
                ref.frames.reshape(-1, *ref.frames.shape[-3:]),
            ),
            latent_l2=relative_l2(free.latents[-1], ref.latents[-1]),
            tf_error=sum(tf) / len(tf),
            seconds=free.seconds,
        )
        for key, value in values.items():
            metrics.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in metrics.items()}, first_frames


# --- gains over the baselines ----------------------------------------------------------------


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear value at ``x`` through ``points`` (x, y); None outside their x range."""
    points = sorted(points)
    if not points or x < points[0][0] - 1e-9 or x > points[-1][0] + 1e-9:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 - 1e-9 <= x <= x1 + 1e-9:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1]


def add_gains(rows: list[Row]) -> None:
    for baseline in ("a", "b"):
        curve = [(r.result["density"], r.result["psnr"]) for r in rows if r.role == f"baseline {baseline}"]
        for r in rows:
            base = interpolate(curve, r.result["density"]) if r.role != "dense" else None
            r.result[f"gain_{baseline}"] = None if base is None else r.result["psnr"] - base


# --- output ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(name: str, rows: list[Row], settings: dict, started: dict) -> str:
    lines = [
        f"# Quality versus attention density: {name}",
        "",
        f"Machine: {started['machine']}. Date: {started['date']}. Commit: {started['commit']}.",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "Generated by `benchmarks/quality.py` (its docstring defines every column). PSNR/SSIM: final",
        "decoded frames vs dense from the same seed; latent L2: relative L2 of the final latents; TF",
        "error: mean teacher-forced relative L2 of the model output; vs (a)/(b): PSNR gain over",
        f"pooled top-k without / with {settings.get('warmup', WARMUP)} dense warm-up steps at equal",
        "density (blank outside the baseline's range). Wall time: this machine, CPU, not a speed claim.",
        "",
        "| setting | role | density | PSNR dB | SSIM | latent L2 | TF error | vs (a) dB | vs (b) dB "
        "| wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r.result
        lines.append(
            f"| {r.label} | {r.role} | {_fmt(m['density'], 3)} | {_fmt(m['psnr'], 2)} "
            f"| {_fmt(m['ssim'], 4)} | "
            f"{_fmt(m['latent_l2'], 4)} | {_fmt(m['tf_error'], 4)} | {_fmt(m.get('gain_a'), 2, True)} | "
            f"{_fmt(m.get('gain_b'), 2, True)} | {_fmt(m['seconds'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def _family(row: Row) -> str:
    if row.role.startswith("baseline"):
        return f"topk ({row.role})"
    if row.role == "combination":  # one marker set per correction, over the planners
        return "correction: " + row.label.split(" + ", 1)[1]
    if row.role == "reference":
        return "reference presets"
    label = row.label
    if "per_row" in label:
        label = "rectified per_row"
    family = label.split()[0] if "per_row" not in label else label
    if " + none" in row.label:
        family += " bare"
    if re.search(r"\+\d+ dense", row.label):
        family += " +warm-up"
    elif "no dense steps" in row.label:
        family += " no dense steps"
    return family


def plot(name: str, rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[Row]] = {}
    for r in rows:
        if r.role != "dense" and math.isfinite(r.result["psnr"]):
            curves.setdefault(_family(r), []).append(r)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colours = iter(plt.get_cmap("tab20").colors)  # more families than tab10 has colours
    for family, members in sorted(curves.items()):
        members.sort(key=lambda r: r.result["density"])
        x = [r.result["density"] for r in members]
        style = (
            dict(linestyle="--", linewidth=2.5, color="black" if "baseline a" in family else "grey")
            if "baseline" in family
            else dict(linestyle="none")
            if family.startswith("correction")
            else {}
        )
        if "color" not in style:
            style["color"] = next(colours)
        left.plot(x, [r.result["psnr"] for r in members], marker="o", label=family, **style)
        right.plot(x, [r.result["tf_error"] for r in members], marker="o", label=family, **style)
    left.set(xlabel="realized mean density", ylabel="PSNR vs dense (dB)", title=f"{name}: final frames")
    right.set(
        xlabel="realized mean density",
        ylabel="teacher-forced rel. L2",
        title=f"{name}: per-step error",
        yscale="log",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(name: str, frames: dict[str, torch.Tensor], path: Path) -> None:
    """One column per setting (dense first); for video the first, middle and last frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(frames.values()))
    picks = [0, first.shape[0] // 2, first.shape[0] - 1] if first.ndim == 4 else [None]
    fig, axes = plt.subplots(
        len(picks), len(frames), figsize=(2.6 * len(frames), 1.6 * len(picks) + 0.6), squeeze=False
    )
    for col, (label, video) in enumerate(frames.items()):
        for row, index in enumerate(picks):
            image = video if index is None else video[index]
            axes[row][col].imshow(image.numpy())
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
        axes[0][col].set_title(label, fontsize=8)
    fig.suptitle(f"{name}: dense vs each method's default (same seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- entry point ---------------------------------------------------------------------------------


class Checkpoint:
    """Rows of an unfinished table, saved one by one, so that a long sweep (an hour and more on
    two cores) interrupted by a session's end resumes where it stopped (``--resume``). A row is
    reused only when the run's settings (every argument that changes a number) are the same."""

    IGNORED = ("resume", "update", "threads", "out", "summary", "only", "skip", "auto_density")  # by label

    def __init__(self, folder: Path, args: dict, resume: bool) -> None:
        self.folder = folder
        kept = {k: v for k, v in args.items() if k not in self.IGNORED}
        self.key = json.dumps(kept, default=str, sort_keys=True)
        self.rows: dict[str, dict] = {}
        index = folder / "rows.json"
        if resume and index.exists():
            saved = json.loads(index.read_text())
            if saved["key"] == self.key:
                self.rows = saved["rows"]
            else:
                print(f"{folder}: saved with other settings, not reused", file=sys.stderr)

    def restore(self, row: Row, sheet: dict[str, torch.Tensor]) -> bool:
        """Fill ``row`` (and its contact-sheet frames) from the saved rows; False if not saved."""
        saved = self.rows.get(row.label)
        if saved is None:
            return False
        row.result = saved["result"]
        frames = self.folder / saved["frames"] if saved.get("frames") else None
        if frames is not None:
            sheet[row.label.replace(" default", "")] = torch.load(frames).float()
        return True

    def save(self, row: Row, frames: torch.Tensor | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = dict(result=row.result)
        if frames is not None:
            entry["frames"] = f"frames_{len(self.rows)}.pt"
            torch.save(frames.half(), self.folder / entry["frames"])
        self.rows[row.label] = entry
        (self.folder / "rows.json").write_text(json.dumps(dict(key=self.key, rows=self.rows), default=str))

    def remove(self) -> None:
        """The table is written: its partial rows are no longer needed."""
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink()
            self.folder.rmdir()


def _previous_rows(path: Path) -> dict[str, Row]:
    """The rows of a written table (``--update``), by label."""
    if not path.exists():
        raise SystemExit(f"--update: no table at {path} to update")
    keys = ("density", "psnr", "ssim", "latent_l2", "tf_error", "seconds")
    return {
        e["label"]: Row(e["label"], e["method"], e["options"], e["role"], {k: e[k] for k in keys if k in e})
        for e in json.loads(path.read_text())
    }


def _parse_option(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, tuple(value) if isinstance(value, list) else value


def _load(args: argparse.Namespace) -> tuple[Any, dict, str, str]:
    """(pipeline, call arguments, result name, kind)."""
    if args.model:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.model, local_files_only=True)
        call = dict(
            prompt=args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np"
        )
        kind = "image" if "PixArt" in type(pipe.transformer).__name__ else "video"
        return pipe, call, Path(args.model).name, kind
    from benchmarks.proxies.models import IMAGE_SIZE, VIDEO_SIZE, build_proxy, load_proxy

    pipe = build_proxy(args.proxy) if args.untrained else load_proxy(args.proxy, args.weights)
    size = dict(VIDEO_SIZE if args.proxy == "video" else IMAGE_SIZE)
    if args.size:
        values = [int(v) for v in args.size.split("x")]
        size = dict(
            zip(
                ("num_frames", "height", "width") if args.proxy == "video" else ("height", "width"),
                values,
                strict=True,
            )
        )
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt", **size)
    name = f"{args.proxy}_untrained" if args.untrained else args.weights.stem if args.weights else args.proxy
    return pipe, call, name, args.proxy


def resolve_row(row: Row, call: dict, block_size: int | None, kind: str) -> None:
    """Fill in what depends on the model: block size, image tiles, FreeSwim's half base."""
    if row.method == "dense":
        return
    if block_size is not None:
        row.options.setdefault("block_size", block_size)
    if kind == "image" and row.method in ("window3d", "topk"):
        from dit_accel.methods.order import default_tile, fit_tile

        row.options.setdefault("tile", fit_tile(default_tile(row.options.get("block_size", 128)), (1, 2, 2)))
    if row.options.get("correction") == "rectify_per_block":
        row.options["correction"] = dit_accel.RectifyCorrection(mode="per_block")
    residual = {k: row.options.pop(k) for k in ("refresh_every", "drift") if k in row.options}
    if residual:  # the refresh grid's ``auto`` rows: the video correction with these fields
        row.options["correction"] = dit_accel.RettentionCorrection(warmup_fraction=0.0, **residual)
    if row.options.get("base_resolution") == "half":
        row.options["base_resolution"] = (call["height"] // 2, call["width"] // 2)
        row.options.setdefault("vae_scale_factor", 4)


def summary(paths: list[Path]) -> str:
    """The README's table: every default, reference preset and ``auto`` row of the given result
    files (``quality_<name>.json``), with density, PSNR and the gains over both baselines."""
    lines = [
        "| proxy | setting | density | PSNR dB | vs top-k (a) dB | vs top-k +warm-up (b) dB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for path in paths:
        name = path.stem.removeprefix("quality_")
        for r in json.loads(path.read_text()):
            if r["role"] in ("default", "reference", "auto") and r.get("density") == r.get("density"):
                lines.append(
                    f"| {name} | {r['label']} | {_fmt(r['density'], 3)} | {_fmt(r['psnr'], 2)} "
                    f"| {_fmt(r.get('gain_a'), 2, True)} | {_fmt(r.get('gain_b'), 2, True)} |"
                )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults that depend on ``--quick`` (steps, warm-up) filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--proxy", choices=("video", "image"), default="video")
    source.add_argument("--model", help="path of a local diffusers pipeline (no download)")
    parser.add_argument("--prompt", default="", help="prompt for --model")
    parser.add_argument(
        "--quick", action="store_true", help="a small grid (defaults, auto; baselines 0.25, 0.5), 6 steps"
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (20; 6 with --quick)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"dense steps of baseline (b) ({WARMUP}; 2 with --quick)"
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--size", help="proxy size in pixels: FxHxW (video) or HxW (image)")
    parser.add_argument(
        "--block-size", type=int, default=None, help="block size of every method (video 128, image 32)"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run rows whose label contains this (repeatable)"
    )
    parser.add_argument(
        "--skip", action="append", default=[], help="leave out rows whose label contains this (repeatable)"
    )
    parser.add_argument(
        "--option", action="append", default=[], help="extra config field for every method row"
    )
    parser.add_argument(
        "--grid",
        choices=("methods", "combinations", "auto", "calibrate", "refresh", "all"),
        default="methods",
    )
    parser.add_argument(
        "--auto-density",
        type=float,
        action="append",
        default=[],
        help="add an `auto` row at this density (repeatable): `auto` at a method default's density",
    )
    parser.add_argument("--untrained", action="store_true", help="the proxy with random weights (tests)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="proxy weights other than the shipped ones (a candidate)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the rows an interrupted run of the same table saved (OUT/<table>.partial/)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="measure only the rows --only names and take every other row from OUT/<table>.json",
    )
    parser.add_argument(
        "--summary",
        nargs="+",
        type=Path,
        help="print the README table of these result JSON files, run nothing",
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else WARMUP)
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.summary:
        print(summary(args.summary), end="")
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, warmup = args.steps, args.warmup
    started = dict(date=datetime.date.today().isoformat(), commit=commit(), machine=machine())
    pipe, call, name, kind = _load(args)
    pipe.set_progress_bar_config(disable=True)
    block_size = args.block_size or (32 if kind == "image" else None)
    extra_auto = [_auto_row(d) for d in args.auto_density]

    def selected(r: Row) -> bool:
        return (not args.only or any(o in r.label for o in args.only)) and not any(
            o in r.label for o in args.skip
        )

    stem = (
        f"quality_{name}"
        + ("_quick" if args.quick else "")
        + ("" if args.grid == "methods" else f"_{args.grid}")
    )
    previous = _previous_rows(args.out / f"{stem}.json") if args.update else {}
    rows = [
        r
        for r in grid_rows(kind, args.quick, warmup, args.grid) + extra_auto
        if r.role == "dense" or selected(r) or r.label in previous
    ]
    labels = {r.label for r in rows}
    rows += [row for label, row in previous.items() if label not in labels]
    extra = dict(map(_parse_option, args.option))
    seeds = list(range(args.seeds))

    from tqdm.auto import tqdm

    if previous:
        started["commit"] += " for the rows measured again; the others are the previous table's"
    saved = Checkpoint(args.out / f"{stem}.partial", dict(vars(args), seeds=seeds), args.resume)
    dense = {seed: generate(pipe, call, seed) for seed in seeds}
    sheet = {"dense": dense[0].frames[0]}
    for row in tqdm(rows, desc=f"quality {name}", unit="row"):
        if row.role == "dense":
            row.result = dict(
                density=1.0,
                psnr=math.inf,
                ssim=1.0,
                latent_l2=0.0,
                tf_error=0.0,
                seconds=sum(r.seconds for r in dense.values()) / len(seeds),
            )
            continue
        if row.label in previous and not selected(row):
            row.result = previous[row.label].result
            continue
        resolve_row(row, call, block_size, kind)
        if row.method != "dense":
            row.options.update(extra)
        if saved.restore(row, sheet):
            continue
        try:
            if row.options.get("calibrate") == PLAN:
                plan = calibration_plan(pipe, call, row, args.out / f"calibration_{name}.json")
                row.options["calibrate"] = str(plan)
            row.result, frames = measure(pipe, call, row, seeds, dense)
        except (ValueError, TypeError, NotImplementedError) as error:  # a setting the model refuses
            print(f"{row.label}: skipped ({type(error).__name__}: {error})", file=sys.stderr)
            row.result = dict(
                density=math.nan,
                psnr=math.nan,
                ssim=math.nan,
                latent_l2=math.nan,
                tf_error=math.nan,
                seconds=math.nan,
                error=str(error),
            )
            continue
        if row.role == "default":
            sheet[row.label.replace(" default", "")] = frames
        saved.save(row, frames if row.role == "default" else None)
    add_gains(rows)
    settings = dict(
        steps=steps,
        guidance=args.guidance,
        seeds=args.seeds,
        warmup=warmup,
        size=call.get("num_frames", 1),
        block_size=block_size or 128,
    )
    settings["size"] = "x".join(str(call[k]) for k in ("num_frames", "height", "width") if k in call) + " px"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(markdown(name, rows, settings, started))
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            [
                dict(
                    label=r.label,
                    method=r.method,
                    role=r.role,
                    options={k: list(v) if isinstance(v, tuple) else v for k, v in r.options.items()},
                    **r.result,
                )
                for r in rows
            ],
            indent=1,
            default=str,
        )
        + "\n"
    )
    plot(name, rows, args.out / f"{stem}.png")
    if not previous or all(r.label.replace(" default", "") in sheet for r in rows if r.role == "default"):
        contact_sheet(name, sheet, args.out / f"{stem}_sheet.png")  # else the previous sheet stays
    print((args.out / f"{stem}.md").read_text())
    saved.remove()
    return rows


if __name__ == "__main__":
    main()
