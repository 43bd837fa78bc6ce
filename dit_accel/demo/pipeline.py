"""``DemoVideoPipeline``: text-to-video (and video-to-video) with the demo model, in pixel space."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from ..sizes import check_frame_size
from .model import DemoPromptEncoder, build_transformer

WEIGHTS = Path(__file__).parent / "weights" / "demo.safetensors"
#: Pixels per token along height and width (no VAE; 4x4 patches).
PIXELS_PER_TOKEN = 4


class DemoVideoPipeline(DiffusionPipeline):
    """Like diffusers' Wan pipelines: flow matching with classifier-free guidance, the conditional
    and unconditional calls inside ``transformer.cache_context("cond" / "uncond")``."""

    model_cpu_offload_seq = "prompt_encoder->transformer"

    def __init__(self, transformer, scheduler, prompt_encoder) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, prompt_encoder=prompt_encoder)
        self.vae_scale_factor_spatial = 1

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str = "",
        *,
        num_frames: int = 9,
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        generator: torch.Generator | None = None,
        video: torch.Tensor | None = None,
        strength: float = 1.0,
        output_type: str = "np",
    ):
        """Frames (B, F, H, W, 3) as a numpy array ("np") or (B, F, 3, H, W) tensor ("pt"), in [0, 1].

        ``video`` (B, F, 3, H, W) in [0, 1] with ``strength`` < 1 refines it instead (SDEdit: noise to
        ``strength``, then denoise the remaining steps).
        """
        check_frame_size("height", height, PIXELS_PER_TOKEN)
        check_frame_size("width", width, PIXELS_PER_TOKEN)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device, dtype = self.transformer.device, self.transformer.dtype
        cond = self.prompt_encoder(prompts).to(device, dtype)
        uncond = self.prompt_encoder([negative_prompt] * len(prompts)).to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        noise = torch.randn(len(prompts), 3, num_frames, height, width, generator=generator).to(device, dtype)
        if video is not None and strength < 1.0:
            skip = num_inference_steps - max(1, int(num_inference_steps * strength))
            timesteps = timesteps[skip:]
            sigma = self.scheduler.sigmas[skip].to(device, dtype)
            clean = (video.to(device, dtype).transpose(1, 2) * 2 - 1).expand_as(noise)
            latents = (1 - sigma) * clean + sigma * noise
            self.scheduler.set_begin_index(skip)
        else:
            latents = noise
        for t in self.progress_bar(timesteps):
            step = t.expand(latents.shape[0])
            with self.transformer.cache_context("cond"):
                pred = self.transformer(latents, step, cond, return_dict=False)[0]
            if guidance_scale > 1.0:
                with self.transformer.cache_context("uncond"):
                    pred_uncond = self.transformer(latents, step, uncond, return_dict=False)[0]
                pred = pred_uncond + guidance_scale * (pred - pred_uncond)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        frames = (latents.float().transpose(1, 2) * 0.5 + 0.5).clamp(0, 1)  # (B, F, 3, H, W)
        if output_type == "pt":
            return frames
        return frames.permute(0, 1, 3, 4, 2).cpu().numpy()


def load_demo_pipeline(weights: Path | str = WEIGHTS) -> DemoVideoPipeline:
    """The shipped (or a given) demo checkpoint as a pipeline, on the CPU, float32."""
    from safetensors.torch import load_file

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(
            f"demo weights not found at {weights}; train them with scripts/train_demo_model.py"
        )
    state = load_file(str(weights))
    transformer = build_transformer()
    encoder = DemoPromptEncoder()
    transformer.load_state_dict(
        {k[len("transformer.") :]: v.float() for k, v in state.items() if k.startswith("transformer.")}
    )
    encoder.load_state_dict(
        {k[len("prompt_encoder.") :]: v.float() for k, v in state.items() if k.startswith("prompt_encoder.")}
    )
    meta = (
        json.loads((weights.parent / "demo.json").read_text())
        if (weights.parent / "demo.json").exists()
        else {}
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=meta.get("shift", 2.0))
    return DemoVideoPipeline(transformer.eval(), scheduler, encoder.eval())
