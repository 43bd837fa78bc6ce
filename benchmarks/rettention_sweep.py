"""Re-ttention fidelity on the tiny pipelines: the ratio and residual corrections at 3 % and 6 %.

Each pipeline runs dense and with Re-ttention from the same seed at its reference-like schedule
(PixArt-Sigma 20 steps, CogVideoX 50 steps, Wan 2.1 20 steps), for every combination of
``use_ratio`` and ``use_residual``; PSNR / relative L2 of the output latents against dense, the
mean block density and the state memory.

    python benchmarks/rettention_sweep.py --out benchmarks/results/rettention_cpu.md
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity  # noqa: E402
import tiny_pipelines as tp  # noqa: E402
from timing import commit, machine  # noqa: E402

import dit_accel  # noqa: E402

STEPS = {"pixart_sigma": 20, "cogvideox": 50, "wan21": 20}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="+", default=list(STEPS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    lines = [
        "# Re-ttention on the tiny pipelines (CPU)",
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}.",
        "",
        "Random-weight toys; output latents vs dense from the same seed; block 16. The window is "
        "`sparsity` of the tokens (PixArt: 1-D band, CogVideoX: per-frame window, Wan: 3D window). "
        "Density = mean fraction of query x key blocks computed over all calls (dense and refresh steps "
        "count 1). State = cached rho and residual at the end of the run.",
        "",
        "| pipeline | steps | sparsity | ratio | residual | PSNR dB | rel. L2 | mean density | state KiB |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for name in args.pipelines:
        pipe, call = tp.BUILDERS[name]()
        call = dict(call, num_inference_steps=STEPS.get(name, 20))
        for sparsity in (0.03125, 0.0625):
            for use_ratio, use_residual in ((False, False), (True, False), (False, True), (True, True)):
                options = dict(
                    block_size=16, sparsity=sparsity, use_ratio=use_ratio, use_residual=use_residual
                )
                result = fidelity.compare(pipe, call, "rettention", **options)
                dit_accel.enable_sparse_attention(pipe, "rettention", **options)
                tp.run(pipe, call)
                state = dit_accel.sparse_attention_report(pipe).state_bytes
                dit_accel.disable_sparse_attention(pipe)
                lines.append(
                    f"| {name} | {call['num_inference_steps']} | {sparsity} | {use_ratio} | {use_residual} | "
                    f"{result['psnr_db']:.1f} | {result['relative_l2']:.4f} | {result['mean_density']:.3f} | "
                    f"{state / 1024:.0f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
