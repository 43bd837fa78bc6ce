"""Checks on ``dit-accel render``'s settings that need no model, run before anything is loaded.

A bad flag then costs milliseconds and one line naming the fix, rather than a model load and a
traceback, or a whole render and a failing writer. What depends on the model (pixels per token for
a Hub model, video or image, the CPU time estimate) is checked right after loading, before rendering.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from .config import resolve_config
from .output_file import format_problem
from .render import RenderError, RenderSettings, check_size


def check_settings(s: RenderSettings) -> None:
    """Raise a ``RenderError`` for the first setting that cannot work, whatever the model."""
    for flag, value in (
        ("--height", s.height),
        ("--width", s.width),
        ("--num-frames", s.num_frames),
        ("--steps", s.steps),
    ):
        if value is not None and value < 1:
            raise RenderError(f"{flag} must be a positive integer, got {value}; leave it out for the default")
    if s.guidance_scale is not None and not (math.isfinite(s.guidance_scale) and s.guidance_scale >= 0):
        raise RenderError(
            f"--guidance-scale must be a number >= 0 (1 or less turns guidance off), got {s.guidance_scale}"
        )
    _check_base_resolution(s)
    _check_method_options(s)
    _check_device(s)
    check_output_format(s.output, video=True if s.model == "demo" else None)
    _check_output_path(s.output)
    if s.model == "demo":
        _check_demo(s)


def _check_base_resolution(s: RenderSettings) -> None:
    if s.base_resolution is None:
        return
    if s.method != "freeswim":
        raise RenderError(
            "--base-resolution is the size FreeSwim drafts at; use it with --method freeswim, or leave it out"
        )
    if min(s.base_resolution) < 1:
        height, width = s.base_resolution
        raise RenderError(f"--base-resolution must be positive, got {height}x{width}")


def _check_method_options(s: RenderSettings) -> None:
    """Build the method's config from the user's options: its validation names the field."""
    options = dict(s.method_options)
    name = s.method
    if name == "freeswim" and s.base_resolution is not None:
        options["base_resolution"] = s.base_resolution
    try:
        resolve_config(name, **options)
    except (TypeError, ValueError) as error:
        raise RenderError(f"--method-option: {error}") from None


def _check_device(s: RenderSettings) -> None:
    cuda = torch.cuda.is_available()
    if s.device == "cuda" and not cuda:
        raise RenderError("--device cuda but no CUDA device is available; use --device cpu")
    if s.compile and s.offload == "sequential":
        raise RenderError(
            "--compile with --offload sequential: accelerate's per-module offload hooks are excluded from "
            "torch.compile, a graph break around every layer; use --offload model with --compile"
        )
    if s.offload and (s.device == "cpu" or not cuda):
        raise RenderError("--offload needs a CUDA device (it moves weights between the GPU and host memory)")


def check_output_format(path: Path, video: bool | None) -> None:
    """``path``'s extension must have a writer, for a video or an image model when ``video`` says."""
    problem = format_problem(path, video)
    if problem is not None:
        raise RenderError(f"--output {path}: {problem}")


def _check_output_path(path: Path) -> None:
    """The file must be creatable: missing folders are made on writing, under one that can take them."""
    if path.is_dir():
        raise RenderError(f"--output {path} is a folder; name a file in it, e.g. {path / 'out.mp4'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise RenderError(f"--output {path} exists and is not writable; choose another file name")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise RenderError(f"--output {path}: {folder} is a file, not a folder; choose another path")
    if not _can_create_files_in(folder):
        raise RenderError(
            f"--output {path}: cannot create files in {folder}; choose a folder you can write to"
        )


def _can_create_files_in(folder: Path) -> bool:
    """Permission bits are not enough: root passes ``os.access`` on /proc, where creating fails."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_demo(s: RenderSettings) -> None:
    from .demo import check_vocabulary, parse_prompt
    from .demo.pipeline import PIXELS_PER_TOKEN

    try:
        check_vocabulary(s.prompt)
        parse_prompt(s.prompt)
    except ValueError as error:
        raise RenderError(f"--prompt: {error}") from None
    try:
        check_vocabulary(s.negative_prompt or "")
    except ValueError as error:
        raise RenderError(f"--negative-prompt: {error}") from None
    sizes = [("height", s.height), ("width", s.width)]
    if s.base_resolution is not None:
        sizes += [
            ("base-resolution height", s.base_resolution[0]),
            ("base-resolution width", s.base_resolution[1]),
        ]
    for name, value in sizes:
        if value is not None:
            check_size(name, value, PIXELS_PER_TOKEN)
