"""Config validation, method resolution, and the errors a user sees."""

from __future__ import annotations

import pytest
import tiny_pipelines as tp
import torch

import dit_accel
from dit_accel import DenseConfig, Window3DConfig
from dit_accel.config import resolve_config
from dit_accel.methods import build_method
from dit_accel.patches import UnsupportedModelError


def test_resolve_by_name_with_overrides():
    config = resolve_config(
        "window3d", block_size=64, window=[3, 8, 8], dense_steps=2, dense_layers=[3, 1, 1]
    )
    assert isinstance(config, Window3DConfig)
    assert config.window == (3, 8, 8) and config.tile is None
    assert build_method(config).tile == (1, 8, 8)  # the default tile of the block size, at use
    assert config.dense_layers == (1, 3)


def test_a_config_object_takes_overrides_that_change_what_its_defaults_depend_on():
    pipe, _ = tp.build_wan21()
    report = dit_accel.enable_sparse_attention(pipe, Window3DConfig(), block_size=16)
    assert report.config.block_size == 16
    dit_accel.disable_sparse_attention(pipe)


def test_resolve_config_object_with_overrides_keeps_the_type():
    config = resolve_config(DenseConfig(), use_block_kernel=True)
    assert isinstance(config, DenseConfig) and config.use_block_kernel


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"block_size": 0}, ValueError, "block_size"),
        ({"dense_steps": -1}, ValueError, "dense_steps"),
        ({"dense_layers": (-2,)}, ValueError, "dense_layers"),
        ({"kernel_backend": "cuda"}, ValueError, "kernel_backend"),
        ({"window": (0, 4, 4)}, ValueError, "window"),
        ({"window": (4, 4)}, ValueError, "3 entries"),
        ({"block_size": 16, "tile": (2, 4, 4)}, ValueError, "product"),
        ({"block_size": 24}, ValueError, "no default tile"),
    ],
)
def test_invalid_values_raise_with_the_field_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        Window3DConfig(**kwargs)


def test_unknown_method_lists_available_ones():
    expected = "available: auto, dense, freeswim, rectified, rettention, topk, vmoba, window3d"
    with pytest.raises(ValueError, match=expected):
        resolve_config("flashy")


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError, match="valid options"):
        resolve_config("window3d", windw=(1, 2, 3))


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        axes_dims_rope=(2, 2, 4),
    )


def test_unsupported_transformer_names_supported_families():
    with pytest.raises(
        UnsupportedModelError,
        match="FluxTransformer2DModel has no dit-accel adapter; supported: "
        "Wan, HunyuanVideo, CogVideoX, PixArt",
    ):
        dit_accel.enable_sparse_attention(_tiny_flux(), "dense")


def test_unsupported_pipeline_is_left_untouched():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = _tiny_flux()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    processors = [m.processor for m in transformer.modules() if hasattr(m, "processor")]
    with pytest.raises(UnsupportedModelError, match="supported: Wan"):
        pipe.enable_sparse_attention()
    assert [m.processor for m in transformer.modules() if hasattr(m, "processor")] == processors


def test_report_before_enable_is_an_error():
    with pytest.raises(RuntimeError, match="not enabled"):
        dit_accel.sparse_attention_report(torch.nn.Linear(2, 2))


def test_non_pipeline_object_is_rejected():
    with pytest.raises(TypeError, match="diffusers pipeline or transformer"):
        dit_accel.enable_sparse_attention(object())


def test_non_stock_processor_is_refused_and_nothing_stays_patched():
    import tiny_pipelines as tp
    from diffusers.models.attention_processor import AttnProcessor

    from dit_accel.patches.backend import IntegrationError

    pipe, _ = tp.build_pixart_sigma()
    blocks = pipe.transformer.transformer_blocks
    blocks[-1].attn1.set_processor(AttnProcessor())
    before = [b.attn1.processor for b in blocks]
    with pytest.raises(
        IntegrationError, match="PixArt self-attention uses AttnProcessor; dit-accel routes only"
    ):
        pipe.enable_sparse_attention("dense")
    assert [b.attn1.processor for b in blocks] == before
    assert not pipe.transformer._forward_pre_hooks
    assert not blocks[0].attn1._forward_pre_hooks


def test_dense_layers_beyond_the_model_are_refused_at_enable():
    pipe, _ = tp.build_wan21()
    layers = len(pipe.transformer.blocks)
    with pytest.raises(ValueError, match=f"has {layers} routed self-attention layers"):
        dit_accel.enable_sparse_attention(pipe, "window3d", dense_layers=[99])
    assert not hasattr(pipe.transformer, "_dit_accel_session")  # nothing left installed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_triton_backend_without_cuda_is_refused_at_enable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pipe, _ = tp.build_wan21()
    with pytest.raises(ValueError, match="kernel_backend='triton' needs a CUDA device"):
        dit_accel.enable_sparse_attention(pipe, "window3d", kernel_backend="triton")
