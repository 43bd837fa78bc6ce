"""The ``dit-accel`` command: ``info``, ``render`` (a video or image, optionally against dense), ``bench``."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from . import __version__
from .config import available_methods


def _info() -> int:
    import torch

    from .patches import supported_families

    print(f"dit-accel {__version__}")
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    print(f"model families: {', '.join(supported_families())}")
    print(f"methods: {', '.join(available_methods())}")
    return 0


def _method_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as an int, float, bool, tuple (``a,b``) or kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--method-option expects key=value, got {text!r}")

    def scalar(item: str) -> object:
        lowered = item.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        for kind in (int, float):
            try:
                return kind(item)
            except ValueError:
                pass
        return item

    parts = [scalar(p) for p in raw.split(",")]
    return key, tuple(parts) if len(parts) > 1 else parts[0]


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 480x832, got {text!r}") from None
    return h, w


def _add_render(commands) -> None:
    p = commands.add_parser("render", help="render a video (or image) with sparse attention")
    p.add_argument("--model", required=True, help="diffusers model id or local path, or 'demo'")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="auto", choices=["auto", *available_methods()])
    p.add_argument("--method-option", type=_method_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--base-resolution", type=_resolution, metavar="HxW")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--offload", choices=["model", "sequential"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (wall time then includes compiling)",
    )
    p.add_argument(
        "--compare-dense", action="store_true", help="also render dense; report speedup, PSNR, SSIM"
    )
    p.add_argument("--allow-slow", action="store_true", help="run even when the CPU estimate is long")
    p.add_argument("--output", required=True, type=Path, help="out.mp4 (images are written as .png)")


def _render(args: argparse.Namespace) -> int:
    import logging

    from .render import RenderSettings, main_render

    logging.basicConfig(format="dit-accel: %(message)s")
    logging.getLogger("dit_accel").setLevel(logging.INFO)  # stage messages (draft, refine, baseline)
    settings = RenderSettings(
        model=args.model,
        prompt=args.prompt,
        output=args.output,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        method=args.method,
        method_options=dict(args.method_option),
        base_resolution=args.base_resolution,
        dtype=args.dtype,
        device=args.device,
        offload=args.offload,
        compile=args.compile,
        compare_dense=args.compare_dense,
        allow_slow=args.allow_slow,
    )
    return main_render(settings)


BENCHMARKS = {"attention": "bench_attention.py", "pipeline": "bench_pipeline.py"}


def _bench(which: str, rest: list[str]) -> int:
    """Run a benchmark script of the source checkout with the remaining arguments."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / BENCHMARKS[which]
    if not script.exists():
        print(
            f"dit-accel bench: error: {script.name} ships with the source checkout (benchmarks/), "
            "not the installed package; run it from a clone of the repository",
            file=sys.stderr,
        )
        return 2
    saved = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dit-accel", description="Training-free sparse attention for diffusers."
    )
    parser.add_argument("--version", action="version", version=f"dit-accel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, supported model families and methods")
    _add_render(commands)
    bench = commands.add_parser("bench", help="run a benchmark (extra arguments go to the script)")
    bench.add_argument("which", choices=sorted(BENCHMARKS))
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(args.which, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        return _info()
    return _render(args)


if __name__ == "__main__":
    sys.exit(main())
