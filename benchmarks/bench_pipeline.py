"""End-to-end denoising latency of real model architectures with random weights (no download).

Each pipeline is a real diffusers pipeline whose transformer has the published architecture with
random weights; text encoders are skipped (random prompt embeddings of the right width), the VAE
decode too (``output_type="latent"``), so the time is the denoising loop: transformer calls,
guidance and the scheduler. Every registered method runs with its defaults (FreeSwim outside Wan
in its experimental window-alone mode: the other families have no cross-attention to guide).
Per-step time = the call's wall time / steps after a one-step warm-up (which also autotunes
kernels); attention share from a second run that times every attention call (synchronising the
GPU around each).

GPU shapes: Wan 2.1 1.3B at 480p and 720p (81 frames); HunyuanVideo at 320x512 (61 frames) and
CogVideoX-5B at 480x720 (49 frames) with **reduced depth** (4 + 8 and 8 blocks) to fit the time
budget; PixArt-Sigma at 1K and 2K. On a CPU it runs the test suite's tiny pipelines instead
(scaled-down configs, block 16), so the script works and is tested everywhere.

    python benchmarks/bench_pipeline.py --out benchmarks/results/      # GPU
    python benchmarks/bench_pipeline.py --device cpu                   # scaled-down

``--compile`` compiles the transformer blocks first (regional compilation, inductor,
``fullgraph=True``: the attention backend is one custom op) and writes ``pipeline_*_compiled.md``;
the warm-up call then includes compilation, recompiled for every method.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tiny_pipelines as tp  # noqa: E402
from timing import commit, machine  # noqa: E402

import dit_accel  # noqa: E402
from dit_accel.attention_timer import AttentionTimer  # noqa: E402
from dit_accel.regional_compile import compile_blocks  # noqa: E402

#: Every registered method, dense first (the speed-ups are against it).
METHODS = ["dense", *(m for m in dit_accel.available_methods() if m != "dense")]

WAN_13B = dict(
    num_attention_heads=12, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30
)

# name, tiny builder, real config overrides of the tiny transformer, call size, depth note
GPU_CASES = [
    (
        "Wan 2.1 1.3B 480p",
        "wan21",
        WAN_13B,
        dict(height=480, width=832, num_frames=81),
        "",
    ),
    (
        "Wan 2.1 1.3B 720p",
        "wan21",
        WAN_13B,
        dict(height=720, width=1280, num_frames=81),
        "",
    ),
    (
        "HunyuanVideo 320x512",
        "hunyuan_video",
        dict(
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=4,
            num_single_layers=8,
            text_embed_dim=4096,
            pooled_projection_dim=768,
            rope_axes_dim=(16, 56, 56),
        ),
        dict(height=320, width=512, num_frames=61),
        "depth 4 + 8 of 20 + 40",
    ),
    (
        "CogVideoX-5B 480x720",
        "cogvideox",
        dict(
            num_attention_heads=48,
            attention_head_dim=64,
            num_layers=8,
            text_embed_dim=4096,
            use_rotary_positional_embeddings=True,
            sample_height=60,
            sample_width=90,
        ),
        dict(height=480, width=720, num_frames=49),
        "depth 8 of 42",
    ),
    (
        "PixArt-Sigma 1K",
        "pixart_sigma",
        dict(
            num_attention_heads=16,
            attention_head_dim=72,
            num_layers=28,
            cross_attention_dim=1152,
            caption_channels=4096,
            sample_size=128,
        ),
        dict(height=1024, width=1024),
        "",
    ),
    (
        "PixArt-Sigma 2K",
        "pixart_sigma",
        dict(
            num_attention_heads=16,
            attention_head_dim=72,
            num_layers=28,
            cross_attention_dim=1152,
            caption_channels=4096,
            sample_size=256,
        ),
        dict(height=2048, width=2048),
        "",
    ),
]
CPU_CASES = [
    (name, name, None, None, "tiny config")
    for name in ("wan21", "hunyuan_video", "cogvideox", "pixart_sigma")
]
CPU_OPTIONS = {
    "window3d": dict(window=(1, 4, 4)),
    "vmoba": dict(
        scale_chunks=False, temporal_chunk_size=1, spatial_chunk_size=(5, 7), st_chunk_size=(1, 5, 7)
    ),
    "rectified": dict(dense_steps=0, dense_layers=()),
    "freeswim": dict(window=(3, 3)),
}
#: FreeSwim's full-attention guide overrides Wan's text cross-attention; the other families have
#: none, so there it runs the window alone (its experimental mode).
FREESWIM_WITHOUT_CROSS_ATTENTION = dict(experimental=True, cross_attn_override=False)


def _text_width(transformer: torch.nn.Module) -> tuple[int, str]:
    cfg = transformer.config
    for key in ("text_dim", "text_embed_dim", "caption_channels"):
        if key in cfg:
            return cfg[key], key
    raise KeyError("no text width in the transformer config")


def build(builder: str, overrides: dict | None, device: str, dtype: torch.dtype):
    """The tiny pipeline with (optionally) a real-size random transformer, and its call kwargs."""
    pipe, call = tp.BUILDERS[builder]()
    if overrides:
        config = dict(pipe.transformer.config)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        config.update(overrides)
        torch.manual_seed(0)
        pipe.transformer = type(pipe.transformer)(**config)
    pipe.to(device, dtype)
    width, _ = _text_width(pipe.transformer)
    call = {k: v for k, v in call.items() if k not in ("prompt", "negative_prompt", "max_sequence_length")}
    g = torch.Generator().manual_seed(1)
    family = builder.split("_")[0]
    length = {"wan21": 512, "hunyuan": 256, "cogvideox": 226, "pixart": 300}[family] if overrides else 16

    def embeds() -> torch.Tensor:
        return torch.randn(1, length, width, generator=g).to(device, dtype)

    call["prompt_embeds"] = embeds()
    if family == "hunyuan":
        pooled = pipe.transformer.config.pooled_projection_dim
        call["pooled_prompt_embeds"] = torch.randn(1, pooled, generator=g).to(device, dtype)
        call["prompt_attention_mask"] = torch.ones(1, length, dtype=torch.bool, device=device)
    else:
        call["negative_prompt_embeds"] = embeds()
    if family == "pixart":
        call["negative_prompt"] = None  # its default "" would clash with the embeddings
        call["prompt_attention_mask"] = torch.ones(1, length, dtype=torch.long, device=device)
        call["negative_prompt_attention_mask"] = torch.ones(1, length, dtype=torch.long, device=device)
    call["output_type"] = "latent"
    return pipe, call


def timed_call(pipe, call: dict, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        pipe(**call, generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_case(
    name, builder, overrides, size, note, *, device, dtype, steps, methods, deadline, compiled=False
) -> list[str]:
    pipe, call = build(builder, overrides, device, dtype)
    if size:
        call.update(size)
    if compiled:
        compile_blocks(pipe.transformer)
    rows, dense_step = [], None
    for method in methods:
        if time.time() > deadline:
            rows.append(f"| {name} | {method} | skipped (time budget) | | | | | |")
            continue
        if compiled:
            torch._dynamo.reset()  # a fresh compile per method, never the recompile limit
        options = {} if overrides else dict(CPU_OPTIONS.get(method, {}), block_size=16)
        if method == "freeswim" and not builder.startswith("wan"):
            options.update(FREESWIM_WITHOUT_CROSS_ATTENTION)
        if method != "dense":
            dit_accel.enable_sparse_attention(pipe, method, **options)
        else:
            dit_accel.enable_sparse_attention(pipe, "dense")
        try:
            timed_call(pipe, dict(call, num_inference_steps=1), device)  # warm-up, autotuning
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = timed_call(pipe, dict(call, num_inference_steps=steps), device) / steps
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device == "cuda" else "n/a"
            report = dit_accel.sparse_attention_report(pipe)
            timer = AttentionTimer(pipe)
            try:
                total = timed_call(pipe, dict(call, num_inference_steps=steps), device)
            finally:
                timer.close()
        finally:
            dit_accel.disable_sparse_attention(pipe)
        dense_step = step if method == "dense" else dense_step
        speedup = f"{dense_step / step:.2f}x" if dense_step else "n/a"
        rows.append(
            f"| {name} | {method} | {step * 1e3:.1f} | {timer.seconds / total:.2f} | {speedup} | "
            f"{report.mean_density:.3f} | {peak} | {note} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 4, CPU 3)")
    parser.add_argument(
        "--methods", nargs="*", default=METHODS, help=f"methods to time (default: {' '.join(METHODS)})"
    )
    parser.add_argument(
        "--budget", type=float, default=280.0, help="seconds, then remaining runs are skipped"
    )
    parser.add_argument("--cases", nargs="*", help="only these case names (substring match)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compile", action="store_true", help="compile the transformer blocks first")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    cases = GPU_CASES if gpu else CPU_CASES
    if args.cases:
        cases = [c for c in cases if any(s.lower() in c[0].lower() for s in args.cases)]
    steps = args.steps or (4 if gpu else 3)
    dtype = torch.bfloat16 if gpu else torch.float32
    deadline = time.time() + args.budget
    lines = [
        "| pipeline | method | ms / step | attention share | speedup vs dense | density | peak GiB | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        lines += run_case(
            *case,
            device=args.device,
            dtype=dtype,
            steps=steps,
            methods=args.methods,
            deadline=deadline,
            compiled=args.compile,
        )
    header = [
        f"# Pipeline latency ({'GPU' if gpu else 'CPU, scaled-down tiny configs'})"
        + (", transformer blocks compiled (inductor, fullgraph)" if args.compile else ""),
        "",
        f"Date {date.today()}, commit {commit()}. Machine: {machine()}"
        + (f", {torch.cuda.get_device_name()}" if gpu else "")
        + f". {steps} timed denoising steps after a 1-step warm-up; random weights; methods with defaults.",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = ("pipeline_gpu" if gpu else "pipeline_cpu") + ("_compiled" if args.compile else "") + ".md"
        (args.out / name).write_text(text)
    return text


if __name__ == "__main__":
    main()
