"""FreeSwim's two-stage high-resolution workflow on a user's Wan text-to-video pipeline.

Stage A renders a draft with the pipeline as it is, at the model's training resolution. Stage B
resizes every draft frame (bilinear) to the target size and refines it with a video-to-video pass
built from the same components (no second download): VAE-encode (posterior mode), noise to
``strength`` (0.7: 35 of 50 steps), flow shift 9.0, CFG 5.0, with FreeSwim's window branch and
full-attention guide enabled on the transformer for that pass only (spec 3.2).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..api import _sessions, disable_sparse_attention, enable_sparse_attention, sparse_attention_report
from ..methods.freeswim import FreeSwimConfig
from ..report import SparseAttentionReport
from ..sizes import check_frame_size, nearest_valid_size

logger = logging.getLogger(__name__)

__all__ = ["FreeSwimResult", "freeswim_cache_bytes", "freeswim_generate", "nearest_valid_size"]


@dataclass
class FreeSwimResult:
    """The refined video (``frames``, in ``output_type``), stage A's (``draft``, B F C H W in [0, 1])
    and what FreeSwim's attention did in the refinement (``report``)."""

    frames: Any
    draft: torch.Tensor
    report: SparseAttentionReport | None = None


def freeswim_cache_bytes(
    transformer: torch.nn.Module,
    height: int,
    width: int,
    num_frames: int,
    vae_scale_factor: int = 8,
    passes: int = 1,
) -> int:
    """Bytes of cache mode's cross-attention cache for one generation at this size (spec 3.5).

    One output of (tokens x hidden size) per block and overridden CFG pass (``passes``: 2 with
    ``override_uncond=True``), in the transformer's dtype; the temporal VAE stride of Wan is 4.
    """
    cfg = transformer.config
    p_t, p_h, p_w = cfg.patch_size
    frames = (num_frames - 1) // 4 + 1
    tokens = (frames // p_t) * (height // vae_scale_factor // p_h) * (width // vae_scale_factor // p_w)
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    element = torch.empty((), dtype=transformer.dtype).element_size()
    return passes * cfg.num_layers * tokens * hidden * element


def freeswim_generate(
    pipe: Any,
    prompt: str | list[str],
    *,
    height: int,
    width: int,
    num_frames: int = 81,
    negative_prompt: str | list[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    strength: float = 0.7,
    flow_shift: float = 9.0,
    generator: torch.Generator | None = None,
    draft: torch.Tensor | None = None,
    config: FreeSwimConfig | None = None,
    output_type: str = "np",
    **pipeline_kwargs: Any,
) -> FreeSwimResult:
    """Render ``prompt`` at (height, width) with FreeSwim from a Wan text-to-video pipeline.

    Args:
        pipe: a ``WanPipeline`` (Wan 2.1 or 2.2 text-to-video); left as it was afterwards.
        height, width: the target size in pixels, multiples of 16 (a clear error names the nearest).
        config: FreeSwim settings; its ``base_resolution`` is also the draft's size (default
            ``FreeSwimConfig()``: 480x832, the Wan 2.1 1.3B training size).
        draft: stage A's frames (B, F, C, H, W) in [0, 1] to refine instead of rendering one.
        strength, flow_shift, guidance_scale: stage B's settings (reference: 0.7, 9.0, 5.0).
        **pipeline_kwargs: passed to both pipeline calls (e.g. ``max_sequence_length``).

    Returns the refined frames and the draft.
    """
    from diffusers import WanVideoToVideoPipeline

    from ..demo import DemoVideoPipeline

    config = config or FreeSwimConfig()
    if _sessions(pipe):
        raise ValueError(
            "sparse attention is enabled on this pipeline; call pipe.disable_sparse_attention() first "
            "(the workflow renders the draft with the stock pipeline and enables FreeSwim for the refinement)"
        )
    multiple = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    check_frame_size("height", height, multiple)
    check_frame_size("width", width, multiple)
    base_h, base_w = config.base_resolution
    if isinstance(pipe, DemoVideoPipeline):  # pixel space: the pipeline refines a video itself
        return _demo_workflow(
            pipe,
            prompt,
            negative_prompt,
            height,
            width,
            num_frames,
            num_inference_steps,
            guidance_scale,
            strength,
            generator,
            draft,
            config,
            output_type,
        )
    # The prompt is encoded once, by the text-to-video pipeline, for both stages (diffusers'
    # video-to-video pipeline also needs the optional ``ftfy`` package to clean prompt strings).
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt,
        negative_prompt,
        do_classifier_free_guidance=guidance_scale > 1.0,
        max_sequence_length=pipeline_kwargs.pop("max_sequence_length", 512),
        device=pipe._execution_device,
    )
    common = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        **pipeline_kwargs,
    )
    if draft is None:
        logger.info("FreeSwim stage A: draft at %dx%d", base_h, base_w)
        draft = pipe(height=base_h, width=base_w, num_frames=num_frames, output_type="pt", **common).frames
    frames = draft.shape[1]
    resized = _resize(draft, height, width)

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)
    refine = WanVideoToVideoPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        transformer=pipe.transformer,
        vae=pipe.vae,
        scheduler=scheduler,
    )
    refine.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    config = dataclasses.replace(config, vae_scale_factor=pipe.vae_scale_factor_spatial)
    if config.cache:
        passes = 2 if config.override_uncond else 1
        size = freeswim_cache_bytes(
            pipe.transformer, height, width, frames, pipe.vae_scale_factor_spatial, passes=passes
        )
        logger.info("FreeSwim cache mode: the cross-attention cache takes %.2f GiB", size / 2**30)
    logger.info("FreeSwim stage B: refine at %dx%d, strength %.2f", height, width, strength)
    enable_sparse_attention(refine, config)
    try:
        out = refine(
            video=resized, height=height, width=width, strength=strength, output_type=output_type, **common
        )
        report = sparse_attention_report(refine)
    finally:
        disable_sparse_attention(refine)
    return FreeSwimResult(out.frames, draft, report)


def _demo_workflow(
    pipe,
    prompt,
    negative_prompt,
    height,
    width,
    num_frames,
    steps,
    guidance_scale,
    strength,
    generator,
    draft,
    config,
    output_type,
) -> FreeSwimResult:
    """The same two stages on the built-in demo model (pixel space, no VAE, no flow-shift change)."""
    common = dict(
        negative_prompt=negative_prompt or "",
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    base_h, base_w = config.base_resolution
    if draft is None:
        draft = pipe(prompt, height=base_h, width=base_w, output_type="pt", **common)
    resized = _resize(draft, height, width)
    enable_sparse_attention(pipe, config)
    try:
        frames = pipe(
            prompt,
            height=height,
            width=width,
            video=resized,
            strength=strength,
            output_type=output_type,
            **common,
        )
        report = sparse_attention_report(pipe)
    finally:
        disable_sparse_attention(pipe)
    return FreeSwimResult(frames, draft, report)


def _resize(draft: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (B, F, C, H, W) frames in [0, 1]."""
    resized = torch.nn.functional.interpolate(
        draft.flatten(0, 1).float(), size=(height, width), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    return resized.view(*draft.shape[:2], *resized.shape[1:])
