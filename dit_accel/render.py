"""``dit-accel render``: load a pipeline, enable a method, render, and report what it cost.

One module with one job: turn the command's settings into a rendered file, a JSON sidecar and a
summary. Defaults per model family follow the model cards; every default is written to the sidecar
so that a render can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .attention_timer import AttentionTimer
from .config import resolve_config
from .methods.freeswim import FreeSwimConfig
from .output_file import write_frames
from .sizes import check_frame_size

logger = logging.getLogger(__name__)


class RenderError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with status 2."""


#: Model-card defaults: frames, height, width, steps, guidance, fps (None frames: an image model).
FAMILY_DEFAULTS = {
    "demo": dict(num_frames=9, height=32, width=32, steps=20, guidance_scale=4.0, fps=8),
    "Wan": dict(num_frames=81, height=480, width=832, steps=50, guidance_scale=5.0, fps=16),
    "HunyuanVideo": dict(num_frames=61, height=320, width=512, steps=30, guidance_scale=6.0, fps=15),
    "CogVideoX": dict(num_frames=49, height=480, width=720, steps=50, guidance_scale=6.0, fps=8),
    "PixArt": dict(num_frames=None, height=1024, width=1024, steps=20, guidance_scale=4.5, fps=None),
}
#: Sustained throughput assumed for the up-front CPU time estimate (a few-core desktop CPU).
CPU_FLOPS = 5e10
CPU_MINUTES_LIMIT = 15.0


@dataclass
class RenderSettings:
    model: str
    prompt: str
    output: Path
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    method: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)
    base_resolution: tuple[int, int] | None = None
    dtype: str = "auto"
    device: str = "auto"
    offload: str | None = None
    compile: bool = False
    compare_dense: bool = False
    allow_slow: bool = False


# ------------------------------------------------------------------------------ loading
def load_pipeline(model: str, dtype: torch.dtype) -> Any:
    """``demo``, a local diffusers directory, or a Hub id (needs the network); clear errors otherwise."""
    if model == "demo":
        from .demo import load_demo_pipeline

        return load_demo_pipeline()
    from diffusers import DiffusionPipeline

    local = Path(model)
    try:
        return DiffusionPipeline.from_pretrained(str(local) if local.exists() else model, torch_dtype=dtype)
    except Exception as error:  # the Hub and loaders raise many kinds; say what to do instead
        where = "this local directory" if local.exists() else "a local directory, and the Hugging Face Hub"
        raise RenderError(
            f"could not load model {model!r}: it is not {where} could not provide it "
            f"({type(error).__name__}: {error}). Pass a diffusers model directory, a reachable Hub id, "
            "or 'demo'."
        ) from error


def model_family(pipe: Any) -> str:
    from .demo import DemoVideoPipeline
    from .patches import UnsupportedModelError, adapter_for

    if isinstance(pipe, DemoVideoPipeline):
        return "demo"
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise RenderError(f"{type(pipe).__name__} has no transformer; dit-accel renders DiT pipelines only")
    try:
        return adapter_for(transformer).family
    except UnsupportedModelError as error:
        raise RenderError(str(error)) from error


def pixels_per_token(pipe: Any, family: str) -> int:
    if family == "demo":
        return 4
    transformer = pipe.transformer
    patch = transformer.config.patch_size
    patch = patch[-1] if isinstance(patch, list | tuple) else patch
    scale = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", 8)
    return int(scale) * int(patch)


def check_size(name: str, value: int, multiple: int) -> None:
    try:
        check_frame_size(name, value, multiple)
    except ValueError as error:
        raise RenderError(f"--{error}") from None


def estimate_cpu_minutes(
    pipe: Any, family: str, frames: int | None, height: int, width: int, steps: int
) -> float:
    """Rough CPU time: 2 FLOPs per parameter per token plus attention, x2 for guidance, x steps."""
    transformer = pipe.transformer
    params = sum(p.numel() for p in transformer.parameters())
    cfg = transformer.config
    tokens = (height * width) // pixels_per_token(pipe, family) ** 2
    if frames:
        tokens *= (frames - 1) // 4 + 1 if family != "demo" else frames
    layers = getattr(cfg, "num_layers", 1) + getattr(cfg, "num_single_layers", 0)
    hidden = getattr(cfg, "num_attention_heads", 1) * getattr(cfg, "attention_head_dim", 64)
    flops = 2 * params * tokens + 4 * layers * tokens**2 * hidden
    return 2 * steps * flops / CPU_FLOPS / 60


# ------------------------------------------------------------------------------ running
def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise RenderError(f"--dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def _peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _to_frames(output: Any) -> torch.Tensor:
    """A pipeline's frames or images as a float tensor (B, F, H, W, C) in [0, 1]."""
    frames = getattr(output, "frames", None)
    if frames is None:
        frames = getattr(output, "images", output)
    frames = torch.as_tensor(frames) if not isinstance(frames, torch.Tensor) else frames
    if frames.dim() == 4:  # images (B, H, W, C)
        frames = frames[:, None]
    return frames.float().cpu()


def _run(
    pipe: Any, family: str, s: RenderSettings, resolved: dict, device: str
) -> tuple[torch.Tensor, float, Any]:
    """The frames, the wall time, and FreeSwim's report when its workflow ran (else None)."""
    generator = torch.Generator(device="cpu").manual_seed(s.seed)
    kwargs = dict(
        prompt=s.prompt,
        negative_prompt=s.negative_prompt if s.negative_prompt is not None else "",
        height=resolved["height"],
        width=resolved["width"],
        num_inference_steps=resolved["steps"],
        guidance_scale=resolved["guidance_scale"],
        generator=generator,
        output_type="np",
    )
    if resolved["num_frames"] is not None:
        kwargs["num_frames"] = resolved["num_frames"]
    start = time.perf_counter()
    report = None
    if s.method == "freeswim" and _above_base(s, resolved):
        from .pipelines import freeswim_generate

        config = _freeswim_config(s, pipe, family)
        kwargs.pop("num_frames", None)
        result = freeswim_generate(pipe, num_frames=resolved["num_frames"], config=config, **kwargs)
        frames, report = torch.as_tensor(result.frames), result.report
    else:
        frames = _to_frames(pipe(**kwargs))
    if device == "cuda":
        torch.cuda.synchronize()
    return frames, time.perf_counter() - start, report


def _above_base(s: RenderSettings, resolved: dict) -> bool:
    base = s.base_resolution or (resolved["height"], resolved["width"])
    return resolved["height"] > base[0] or resolved["width"] > base[1]


#: The demo's 9x8x8 token grid is far smaller than the grids the method defaults are set for:
#: 32-token blocks, a window3d window of a third of the grid, FreeSwim without a VAE.
DEMO_METHOD_OPTIONS = {
    "*": dict(block_size=32),
    "window3d": dict(window=(3, 4, 4)),
    "freeswim": dict(vae_scale_factor=1),
}


def method_options(method: str, family: str, s: RenderSettings) -> dict[str, Any]:
    """The config overrides for ``method``: the user's, on top of the demo's where it applies (the
    dense baseline of ``--compare-dense`` takes none of the user's)."""
    options: dict[str, Any] = {}
    if family == "demo":
        options.update(DEMO_METHOD_OPTIONS["*"])
        options.update(DEMO_METHOD_OPTIONS.get(method, {}))
    if method == "dense" and s.method != "dense":
        return {k: v for k, v in options.items() if k == "block_size"}
    if method == "freeswim" and s.base_resolution is not None:
        options["base_resolution"] = s.base_resolution
    options.update(s.method_options)
    return options


def _freeswim_config(s: RenderSettings, pipe: Any, family: str) -> FreeSwimConfig:
    return FreeSwimConfig(**method_options("freeswim", family, s))


def render(s: RenderSettings) -> dict:
    """Render per ``s``; returns the sidecar's contents (also written next to the output)."""
    from .api import disable_sparse_attention, enable_sparse_attention, sparse_attention_report
    from .render_checks import check_output_format, check_settings

    check_settings(s)  # everything that needs no model, before loading one
    device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _dtype(s.dtype, device)
    pipe = load_pipeline(s.model, dtype)
    family = model_family(pipe)
    defaults = FAMILY_DEFAULTS[family]
    check_output_format(s.output, video=defaults["num_frames"] is not None)
    if defaults["num_frames"] is None and s.num_frames is not None:
        raise RenderError(f"--num-frames: {family} renders images; leave --num-frames out")
    resolved = {
        "height": s.height or defaults["height"],
        "width": s.width or defaults["width"],
        "num_frames": (s.num_frames or defaults["num_frames"]) if defaults["num_frames"] else None,
        "steps": s.steps or defaults["steps"],
        "guidance_scale": s.guidance_scale if s.guidance_scale is not None else defaults["guidance_scale"],
    }
    multiple = pixels_per_token(pipe, family)
    check_size("height", resolved["height"], multiple)
    check_size("width", resolved["width"], multiple)
    if s.base_resolution is not None:
        check_size("base-resolution height", s.base_resolution[0], multiple)
        check_size("base-resolution width", s.base_resolution[1], multiple)
    if s.method == "freeswim" and family not in ("Wan", "demo") and _above_base(s, resolved):
        raise RenderError(
            f"--method freeswim renders above the base resolution for Wan (and demo) only, not {family}"
        )
    if device == "cpu" and family != "demo" and not s.allow_slow:
        minutes = estimate_cpu_minutes(
            pipe, family, resolved["num_frames"], resolved["height"], resolved["width"], resolved["steps"]
        )
        if minutes > CPU_MINUTES_LIMIT:
            raise RenderError(
                f"no GPU: this render would take about {minutes:.0f} minutes on the CPU (estimate); use a "
                "CUDA device, a smaller size or fewer steps, or pass --allow-slow to run anyway"
            )
    if s.offload:
        pipe.enable_model_cpu_offload() if s.offload == "model" else pipe.enable_sequential_cpu_offload()
    else:
        pipe.to(device)
    if s.compile:
        from .api import _components
        from .regional_compile import compile_blocks

        for _, transformer in _components(pipe):
            compile_blocks(transformer)

    def one(method: str) -> dict:
        freeswim_workflow = method == "freeswim" and _above_base(s, resolved)
        name = method
        if not freeswim_workflow:
            enable_sparse_attention(pipe, resolve_config(name, **method_options(name, family, s)))
        timer = AttentionTimer(pipe, follow=freeswim_workflow)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            frames, seconds, report = _run(
                pipe,
                family,
                s if method != "dense" else dataclasses.replace(s, method="dense"),
                resolved,
                device,
            )
            report = sparse_attention_report(pipe) if not freeswim_workflow else report
        except torch.OutOfMemoryError as error:
            raise RenderError(
                f"out of memory at {resolved['height']}x{resolved['width']}: try --offload model (or "
                "sequential), a smaller size or fewer frames"
            ) from error
        finally:
            timer.close()
            disable_sparse_attention(pipe)
        return dict(
            frames=frames,
            method=report.method if report is not None else name,
            method_config=_jsonable(report.config) if report is not None else None,
            wall_seconds=round(seconds, 3),
            # In FreeSwim's workflow: the refinement's attention (the draft's is the stock pipeline's).
            attention_seconds=round(timer.seconds, 3),
            density=report.mean_density if report is not None else None,
            # Why layers stayed dense by policy (auto below its break-even): one reason per layer.
            dense_reasons=sorted(set(report.dense_reasons.values())) if report is not None else [],
            peak_memory_bytes=_peak_memory_bytes(device),
        )

    logger.info("%s: %s at %dx%d", family, s.method, resolved["height"], resolved["width"])
    main = one(s.method)
    sidecar = dict(
        dit_accel=__version__,
        torch=torch.__version__,
        model=s.model,
        family=family,
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        seed=s.seed,
        method_requested=s.method,
        method_options=s.method_options,
        base_resolution=list(s.base_resolution) if s.base_resolution else None,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        offload=s.offload,
        compiled=s.compile,  # wall times then include compiling, on the first call of each method
        **resolved,
        **{k: v for k, v in main.items() if k != "frames"},
    )
    if s.method == "freeswim" and _above_base(s, resolved):
        draft = s.base_resolution or (resolved["height"], resolved["width"])
        sidecar["freeswim_workflow"] = dict(
            draft_resolution=list(draft), refined_resolution=[resolved["height"], resolved["width"]]
        )
    output = _save(main["frames"], s.output, defaults["fps"], family)
    sidecar["output"] = str(output)
    sidecar["frames_written"] = int(main["frames"].shape[1])
    if s.compare_dense:
        from .quality import psnr, ssim

        logger.info("rendering the dense baseline from the same seed")
        dense = one("dense")
        sidecar["dense"] = {k: v for k, v in dense.items() if k != "frames"}
        sidecar["speedup_vs_dense"] = round(dense["wall_seconds"] / max(main["wall_seconds"], 1e-9), 3)
        if dense["frames"].shape == main["frames"].shape:
            sidecar["psnr_db_vs_dense"] = round(psnr(main["frames"], dense["frames"]), 2)
            sidecar["ssim_vs_dense"] = round(ssim(main["frames"], dense["frames"]), 4)
    sidecar_path = output.with_suffix(".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def _save(frames: torch.Tensor, output: Path, fps: int | None, family: str) -> Path:
    """Batch item 0 in the format of ``output``'s extension; tiny demo frames enlarged 8x (nearest)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    video = frames[0]  # (F, H, W, C)
    if family == "demo":
        video = video.repeat_interleave(8, 1).repeat_interleave(8, 2)
    write_frames((video.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), output, fps)
    return output


def _jsonable(value: Any) -> Any:
    """A config as JSON: dataclasses as dicts with their type's name, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def summary_lines(sidecar: dict) -> list[str]:
    gib = sidecar["peak_memory_bytes"] / 2**30
    density = "n/a" if sidecar["density"] is None else f"{sidecar['density']:.4f}"
    measured = f"attention {_seconds(sidecar['attention_seconds'])}, density {density}"
    workflow = sidecar.get("freeswim_workflow")
    if workflow is not None:
        (draft_h, draft_w), (height, width) = workflow["draft_resolution"], workflow["refined_resolution"]
        measured = (
            f"FreeSwim: draft at {draft_h}x{draft_w} with stock attention, refined at {height}x{width} "
            f"with {sidecar['method']}: {measured}"
        )
    lines = [
        f"wrote {sidecar['output']} ({sidecar['frames_written']} frame(s)) and its .json sidecar",
        f"wall {sidecar['wall_seconds']:.2f} s, {measured}, peak memory {gib:.2f} GiB",
    ]
    lines += [f"dense by policy: {reason}" for reason in sidecar.get("dense_reasons", [])]
    if "dense" in sidecar:
        extra = ""
        if "psnr_db_vs_dense" in sidecar:
            psnr_value = sidecar["psnr_db_vs_dense"]
            shown = psnr_value if math.isfinite(psnr_value) else "inf"
            extra = f", PSNR {shown} dB, SSIM {sidecar['ssim_vs_dense']}"
        lines.append(
            f"dense: wall {sidecar['dense']['wall_seconds']:.2f} s; "
            f"speedup {sidecar['speedup_vs_dense']}x{extra}"
        )
    return lines


def main_render(s: RenderSettings) -> int:
    try:
        sidecar = render(s)
    except RenderError as error:
        print(f"dit-accel render: error: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(sidecar):
        print(line)
    return 0
