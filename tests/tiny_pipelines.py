"""Tiny, random-weight, fully offline diffusers pipelines for tests.

Every builder returns ``(pipe, call_kwargs)``: a pipeline on CPU in eval mode with deterministic weights
(``torch.manual_seed(seed)`` before each component) and the keyword arguments of a short, CFG-enabled call
that returns latents.  ``pipe(**call_kwargs, generator=torch.Generator().manual_seed(s))`` runs; ``run`` does
exactly that and returns a float32 tensor.

Nothing here touches the network or the ``dit_accel`` package: tokenizers are word-level ``tokenizers``
models wrapped in ``transformers.PreTrainedTokenizerFast`` and text encoders are built from tiny configs.

``SPECS[name]`` records, for each builder's default call, the transformer token grid after patchify
(``F, H, W``), the text length the transformer sees, how text meets video in attention, the module paths of
the first self-/cross-attention and the expected output shape.  The configurations mimic the real
checkpoints' structure (same flags, pos-embedding type, patch sizes, schedulers) with toy widths: 2 heads of
head_dim 32, 2 layers.  With ``dtype`` other than float32, transformers and text encoders are cast (keeping
their ``_keep_in_fp32_modules`` in float32, as ``from_pretrained`` does); VAEs stay float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

__all__ = [
    "BUILDERS",
    "SPECS",
    "PROMPT",
    "NEGATIVE_PROMPT",
    "VOCAB_SIZE",
    "make_tokenizer",
    "build_wan21",
    "build_wan22",
    "build_hunyuan_video",
    "build_cogvideox",
    "build_cogvideox15",
    "build_pixart_alpha",
    "build_pixart_sigma",
    "run",
]

# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]
PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
# NB: EOS_ID must not be 2: CLIPTextModel treats eos_token_id == 2 as a legacy config (pools at argmax(ids)).

WORDS = [
    "a", "an", "the", "red", "green", "blue", "yellow", "white", "black", "square", "circle", "triangle",
    "ball", "cube", "cat", "dog", "bird", "car", "moving", "right", "left", "up", "down", "slowly", "quickly",
    "across", "over", "under", "on", "in", "of", "and", "with", "is", "are", "small", "big", "bright", "dark",
    "background", "scene", "video", "image", "photo", "blurry", "static", "noise", "low", "quality", "ugly",
    ",", ".",
]  # fmt: skip
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
VOCAB_SIZE = 64
assert len(VOCAB) <= VOCAB_SIZE, len(VOCAB)

PROMPT = "a red square moving right"
NEGATIVE_PROMPT = "blurry static noise"


def make_tokenizer(kind: str, model_max_length: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``VOCAB`` with the special-token layout of ``kind``.

    ``t5`` (T5/UMT5): ``ids </s>``; ``llama``: ``<s> ids``; ``clip``: ``<s> ids </s>``.  Padding is on the
    right with ``<pad>`` (id 0) for all kinds.
    """
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = ("<s>", BOS_ID), ("</s>", EOS_ID)
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
        )
    elif kind == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
        )
    elif kind == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[bos, eos]
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if kind != "t5":
        special["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side="right", **special
    )


# --------------------------------------------------------------------------------------------------
# Text encoders (tiny configs; vocab_size == VOCAB_SIZE covers the tokenizer)
# --------------------------------------------------------------------------------------------------

TEXT_DIM = 32


def _t5_kwargs() -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB_SIZE,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )


def _t5_encoder(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**_t5_kwargs()))


def _umt5_encoder(seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**_t5_kwargs()))


def _llama_encoder(seed: int) -> LlamaModel:
    torch.manual_seed(seed)
    # HunyuanVideo takes hidden_states[-3], so at least 2 layers are needed.
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attention_dropout=0.0,
    )
    return LlamaModel(cfg)


def _clip_encoder(seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attention_dropout=0.0,
        dropout=0.0,
    )
    return CLIPTextModel(cfg)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

HEADS = 2
HEAD_DIM = 32
INNER_DIM = HEADS * HEAD_DIM


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast like ``from_pretrained(torch_dtype=dtype)``: ``_keep_in_fp32_modules`` stay float32."""
    torch.nn.Module.to(module, dtype=dtype)  # bypasses ModelMixin.to's "keep in fp32" warning
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if not keep:
        return
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and any(k in name.split(".") for k in keep):
            tensor.data = tensor.data.float()


def _finish(pipe: DiffusionPipeline, dtype: torch.dtype) -> DiffusionPipeline:
    """Eval mode, no grads, CPU; transformers and text encoders cast to ``dtype`` (VAEs stay float32)."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            component.eval()
            component.requires_grad_(False)
            component.to("cpu")
            if dtype != torch.float32 and not name.startswith("vae"):
                _cast(component, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# Wan 2.1 / 2.2
# --------------------------------------------------------------------------------------------------


def _wan_transformer(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    # Wan2.1-T2V-1.3B structure: patch (1, 2, 2), cross_attn_norm, qk_norm rms_norm_across_heads.
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )


def _wan_vae(seed: int) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    # 8x spatial, 4x temporal (temperal_downsample is diffusers' spelling).
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _wan_common(seed: int) -> dict[str, Any]:
    vae = _wan_vae(seed)
    text_encoder = _umt5_encoder(seed)
    tokenizer = make_tokenizer("t5", model_max_length=512)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def build_wan21(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """Wan 2.1 T2V. 9 frames 160x224 -> latent (16, 3, 20, 28) -> token grid 3x10x14 = 420 tokens."""
    common = _wan_common(seed)
    transformer = _wan_transformer(seed)
    torch.manual_seed(seed)
    # Same scheduler as Wan2.1-T2V-*-Diffusers (UniPC, flow prediction, flow_shift 3.0).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(transformer=transformer, scheduler=scheduler, **common)
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=160,
        width=224,
        num_frames=9,
        num_inference_steps=3,
        guidance_scale=5.0,
        max_sequence_length=16,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


WAN22_BOUNDARY_RATIO = 0.875
WAN22_FLOW_SHIFT = 12.0


def build_wan22(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """Wan 2.2 A14B T2V: high-noise ``transformer`` + low-noise ``transformer_2``.

    WanPipeline uses ``transformer`` while ``t >= boundary_ratio * num_train_timesteps`` and
    ``transformer_2`` afterwards.  With UniPC flow_shift 12 and boundary 0.875 (the A14B values) the
    timesteps are [999, 960, 857] for 3 steps and [999, 973, 923, 800] for 4 steps, so both transformers run
    in either case (the last step goes to ``transformer_2``).  ``guidance_scale_2`` defaults to
    ``guidance_scale``; we set a different value so the low-noise stage is distinguishable.
    13 frames 176x128 -> latent (16, 4, 22, 16) -> token grid 4x11x8 = 352 tokens.
    """
    common = _wan_common(seed)
    transformer = _wan_transformer(seed)
    transformer_2 = _wan_transformer(seed + 1)  # distinct weights for the low-noise expert
    torch.manual_seed(seed)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=WAN22_FLOW_SHIFT
    )
    pipe = WanPipeline(
        transformer=transformer,
        transformer_2=transformer_2,
        scheduler=scheduler,
        boundary_ratio=WAN22_BOUNDARY_RATIO,
        **common,
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=176,
        width=128,
        num_frames=13,
        num_inference_steps=4,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        max_sequence_length=16,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


# --------------------------------------------------------------------------------------------------
# HunyuanVideo
# --------------------------------------------------------------------------------------------------

HUNYUAN_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}


def build_hunyuan_video(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """HunyuanVideo T2V: 1 dual-stream + 1 single-stream block, 1 refiner layer.

    9 frames 160x192 -> latent (16, 3, 20, 24) -> token grid 3x10x12 = 360 video tokens; the 16 Llama tokens
    (6 real: ``<s>`` + 5 words, 10 padding for PROMPT) are appended after the video tokens in joint attention
    (sequence 376) and padded text keys are masked out.  The model is guidance-distilled (``guidance_scale``
    is an embedded scalar); real CFG needs ``true_cfg_scale > 1`` plus a negative prompt, which we set.
    """
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        rope_theta=256.0,
        rope_axes_dim=(8, 12, 12),  # sums to head_dim, like (16, 56, 56) for 128
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    torch.manual_seed(seed)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    text_encoder = _llama_encoder(seed)
    text_encoder_2 = _clip_encoder(seed)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=make_tokenizer("llama", model_max_length=256),
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=make_tokenizer("clip", model_max_length=77),
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=160,
        width=192,
        num_frames=9,
        num_inference_steps=3,
        guidance_scale=6.0,
        true_cfg_scale=2.0,
        prompt_template=dict(HUNYUAN_PROMPT_TEMPLATE),
        max_sequence_length=16,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


# --------------------------------------------------------------------------------------------------
# CogVideoX 1.0 / 1.5
# --------------------------------------------------------------------------------------------------


def _cogvideox_vae(seed: int, invert_scale_latents: bool) -> AutoencoderKLCogVideoX:
    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),  # 4 blocks -> pipeline's vae_scale_factor_spatial = 8
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        invert_scale_latents=invert_scale_latents,
    )


def _cogvideox_scheduler(snr_shift_scale: float) -> CogVideoXDDIMScheduler:
    # scheduler_config.json of THUDM/CogVideoX-2b (snr_shift_scale 3.0) / CogVideoX(1.5)-5b (1.0).
    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=snr_shift_scale,
        steps_offset=0,
        timestep_spacing="trailing",
    )


COGVIDEOX_TEXT_LEN = 16


def build_cogvideox(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """CogVideoX 1.0 (2b style): 3D sincos absolute pos-embed, no RoPE, no temporal patching.

    9 frames 160x208 -> latent (3, 16, 20, 26) [frames first] -> token grid 3x10x13 = 390 video tokens.
    The 16 T5 tokens (padding included, no mask) come FIRST in joint attention (sequence 406).
    ``max_sequence_length`` must equal ``max_text_seq_length`` because the sincos table is laid out as
    ``[text zeros | video]``.  CFG is batched: transformer batch 2 ([negative, positive]).
    """
    latent_f, latent_h, latent_w = 3, 20, 26
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=16,
        out_channels=16,
        time_embed_dim=32,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=latent_w,
        sample_height=latent_h,
        sample_frames=(latent_f - 1) * 4 + 1,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_LEN,
        use_rotary_positional_embeddings=False,
        use_learned_positional_embeddings=False,
    )
    vae = _cogvideox_vae(seed, invert_scale_latents=False)
    torch.manual_seed(seed)
    scheduler = _cogvideox_scheduler(snr_shift_scale=3.0)
    pipe = CogVideoXPipeline(
        tokenizer=make_tokenizer("t5", model_max_length=226),
        text_encoder=_t5_encoder(seed),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=latent_h * 8,
        width=latent_w * 8,
        num_frames=(latent_f - 1) * 4 + 1,
        num_inference_steps=3,
        guidance_scale=6.0,
        use_dynamic_cfg=False,
        max_sequence_length=COGVIDEOX_TEXT_LEN,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


def build_cogvideox15(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """CogVideoX 1.5 (5B T2V style): patch_size_t=2, RoPE (grid_type "slice"), no abs pos-embed, no bias.

    ``ofs_embed_dim`` stays None: only the 1.5 *I2V* checkpoint has the ofs embedding, and the T2V
    pipeline never passes ``ofs`` (a T2V transformer with ofs_embed_dim set would crash on ``ofs=None``).
    17 frames -> 5 latent frames; the pipeline pads latents to a multiple of patch_size_t, i.e. 6 frames
    (``latents[:, 1:]`` is only dropped when decoding, so ``output_type="latent"`` returns all 6).
    160x160 -> latent (6, 16, 20, 20) -> token grid 3x10x10 = 300 video tokens, 16 text tokens first.
    """
    latent_h, latent_w = 20, 20
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=16,
        out_channels=16,
        time_embed_dim=32,
        ofs_embed_dim=None,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=300,  # as in CogVideoX1.5-5B; only bounds the RoPE "slice" grid (150x150 patches)
        sample_height=300,
        sample_frames=81,
        patch_size=2,
        patch_size_t=2,
        patch_bias=False,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_LEN,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )
    vae = _cogvideox_vae(seed, invert_scale_latents=True)
    torch.manual_seed(seed)
    scheduler = _cogvideox_scheduler(snr_shift_scale=1.0)
    pipe = CogVideoXPipeline(
        tokenizer=make_tokenizer("t5", model_max_length=226),
        text_encoder=_t5_encoder(seed),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=latent_h * 8,
        width=latent_w * 8,
        num_frames=17,
        num_inference_steps=3,
        guidance_scale=6.0,
        use_dynamic_cfg=False,
        max_sequence_length=COGVIDEOX_TEXT_LEN,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


# --------------------------------------------------------------------------------------------------
# PixArt-alpha / PixArt-sigma
# --------------------------------------------------------------------------------------------------


def _pixart_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # 4 blocks -> vae_scale_factor 8
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def _pixart_transformer(seed: int, sample_size: int, interpolation_scale: int) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    # PixArt-XL-2 structure: 4 -> 8 channels (learned sigma), ada_norm_single, cross_attention_dim == inner
    # dim, caption projection from T5.  Micro-conditions forced off; see build_pixart_alpha for why.
    return PixArtTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=INNER_DIM,
        caption_channels=TEXT_DIM,
        sample_size=sample_size,
        patch_size=2,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        interpolation_scale=interpolation_scale,
        use_additional_conditions=False,
    )


def build_pixart_alpha(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """PixArt-alpha, PixArt-XL-2-512x512 style (sample_size 64, interpolation_scale 1, no micro-conditions).

    The 1024-MS variant (sample_size 128) adds resolution/aspect-ratio micro-conditions whose embedding is
    3 chunks of ``inner_dim // 3`` added to an ``inner_dim`` vector, so it needs ``inner_dim % 3 == 0``
    (1152 in the real model); with 2 heads x 32 = 64 it fails with a 64 vs 63 size mismatch.

    192x288 -> latent (4, 24, 36) -> token grid 1x12x18 = 216 image tokens; cross-attention to 16 T5 tokens
    with ``encoder_attention_mask`` (padding masked).  CFG batched (batch 2).
    """
    transformer = _pixart_transformer(seed, sample_size=64, interpolation_scale=1)
    vae = _pixart_vae(seed)
    torch.manual_seed(seed)
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtAlphaPipeline(
        tokenizer=make_tokenizer("t5", model_max_length=120),
        text_encoder=_t5_encoder(seed),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=192,
        width=288,
        num_inference_steps=3,
        guidance_scale=4.5,
        use_resolution_binning=False,
        clean_caption=False,
        max_sequence_length=16,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


def build_pixart_sigma(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[DiffusionPipeline, dict]:
    """PixArt-sigma, PixArt-Sigma-XL-2-1024-MS style (sample_size 128, interpolation_scale 2, no micro-cond.).

    224x352 -> latent (4, 28, 44) -> token grid 1x14x22 = 308 image tokens; cross-attention to 24 T5 tokens.
    """
    transformer = _pixart_transformer(seed, sample_size=128, interpolation_scale=2)
    vae = _pixart_vae(seed)
    torch.manual_seed(seed)
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtSigmaPipeline(
        tokenizer=make_tokenizer("t5", model_max_length=300),
        text_encoder=_t5_encoder(seed),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=224,
        width=352,
        num_inference_steps=3,
        guidance_scale=4.5,
        use_resolution_binning=False,
        clean_caption=False,
        max_sequence_length=24,
        output_type="latent",
    )
    return _finish(pipe, dtype), kwargs


# --------------------------------------------------------------------------------------------------
# Registry, specs, runner
# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., tuple[DiffusionPipeline, dict]]] = {
    "wan21": build_wan21,
    "wan22": build_wan22,
    "hunyuan_video": build_hunyuan_video,
    "cogvideox": build_cogvideox,
    "cogvideox15": build_cogvideox15,
    "pixart_alpha": build_pixart_alpha,
    "pixart_sigma": build_pixart_sigma,
}

# token_grid: (F, H, W) after patchify for the default call (F == 1 for images).
# text_tokens: text length the transformer receives (padding included).
# text_attention: "cross" (separate cross-attention), "joint_after" (text appended after the video tokens in
#   one attention call), "joint_before" (text prepended before the video tokens).
# self_attn / cross_attn: module path (inside pipe.transformer) of the first video self-attention module
#   and of the first text cross-attention module (None for joint-attention models).  In joint models the
#   self-attention module receives the video as ``hidden_states`` and the text as ``encoder_hidden_states``
#   and concatenates them inside its processor.
# cfg_batch: batch size of each transformer call (2 when cond/uncond are batched together, 1 when the
#   pipeline makes two separate calls per step).
# output_shape: shape returned by ``run`` for the default call (CogVideoX latents are frames-first).
SPECS: dict[str, dict[str, Any]] = {
    "wan21": dict(
        token_grid=(3, 10, 14),
        text_tokens=16,
        text_attention="cross",
        cfg_batch=1,
        self_attn="blocks.0.attn1",
        cross_attn="blocks.0.attn2",
        output_shape=(1, 16, 3, 20, 28),
    ),
    "wan22": dict(
        token_grid=(4, 11, 8),
        text_tokens=16,
        text_attention="cross",
        cfg_batch=1,
        self_attn="blocks.0.attn1",
        cross_attn="blocks.0.attn2",
        output_shape=(1, 16, 4, 22, 16),
    ),
    "hunyuan_video": dict(
        token_grid=(3, 10, 12),
        text_tokens=16,
        text_attention="joint_after",
        cfg_batch=1,
        self_attn="transformer_blocks.0.attn",
        cross_attn=None,
        output_shape=(1, 16, 3, 20, 24),
    ),
    "cogvideox": dict(
        token_grid=(3, 10, 13),
        text_tokens=16,
        text_attention="joint_before",
        cfg_batch=2,
        self_attn="transformer_blocks.0.attn1",
        cross_attn=None,
        output_shape=(1, 3, 16, 20, 26),
    ),
    "cogvideox15": dict(
        token_grid=(3, 10, 10),
        text_tokens=16,
        text_attention="joint_before",
        cfg_batch=2,
        self_attn="transformer_blocks.0.attn1",
        cross_attn=None,
        output_shape=(1, 6, 16, 20, 20),
    ),
    "pixart_alpha": dict(
        token_grid=(1, 12, 18),
        text_tokens=16,
        text_attention="cross",
        cfg_batch=2,
        self_attn="transformer_blocks.0.attn1",
        cross_attn="transformer_blocks.0.attn2",
        output_shape=(1, 4, 24, 36),
    ),
    "pixart_sigma": dict(
        token_grid=(1, 14, 22),
        text_tokens=24,
        text_attention="cross",
        cfg_batch=2,
        self_attn="transformer_blocks.0.attn1",
        cross_attn="transformer_blocks.0.attn2",
        output_shape=(1, 4, 28, 44),
    ),
}


def run(pipe: DiffusionPipeline, kwargs: dict, seed: int = 0) -> torch.Tensor:
    """Call ``pipe(**kwargs)`` with a fresh CPU generator seeded ``seed``; return the output as float32."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        out = pipe(**kwargs, generator=generator)
    if isinstance(out, tuple):
        result = out[0]
    elif hasattr(out, "frames"):
        result = out.frames
    else:
        result = out.images
    if isinstance(result, torch.Tensor):
        return result.detach().to(device="cpu", dtype=torch.float32)
    if isinstance(result, list) and result and isinstance(result[0], torch.Tensor):
        return torch.stack([r.detach().cpu() for r in result]).float()
    return torch.from_numpy(np.asarray(result, dtype=np.float32))
