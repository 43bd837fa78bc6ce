"""The two trained proxy models and their pipelines, loaded offline by ``load_proxy``.

- ``video``: a ``WanTransformer3DModel`` on 8 latent frames x 16 x 32 tokens (4,096 video tokens;
  frames of 128 x 256 pixels), 5 layers x 4 heads x 64, rectified flow, conditioned on which
  photograph the clip pans over.
- ``image``: a ``PixArtTransformer2DModel`` on 32 x 32 tokens (1,024 tokens; 256 x 256 pixels),
  6 layers x 3 heads x 64, rectified flow, conditioned on the photograph.

Both work in the fixed linear latent space of ``codec.py`` (16 channels at 1/4 of the pixel size)
and use a learnt class embedding in place of a text encoder (``NULL_CLASS`` for the unconditional
branch). Their pipelines follow the stock diffusers ones where dit-accel looks: the Wan proxy calls
the transformer twice per step inside ``cache_context("cond" / "uncond", step_index=...)`` as
``WanPipeline`` does, the PixArt proxy batches the two branches as ``PixArtSigmaPipeline`` does;
both call ``callback_on_step_end(pipe, i, t, {"latents": ...})`` after every step and honour a
replacement, which is how the quality benchmark feeds the dense trajectory (teacher forcing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    PixArtTransformer2DModel,
    WanTransformer3DModel,
)

from .codec import LatentCodec
from .data import NULL_CLASS, PHOTOS

WEIGHTS = Path(__file__).parent / "weights"
CLASS_TOKENS = 4
CLASS_DIM = 64
SHIFT = 3.0

VIDEO_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    text_dim=CLASS_DIM,
    freq_dim=64,
    ffn_dim=512,
    num_layers=5,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=256,
)
IMAGE_CONFIG = dict(
    num_attention_heads=3,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    num_layers=6,
    cross_attention_dim=192,
    caption_channels=CLASS_DIM,
    sample_size=64,
    patch_size=2,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    use_additional_conditions=False,
)
#: Default generation sizes, in pixels (the token grids the proxies were trained for).
VIDEO_SIZE = dict(num_frames=8, height=128, width=256)
IMAGE_SIZE = dict(height=256, width=256)


class ClassEncoder(torch.nn.Module):
    """Photograph index -> (B, 4, 64) "text" embeddings; ``NULL_CLASS`` is the empty prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(NULL_CLASS + 1, CLASS_TOKENS * CLASS_DIM)

    @property
    def dtype(self) -> torch.dtype:  # DiffusionPipeline.to() reads these of every component
        return self.table.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.table.weight.device

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        return self.table(classes.to(self.device)).view(-1, CLASS_TOKENS, CLASS_DIM)


def class_ids(prompt: str | int | list) -> torch.Tensor:
    """Class indices from photograph names ("coffee") or indices; a ValueError lists the names."""
    items = prompt if isinstance(prompt, list | tuple) else [prompt]
    ids = []
    for item in items:
        if isinstance(item, int) and 0 <= item < len(PHOTOS):
            ids.append(item)
        elif isinstance(item, str) and item in PHOTOS:
            ids.append(PHOTOS.index(item))
        else:
            raise ValueError(
                f"the proxy models know the photographs {list(PHOTOS)} (or their indices); got {item!r}"
            )
    return torch.tensor(ids)


class _ProxyPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "class_encoder->transformer"

    def __init__(self, transformer, scheduler, class_encoder, codec) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, class_encoder=class_encoder, codec=codec
        )

    def _velocity(self, latents, t, i, cond, uncond, guidance_scale):
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | int | list = 0,
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        **size,
    ):
        """Frames in [0, 1] as numpy (``"np"``: (B, [F,] H, W, 3)), decoded tensors (``"pt"``:
        (B, [F,] 3, H, W)) or the latents (``"latent"``)."""
        classes = class_ids(prompt)
        device, dtype = self.transformer.device, self.transformer.dtype
        cond = self.class_encoder(classes).to(device, dtype)
        uncond = self.class_encoder(torch.full_like(classes, NULL_CLASS)).to(device, dtype)
        latents = torch.randn(self._latent_shape(len(classes), **size), generator=generator).to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            velocity = self._velocity(latents, t, i, cond, uncond, guidance_scale)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, t, {"latents": latents})
                latents = out.get("latents", latents)
        if output_type == "latent":
            return latents
        frames = self._decode(latents.float())
        return frames if output_type == "pt" else frames.movedim(-3, -1).cpu().numpy()


class ProxyVideoPipeline(_ProxyPipeline):
    """Class-to-video with the Wan proxy: latents (B, 16, F, H/4, W/4)."""

    def _latent_shape(self, batch, num_frames=8, height=128, width=256):
        return (batch, self.codec.channels, num_frames, height // 4, width // 4)

    def _velocity(self, latents, t, i, cond, uncond, guidance_scale):
        step = t.expand(latents.shape[0])
        context = dict(step_index=i, sigma=float(self.scheduler.sigmas[i]))
        with self.transformer.cache_context("cond", **context):
            pred = self.transformer(latents, step, cond, return_dict=False)[0]
        if guidance_scale > 1.0:
            with self.transformer.cache_context("uncond", **context):
                pred_uncond = self.transformer(latents, step, uncond, return_dict=False)[0]
            pred = pred_uncond + guidance_scale * (pred - pred_uncond)
        return pred

    def _decode(self, latents):
        return self.codec.decode(latents.transpose(1, 2))  # (B, F, 3, H, W)


class ProxyImagePipeline(_ProxyPipeline):
    """Class-to-image with the PixArt proxy: latents (B, 16, H/4, W/4)."""

    def _latent_shape(self, batch, height=256, width=256):
        return (batch, self.codec.channels, height // 4, width // 4)

    def _velocity(self, latents, t, i, cond, uncond, guidance_scale):
        guided = guidance_scale > 1.0
        x = torch.cat([latents, latents]) if guided else latents
        embeds = torch.cat([uncond, cond]) if guided else cond
        pred = self.transformer(
            x, encoder_hidden_states=embeds, timestep=t.expand(x.shape[0]), return_dict=False
        )[0]
        if guided:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        return pred

    def _decode(self, latents):
        return self.codec.decode(latents)


PROXIES = {
    "video": (WanTransformer3DModel, VIDEO_CONFIG, ProxyVideoPipeline),
    "image": (PixArtTransformer2DModel, IMAGE_CONFIG, ProxyImagePipeline),
}


def build_proxy(name: str, codec: LatentCodec | None = None, seed: int = 0) -> _ProxyPipeline:
    """An untrained proxy pipeline (random weights from ``seed``; the fitted codec unless given)."""
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; known: {sorted(PROXIES)}")
    from .codec import fitted_codec

    model_class, config, pipeline_class = PROXIES[name]
    torch.manual_seed(seed)
    transformer = model_class(**config)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    return pipeline_class(transformer.eval(), scheduler, ClassEncoder().eval(), codec or fitted_codec())


def load_proxy(name: str, weights: Path | str | None = None) -> _ProxyPipeline:
    """The shipped (or a given) proxy checkpoint as a pipeline, on the CPU, float32, offline."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else WEIGHTS / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"proxy weights not found at {path}; train them with scripts/train_proxy.py {name}"
        )
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    codec = LatentCodec()
    codec.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("codec.")})
    pipe = build_proxy(name, codec)
    pipe.transformer.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("transformer.")})
    pipe.class_encoder.load_state_dict(
        {k[14:]: v for k, v in state.items() if k.startswith("class_encoder.")}
    )
    return pipe


def proxy_metadata(name: str) -> dict:
    """The training record written next to the weights (steps, wall time, loss curve)."""
    path = WEIGHTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}
