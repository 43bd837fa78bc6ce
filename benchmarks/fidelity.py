"""Fidelity of a sparse method to dense attention on a whole pipeline, from the same seed.

Runs the pipeline twice (dense, then with the method) and compares the output latents: PSNR
(peak = the dense output's value range) and relative L2, plus the realized density and wall time
of each run. Usable on the tiny offline pipelines of the test suite (``--tiny NAME``) and on a
local diffusers checkpoint (``--model PATH``).

    python benchmarks/fidelity.py --tiny wan21 --method window3d --option block_size=16 --option window=1,4,4
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import dit_accel
from dit_accel.quality import psnr

ROOT = Path(__file__).resolve().parents[1]


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.double() - reference.double()).norm() / reference.double().norm())


def _run(pipe: Any, call: dict, seed: int) -> tuple[torch.Tensor, float]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        result = pipe(**call, generator=generator)
    elapsed = time.perf_counter() - start
    output = result.frames if hasattr(result, "frames") else result.images
    if not isinstance(output, torch.Tensor):
        output = torch.as_tensor(output)
    return output.detach().float().cpu(), elapsed


def compare(pipe: Any, call: dict, method: str, seed: int = 0, **options: Any) -> dict:
    """Dense vs ``method`` on one pipeline call; the pipeline is left with sparse attention disabled.

    ``call`` must make the pipeline return latents or tensors (e.g. ``output_type="latent"``).
    """
    dit_accel.disable_sparse_attention(pipe)
    dense, dense_time = _run(pipe, call, seed)
    dit_accel.enable_sparse_attention(pipe, method, **options)
    try:
        sparse, sparse_time = _run(pipe, call, seed)
        report = dit_accel.sparse_attention_report(pipe)
    finally:
        dit_accel.disable_sparse_attention(pipe)
    if not torch.isfinite(sparse).all():
        raise FloatingPointError(f"{method} produced non-finite outputs")
    return {
        "method": method,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "psnr_db": psnr(sparse, dense),
        "relative_l2": relative_l2(sparse, dense),
        "mean_density": report.mean_density,
        "dense_seconds": dense_time,
        "sparse_seconds": sparse_time,
    }


def _parse_option(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, tuple(value) if isinstance(value, list) else value


def _load(args: argparse.Namespace) -> tuple[Any, dict]:
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_pipelines

        return tiny_pipelines.BUILDERS[args.tiny](seed=args.seed)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    call = {"prompt": args.prompt, "num_inference_steps": args.steps, "output_type": "latent"}
    return pipe, call


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", help="a tiny offline pipeline of the test suite, e.g. wan21")
    source.add_argument("--model", help="path of a local diffusers pipeline")
    parser.add_argument("--method", required=True)
    parser.add_argument("--option", action="append", default=[], help="config field, e.g. window=1,4,4")
    parser.add_argument("--prompt", default="a red square moving right")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    pipe, call = _load(args)
    result = compare(pipe, call, args.method, seed=args.seed, **dict(map(_parse_option, args.option)))
    result["pipeline"] = args.tiny or args.model
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
