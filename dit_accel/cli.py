"""The ``dit-accel`` command: ``info``, ``render`` (a video or image, optionally against dense), ``bench``."""

from __future__ import annotations

import argparse
import ast
import runpy
import sys
from pathlib import Path

from . import __version__
from .config import available_methods
from .output_file import supported_suffixes


def _info() -> int:
    import torch

    from .patches import supported_families

    print(f"dit-accel {__version__}")
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    print(f"model families: {', '.join(supported_families())}")
    print(f"methods: {', '.join(available_methods())}")
    return 0


def _method_option(text: str) -> tuple[str, object]:
    """``key=value``; the method's config checks the value (before any model is loaded)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--method-option expects key=value, got {text!r}")
    return key, _option_value(raw.strip())


def _option_value(text: str) -> object:
    """A Python literal (``16``, ``0.3``, ``True``, ``None``, ``1,4,4`` or ``(1, 4, 4)``; lists become
    tuples), with ``true``/``false``/``none`` in any case; anything else stays text (``torch``)."""
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return None if lowered == "none" else lowered == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text
    return _as_tuples(value)


def _as_tuples(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(item) for item in value)
    return value


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 480x832, got {text!r}") from None
    return h, w


def _add_render(commands) -> None:
    p = commands.add_parser("render", help="render a video (or image) with sparse attention")
    p.add_argument(
        "--model", required=True, help="diffusers model directory or Hub id, or 'demo' (the built-in model)"
    )
    p.add_argument("--prompt", required=True, help="the text prompt ('demo': its vocabulary only)")
    p.add_argument("--negative-prompt", help="the negative prompt for guidance (default: empty)")
    p.add_argument("--height", type=int, help="frame height in pixels (default: the model card's)")
    p.add_argument("--width", type=int, help="frame width in pixels (default: the model card's)")
    p.add_argument(
        "--num-frames", type=int, help="frames to render, video models (default: the model card's)"
    )
    p.add_argument("--steps", type=int, help="denoising steps (default: the model card's)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance scale, >= 0 (default: the model card's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: 0)")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", *(m for m in available_methods() if m != "auto")],
        help="sparse-attention method (default: auto)",
    )
    p.add_argument(
        "--method-option",
        type=_method_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a field of the method's config, e.g. block_size=64 or window=1,4,4 (repeatable)",
    )
    p.add_argument(
        "--base-resolution",
        type=_resolution,
        metavar="HxW",
        help="--method freeswim: the model's training size; above it, draft there and refine at the target",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations (default: bfloat16 on CUDA, float32 on the CPU)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to run (default: CUDA when available)",
    )
    p.add_argument(
        "--offload",
        choices=["model", "sequential"],
        help="CPU offload (CUDA only): diffusers' enable_model_cpu_offload or enable_sequential_cpu_offload",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (wall time then includes compiling)",
    )
    p.add_argument(
        "--compare-dense", action="store_true", help="also render dense; report speedup, PSNR, SSIM"
    )
    p.add_argument(
        "--allow-slow", action="store_true", help="run even when the CPU time estimate exceeds 15 minutes"
    )
    p.add_argument(
        "--output",
        required=True,
        type=Path,
        help=f"the file to write, its format from its extension ({supported_suffixes()}); "
        "the JSON sidecar goes beside it with the extension .json",
    )


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
#: The folder holding the ``dit_accel`` package: a source checkout's root unless pip installed it.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def _checkout_above(folder: Path) -> Path | None:
    """The dit-accel source checkout that is ``folder`` or holds it, or None."""
    for candidate in (folder, *folder.parents):
        pyproject = candidate / "pyproject.toml"
        ours = pyproject.is_file() and 'name = "dit-accel"' in pyproject.read_text(errors="replace")
        if ours and (candidate / "benchmarks").is_dir():
            return candidate
    return None


def _bench(which: str, rest: list[str]) -> int:
    """Run a benchmark script of the source checkout with the remaining arguments.

    The scripts are not in the wheel: they are looked for beside the package (a source tree or an
    editable install), then in the checkout the working directory is in (a clone with the package
    installed from it non-editable)."""
    looked = [PACKAGE_PARENT / "benchmarks"]
    checkout = _checkout_above(Path.cwd())
    if checkout is not None and checkout / "benchmarks" not in looked:
        looked.append(checkout / "benchmarks")
    script = next(
        (folder / BENCHMARKS[which] for folder in looked if (folder / BENCHMARKS[which]).is_file()), None
    )
    if script is None:
        print(
            f"dit-accel bench: error: {BENCHMARKS[which]} is not in {' or '.join(map(str, looked))}, "
            f"nor in a dit-accel checkout at or above {Path.cwd()}: the benchmarks ship only in the "
            "source checkout, not in the installed package; git clone <repository-url>, then run "
            f"dit-accel bench {which} inside the clone",
            file=sys.stderr,
        )
        return 2
    saved = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)  # sys.exit("message"), as the interpreter would
        return 1
    finally:
        sys.argv = saved
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dit-accel", description="Training-free sparse attention for diffusers."
    )
    parser.add_argument("--version", action="version", version=f"dit-accel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="print versions, CUDA availability, supported model families and methods"
    )
    _add_render(commands)
    # No -h of its own: `dit-accel bench pipeline --help` shows the script's options.
    bench = commands.add_parser(
        "bench",
        add_help=False,
        help="run a benchmark script of the source checkout; the arguments after its name go to it",
    )
    bench.add_argument(
        "which",
        choices=sorted(BENCHMARKS),
        help="attention: benchmarks/bench_attention.py (kernels); pipeline: benchmarks/bench_pipeline.py",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
