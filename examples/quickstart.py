"""Quick start, fully offline: a tiny random-weight Wan 2.1 pipeline, dense vs window3d.

With a real model the only dit-accel line is ``pipe.enable_sparse_attention(...)``; everything
else here just builds a small pipeline without downloading anything.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

import dit_accel  # noqa: F401  (adds enable_sparse_attention & co. to every diffusers pipeline)


def tiny_wan_pipeline() -> WanPipeline:
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=64,
        ffn_dim=128,
        num_layers=2,
        rope_max_seq_len=64,
    )
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]
    )
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=transformer,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            flow_shift=3.0, prediction_type="flow_prediction", use_flow_sigmas=True
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    pipe = tiny_wan_pipeline()
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    call = dict(
        prompt_embeds=text,
        negative_prompt_embeds=torch.zeros_like(text),
        height=256,
        width=256,
        num_frames=9,
        num_inference_steps=4,
        guidance_scale=5.0,
        output_type="latent",
    )

    dense = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    pipe.enable_sparse_attention("window3d", block_size=64, window=(3, 8, 8))
    sparse = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    print(pipe.sparse_attention_report())
    pipe.disable_sparse_attention()

    error = float((sparse - dense).norm() / dense.norm())
    print(f"\nlatent grid {tuple(dense.shape)}; relative L2 error of window3d vs dense: {error:.4f}")


if __name__ == "__main__":
    main()
