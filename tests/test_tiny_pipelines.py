"""Checks of the tiny offline pipelines in ``tiny_pipelines``: they run, are deterministic, and really have
the structure (token grid, text layout, two Wan 2.2 experts, Hunyuan text padding) the other tests rely on.
"""

from __future__ import annotations

import math

import pytest
import tiny_pipelines as tp
import torch

NAMES = list(tp.BUILDERS)


@pytest.fixture(scope="module")
def built():
    """One build per builder for the whole module (builders are cheap but pipelines are reusable)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tp.BUILDERS[name](seed=0)
        return cache[name]

    return get


def _attn_inputs(args, kwargs):
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return hidden, enc


def test_registry_complete():
    assert set(tp.BUILDERS) == set(tp.SPECS)
    assert set(NAMES) == {
        "wan21",
        "wan22",
        "hunyuan_video",
        "cogvideox",
        "cogvideox15",
        "pixart_alpha",
        "pixart_sigma",
    }


@pytest.mark.parametrize("name", NAMES)
def test_builder_contract(name, built):
    pipe, kwargs = built(name)
    assert kwargs["output_type"] == "latent"
    assert 3 <= kwargs["num_inference_steps"] <= 4
    assert kwargs.get("true_cfg_scale", kwargs["guidance_scale"]) > 1
    assert "generator" not in kwargs
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not component.training
            assert all(p.device.type == "cpu" for p in component.parameters())
            assert not any(p.requires_grad for p in component.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_text_encoder_vocab_covers_tokenizer(name, built):
    pipe, kwargs = built(name)
    pairs = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]
    for tok_name, enc_name in pairs:
        tok, enc = getattr(pipe, tok_name, None), getattr(pipe, enc_name, None)
        if tok is None:
            continue
        assert len(tok) <= enc.config.vocab_size
        ids = tok(kwargs["prompt"]).input_ids
        assert tok.unk_token_id not in ids  # the prompt words are in the vocabulary
        assert max(ids) < enc.config.vocab_size


@pytest.mark.parametrize("name", NAMES)
def test_output_finite_shape_and_deterministic(name, built):
    pipe, kwargs = built(name)
    a = tp.run(pipe, kwargs, seed=0)
    b = tp.run(pipe, kwargs, seed=0)
    c = tp.run(pipe, kwargs, seed=1)
    assert a.dtype == torch.float32
    assert tuple(a.shape) == tp.SPECS[name]["output_shape"]
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give bitwise-equal outputs"
    assert (a - c).abs().max() > 1e-3, "different seeds must give different outputs"


@pytest.mark.parametrize("name", NAMES)
def test_weights_deterministic_from_seed(name, built):
    pipe, _ = built(name)
    again, _ = tp.BUILDERS[name](seed=0)
    other, _ = tp.BUILDERS[name](seed=1)
    for comp in ("transformer", "text_encoder"):
        sd, sd_again, sd_other = (getattr(p, comp).state_dict() for p in (pipe, again, other))
        assert sd.keys() == sd_again.keys()
        assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
        assert any(not torch.equal(sd[k], sd_other[k]) for k in sd if sd[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_attention_token_layout(name, built):
    """The first self-attention module sees the documented grid, text length and CFG batch."""
    pipe, kwargs = built(name)
    spec = tp.SPECS[name]
    n_video = math.prod(spec["token_grid"])
    assert 200 <= n_video <= 700
    assert not all(side % 4 == 0 for side in spec["token_grid"][1:])

    seen: dict[str, list] = {"self": [], "cross": []}

    def hook(key):
        def fn(module, args, kw):
            hidden, enc = _attn_inputs(args, kw)
            seen[key].append((tuple(hidden.shape), None if enc is None else tuple(enc.shape)))

        return fn

    transformer = pipe.transformer
    handles = [
        transformer.get_submodule(spec["self_attn"]).register_forward_pre_hook(hook("self"), with_kwargs=True)
    ]
    if spec["cross_attn"] is not None:
        cross = transformer.get_submodule(spec["cross_attn"])
        handles.append(cross.register_forward_pre_hook(hook("cross"), with_kwargs=True))
    try:
        tp.run(pipe, kwargs, seed=0)
    finally:
        for h in handles:
            h.remove()

    assert seen["self"], "self-attention module never called"
    batch, text = spec["cfg_batch"], spec["text_tokens"]
    for hidden_shape, enc_shape in seen["self"]:
        assert hidden_shape[:2] == (batch, n_video)
        if spec["text_attention"] == "cross":
            assert enc_shape is None
        else:  # joint attention: text is handed to the same module and concatenated in the processor
            assert enc_shape[:2] == (batch, text)
    if spec["cross_attn"] is not None:
        assert seen["cross"]
        for hidden_shape, enc_shape in seen["cross"]:
            assert hidden_shape[:2] == (batch, n_video)
            assert enc_shape[:2] == (batch, text)


@pytest.mark.parametrize("name", ["wan21", "hunyuan_video", "cogvideox15"])
def test_grid_matches_patch_config(name, built):
    """SPECS' token grid is what the transformer config implies for the latents it is given."""
    pipe, kwargs = built(name)
    cfg = pipe.transformer.config
    shapes = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["hidden_states"].shape)), with_kwargs=True
    )
    try:
        tp.run(pipe, kwargs, seed=0)
    finally:
        handle.remove()
    shape = shapes[0]
    if name.startswith("wan"):
        _, _, f, h, w = shape
        pt, ph, pw = cfg.patch_size
    elif name == "hunyuan_video":
        _, _, f, h, w = shape
        pt, ph, pw = cfg.patch_size_t, cfg.patch_size, cfg.patch_size
    else:  # CogVideoX: (B, F, C, H, W)
        _, f, _, h, w = shape
        pt, ph, pw = cfg.patch_size_t or 1, cfg.patch_size, cfg.patch_size
    assert (f // pt, h // ph, w // pw) == tp.SPECS[name]["token_grid"]


@pytest.mark.parametrize("steps", [3, 4])
def test_wan22_uses_both_transformers(steps, built):
    pipe, kwargs = built("wan22")
    kwargs = {**kwargs, "num_inference_steps": steps}

    # Expected split, from the pipeline's rule: transformer while t >= boundary_ratio * num_train_timesteps.
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    high = sum(int(t >= boundary) for t in pipe.scheduler.timesteps)
    assert 0 < high < steps

    counts = {"transformer": 0, "transformer_2": 0}

    def counter(key):
        def fn(module, args, output):
            counts[key] += 1

        return fn

    handles = [getattr(pipe, k).register_forward_hook(counter(k)) for k in counts]
    try:
        out = tp.run(pipe, kwargs, seed=0)
    finally:
        for h in handles:
            h.remove()
    assert torch.isfinite(out).all()
    # CFG: one conditional and one unconditional call per step.
    assert counts == {"transformer": 2 * high, "transformer_2": 2 * (steps - high)}


def test_wan22_experts_differ(built):
    pipe, _ = built("wan22")
    sd1, sd2 = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert any(not torch.equal(sd1[k], sd2[k]) for k in sd1 if sd1[k].is_floating_point())


def test_hunyuan_prompt_mask_has_padding(built):
    pipe, kwargs = built("hunyuan_video")
    embeds, pooled, mask = pipe.encode_prompt(
        prompt=kwargs["prompt"],
        prompt_template=kwargs["prompt_template"],
        max_sequence_length=kwargs["max_sequence_length"],
        device=torch.device("cpu"),
    )
    assert embeds.shape[:2] == (1, kwargs["max_sequence_length"]) == tuple(mask.shape)
    n_real = len(pipe.tokenizer(kwargs["prompt"]).input_ids)  # <s> + words
    assert n_real < kwargs["max_sequence_length"]
    assert mask[0, :n_real].eq(1).all() and mask[0, n_real:].eq(0).all()
    assert pooled.shape == (1, pipe.text_encoder_2.config.hidden_size)

    # ... and the padded mask is what the transformer actually receives, for both CFG branches.
    masks = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw["encoder_attention_mask"].clone()), with_kwargs=True
    )
    try:
        tp.run(pipe, kwargs, seed=0)
    finally:
        handle.remove()
    assert len(masks) == 2 * kwargs["num_inference_steps"]  # true CFG: cond + uncond calls
    for m in masks:
        assert m.shape == (1, kwargs["max_sequence_length"])
        assert (m == 0).any() and (m == 1).any()
    # The negative prompt is shorter, so the two branches have different amounts of padding.
    assert masks[0].sum() != masks[1].sum()


def test_hunyuan_padding_is_masked_in_joint_attention(built):
    """Padded text keys are masked: changing padded text embeddings does not change the output."""
    pipe, kwargs = built("hunyuan_video")
    transformer = pipe.transformer
    g = torch.Generator().manual_seed(0)
    n_text = kwargs["max_sequence_length"]
    latents = torch.randn(1, 16, 3, 20, 24, generator=g)
    text = torch.randn(1, n_text, transformer.config.text_embed_dim, generator=g)
    mask = torch.zeros(1, n_text)
    mask[:, :6] = 1
    call = dict(
        hidden_states=latents,
        timestep=torch.tensor([500.0]),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, transformer.config.pooled_projection_dim, generator=g),
        guidance=torch.tensor([6000.0]),
        return_dict=False,
    )
    text2 = text.clone()
    text2[:, 6:] = torch.randn(1, n_text - 6, text.shape[-1], generator=g)
    text3 = text.clone()
    text3[:, :6] += 1.0
    with torch.no_grad():
        out1 = transformer(encoder_hidden_states=text, **call)[0]
        out2 = transformer(encoder_hidden_states=text2, **call)[0]
        out3 = transformer(encoder_hidden_states=text3, **call)[0]
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-5)
    assert (out1 - out3).abs().max() > 1e-4


def test_cogvideox15_pads_latent_frames(built):
    """17 frames -> 5 latent frames, padded by the pipeline to 6 (a multiple of patch_size_t=2)."""
    pipe, kwargs = built("cogvideox15")
    assert pipe.transformer.config.patch_size_t == 2
    assert pipe.transformer.config.use_rotary_positional_embeddings
    latent_frames = (kwargs["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    assert latent_frames % 2 == 1
    assert tp.SPECS["cogvideox15"]["output_shape"][1] == latent_frames + 1


@pytest.mark.parametrize("name", ["wan21", "cogvideox"])
def test_bf16_build_runs(name):
    pipe, kwargs = tp.BUILDERS[name](seed=0, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16
    out = tp.run(pipe, kwargs, seed=0)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == tp.SPECS[name]["output_shape"]
    assert torch.isfinite(out).all()
