"""FreeSwim: the window layout and attention against dense boolean oracles, the dual path against a
reference built from diffusers' stock processors, cache mode's schedule, and the error paths."""

from __future__ import annotations

import math
import os

import pytest
import tiny_pipelines as tp
import torch

import dit_accel
from dit_accel import FreeSwimConfig
from dit_accel.context import TWIN_BRANCH, AttentionContext, CallContext, LayerContext
from dit_accel.kernels.reference import dense_attention_torch
from dit_accel.methods import freeswim as freeswim_module
from dit_accel.methods.freeswim import FreeSwim
from dit_accel.methods.freeswim_layout import window_bounds, window_layout

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def oracle_mask(grid, window, inward=True):
    """Spec 3.3 written out per query and key (frame-major order), (L, L) bool."""
    frames, rows, cols = grid
    d_h, d_w = window[0] // 2, window[1] // 2
    n = frames * rows * cols
    idx = torch.arange(n)
    h, w = (idx % (rows * cols)) // cols, idx % cols
    if inward:
        lh, lw = min(window[0], rows), min(window[1], cols)
        h0 = (h - d_h).clamp(0, rows - lh)
        w0 = (w - d_w).clamp(0, cols - lw)
        h1, w1 = h0 + lh, w0 + lw
    else:  # clipped ablation: the reference with all four extensions set to 0
        h0, h1 = (h - d_h).clamp_min(0), (h - d_h + window[0]).clamp_max(rows)  # h + d_h + 1 for odd
        w0, w1 = (w - d_w).clamp_min(0), (w - d_w + window[1]).clamp_max(cols)
    return (
        (h0[:, None] <= h[None])
        & (h[None] < h1[:, None])
        & (w0[:, None] <= w[None])
        & (w[None] < w1[:, None])
    )


def context(grid, family="Wan", step=0, branch="cond", text_position="none"):
    return AttentionContext(
        CallContext(grid, text_position, step, 3, branch, "transformer"),
        LayerContext("blocks.0.attn1", 0),
    )


# ------------------------------------------------------------------------------ window geometry
def test_hand_example_rows_and_columns():
    """Spec 5: H=6, W=8, d_h=1, d_w=2 (window 3x5)."""
    rows_lo, rows_hi = window_bounds(6, 3, inward=True)
    cols_lo, cols_hi = window_bounds(8, 5, inward=True)
    seen = {
        (h, w): (rows_lo[h].item(), rows_hi[h].item() - 1, cols_lo[w].item(), cols_hi[w].item() - 1)
        for h, w in [(0, 0), (5, 7), (2, 3), (0, 7), (4, 1)]
    }
    assert seen == {
        (0, 0): (0, 2, 0, 4),
        (5, 7): (3, 5, 3, 7),
        (2, 3): (1, 3, 1, 5),
        (0, 7): (0, 2, 3, 7),
        (4, 1): (3, 5, 0, 4),
    }
    c_rows = window_bounds(6, 3, inward=False)
    c_cols = window_bounds(8, 5, inward=False)
    clipped = {
        (h, w): (c_rows[0][h].item(), c_rows[1][h].item() - 1, c_cols[0][w].item(), c_cols[1][w].item() - 1)
        for h, w in [(0, 0), (5, 7), (0, 7), (4, 1)]
    }
    assert clipped == {(0, 0): (0, 1, 0, 2), (5, 7): (4, 5, 5, 7), (0, 7): (0, 1, 5, 7), (4, 1): (3, 5, 0, 3)}


def test_hand_example_keys_of_query_zero_and_equal_work():
    """F=2: query 0 sees keys 0-4, 8-12, 16-20, 48-52, 56-60, 64-68; every query exactly 30 keys."""
    grid = (2, 6, 8)
    wl = window_layout(grid, (3, 5), True, "spatial", 16, torch.device("cpu"))
    em = wl.element_mask
    dense = em.dense()[wl.order.inverse][:, wl.order.inverse]  # back to frame-major order
    expected = [k for start in (0, 8, 16, 48, 56, 64) for k in range(start, start + 5)]
    assert torch.nonzero(dense[0]).flatten().tolist() == expected
    assert (dense.sum(1) == 30).all()
    assert torch.equal(dense, oracle_mask(grid, (3, 5)))


@pytest.mark.parametrize("order", ["spatial", "raster"])
@pytest.mark.parametrize("inward", [True, False])
def test_tile_lists_reproduce_the_tiled_dense_mask(order, inward):
    seed = torch.Generator().seed()
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        grid = tuple(int(x) for x in torch.randint(1, 9, (3,), generator=g))
        window = tuple(int(x) for x in torch.randint(1, 8, (2,), generator=g))
        block = int((8, 16, 32)[int(torch.randint(3, (1,), generator=g))])
        wl = window_layout(grid, window, inward, order, block, torch.device("cpu"))
        n = grid[0] * grid[1] * grid[2]
        truth = oracle_mask(grid, window, inward)[wl.order.gather][
            :, wl.order.gather
        ]  # in the layout's order
        nb = -(-n // block)
        padded = torch.zeros(nb * block, nb * block, dtype=torch.bool)
        padded[:n, :n] = truth
        tiles = padded.view(nb, block, nb, block)
        any_pair = tiles.any(3).any(1)
        real = torch.zeros(nb * block, dtype=torch.bool)
        real[:n] = True
        real_pairs = (real[:, None] & real[None, :]).view(nb, block, nb, block)
        all_pairs = (tiles | ~real_pairs).all(3).all(1)
        visited = wl.layout.to_block_mask()[0, 0]
        partial = torch.zeros(nb, nb, dtype=torch.bool)
        for r in range(nb):
            for e in range(int(wl.layout.kv_counts[0, 0, r])):
                partial[r, wl.layout.kv_indices[0, 0, r, e]] = wl.kv_partial[0, 0, r, e]
        tag = f"seed {seed} grid {grid} window {window} block {block}"
        if order == "spatial":
            assert torch.equal(visited, any_pair), tag  # exact
            assert torch.equal(visited & ~partial, any_pair & all_pairs), tag  # full tiles exact
        else:  # frame-major: tiles crossing frames are listed conservatively, never wrongly full
            assert (visited | ~any_pair).all() and (~(visited & ~partial) | all_pairs).all(), tag
        assert torch.equal(wl.element_mask.dense(), truth), tag


@pytest.mark.parametrize(
    ("grid", "tile_density", "full_share"), [((21, 45, 80), 0.536, 0.695), ((21, 68, 120), 0.247, 0.638)]
)
def test_densities_at_the_reference_shapes_match_the_spec_table(grid, tile_density, full_share):
    """Spec 4a, spatial-major order, 128-token tiles, window 31x53."""
    wl = window_layout(grid, (31, 53), True, "spatial", 128, torch.device("cpu"))
    visited = int(wl.layout.kv_counts.sum())
    assert round(wl.tile_density(), 3) == tile_density
    assert round(wl.full_tiles / visited, 3) == full_share


def test_reference_attention_scale():
    method = FreeSwim(FreeSwimConfig())
    assert round(method.attention_scale(128), 5) == 0.09246  # spec 3.1
    assert FreeSwim(FreeSwimConfig(attention_scale="default")).attention_scale(128) == 128**-0.5
    assert FreeSwim(FreeSwimConfig(attention_scale=0.2)).attention_scale(64) == 0.2


def test_window_from_base_resolution():
    call = context((21, 68, 120)).call
    assert FreeSwim(FreeSwimConfig()).window(call) == (31, 53)  # 480x832 on Wan (8 x 2 pixels per token)
    assert FreeSwim(FreeSwimConfig(base_resolution=(720, 1280))).window(call) == (45, 81)
    assert FreeSwim(FreeSwimConfig(window=(7, 9))).window(call) == (7, 9)


# ------------------------------------------------------------------------------ window attention
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("grid", "window", "inward"),
    [
        ((2, 6, 8), (3, 5), True),
        ((3, 5, 7), (3, 3), False),
        ((1, 9, 11), (5, 7), True),
        ((2, 4, 9), (7, 1), True),
    ],
)
def test_window_attention_equals_the_dense_masked_oracle(backend, grid, window, inward):
    if backend == "triton" and not (IN_INTERPRETER or torch.cuda.is_available()):
        pytest.skip("Triton needs CUDA or the interpreter")
    seed = torch.Generator().seed()
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = (torch.randn(2, n, 2, 32, generator=g, dtype=dtype) for _ in range(3))
    outs = {}
    for order in ("spatial", "raster"):
        cfg = FreeSwimConfig(
            block_size=16,
            window=window,
            inward=inward,
            order=order,
            kernel_backend=backend,
            cross_attn_override=False,
        )
        out, density = FreeSwim(cfg)(q, k, v, scale=None, key_padding_mask=None, context=context(grid))
        outs[order] = out
        assert 0 < float(density) <= 1
    scale = FreeSwim(FreeSwimConfig()).attention_scale(32)
    ref = dense_attention_torch(
        q.double(),
        k.double(),
        v.double(),
        block_mask=oracle_mask(grid, window, inward)[None, None],
        scale=scale,
    ).out
    tol = 1e-10 if backend == "torch" else 1e-5
    for order, out in outs.items():
        err = float((out.double() - ref).norm() / ref.norm())
        assert err < tol, f"seed {seed} {order}: {err:.3g}"


def test_window_covering_the_grid_is_dense_attention():
    seed = torch.Generator().seed()
    g = torch.Generator().manual_seed(seed)
    grid = (2, 5, 7)
    q, k, v = (torch.randn(1, 70, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    cfg = FreeSwimConfig(block_size=16, window=(9, 15), cross_attn_override=False, attention_scale="default")
    out, density = FreeSwim(cfg)(q, k, v, scale=None, key_padding_mask=None, context=context(grid))
    ref = dense_attention_torch(q, k, v).out
    assert float((out - ref).norm() / ref.norm()) < 1e-12, f"seed {seed}"
    assert float(density) == 1.0


# ------------------------------------------------------------------------------ dual path on tiny Wan
BASE = (80, 112)  # tiny Wan renders 160x224: token grid 10x14, base grid 5x7 -> window (5, 7)


def _reference_dual_path(transformer, window, cache_steps=None, override_uncond=None):
    """Stock processors: window mask for item 0, dense for item 1, item 1's attn2 output for both.

    ``cache_steps``: the reference's cache mode, written from spec 3.5 with call counting (the Wan
    pipeline calls the transformer cond then uncond every step): on guide cond calls the dual path
    stores each block's cross-attention output; on other cond calls one item runs the window with
    the stored outputs; uncond calls run one item with its own cross-attention.
    ``override_uncond``: None as the reference (uncond overridden without cache mode only); True
    treats uncond calls like cond calls (with their own stored outputs); False runs them alone.
    """
    if override_uncond is None:
        override_uncond = cache_steps is None
    handles = []
    state = {"calls": -1, "dual": True, "stored": {}, "reuse": False}

    def duplicate(mod, args, kwargs):
        bound = dict(
            zip(("hidden_states", "timestep", "encoder_hidden_states"), args, strict=False), **kwargs
        )
        hidden = bound["hidden_states"]
        p_t, p_h, p_w = mod.config.patch_size
        state["grid"] = (hidden.shape[2] // p_t, hidden.shape[3] // p_h, hidden.shape[4] // p_w)
        state["calls"] += 1
        step, cond = state["calls"] // 2, state["calls"] % 2 == 0
        overridden = cond or override_uncond
        state["branch"] = cond
        state["dual"] = overridden and (cache_steps is None or step % cache_steps == 0)
        state["reuse"] = cache_steps is not None and overridden and not state["dual"]
        if state["dual"]:
            for name, value in list(bound.items()):
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == hidden.shape[0]:
                    bound[name] = torch.cat([value, value])
        return (), bound

    def keep_first(mod, args, kwargs, output):
        if not state["dual"]:
            return output
        if isinstance(output, tuple):
            return (output[0][: output[0].shape[0] // 2], *output[1:])
        output.sample = output.sample[: output.sample.shape[0] // 2]
        return output

    class MaskedProcessor:
        def __init__(self, stock):
            self.stock = stock

        def __call__(
            self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None
        ):
            mask = oracle_mask(state["grid"], window).to(hidden_states.device)
            masks = [mask, torch.ones_like(mask)] if state["dual"] else [mask]
            attention_mask = torch.stack(masks)[:, None]  # item 0 window, item 1 (if any) dense
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def override(index):
        def hook(mod, args, output):
            if state["reuse"]:
                return state["stored"][index, state["branch"]]
            if not state["dual"]:
                return output
            half = output.shape[0] // 2
            state["stored"][index, state["branch"]] = output[half:]
            return torch.cat([output[half:], output[half:]])

        return hook

    handles.append(transformer.register_forward_pre_hook(duplicate, with_kwargs=True))
    handles.append(transformer.register_forward_hook(keep_first, with_kwargs=True))
    originals = []
    for index, block in enumerate(transformer.blocks):
        originals.append(block.attn1.processor)
        block.attn1.processor = MaskedProcessor(block.attn1.processor)
        handles.append(block.attn2.register_forward_hook(override(index)))

    def undo():
        for handle in handles:
            handle.remove()
        for block, original in zip(transformer.blocks, originals, strict=True):
            block.attn1.processor = original

    return undo


def test_dual_path_equals_the_stock_processor_reference_over_three_steps():
    pipe, kwargs = tp.build_wan21()
    undo = _reference_dual_path(pipe.transformer, (5, 7))
    reference = tp.run(pipe, kwargs)
    undo()
    dense = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention("freeswim", block_size=16, base_resolution=BASE, attention_scale="default")
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    err = float((out - reference).norm() / reference.norm())
    assert err < 1e-5, err
    assert float((out - dense).norm() / dense.norm()) > 100 * err  # the window and override do something
    assert 0.5 < report.mean_density < 1  # half the batch dense, half the window
    assert torch.equal(tp.run(pipe, kwargs), dense)  # disable restores the stock pipeline exactly


def test_cache_mode_equals_the_stock_processor_reference_over_four_steps():
    pipe, kwargs = tp.build_wan21()
    kwargs = dict(kwargs, num_inference_steps=4)
    undo = _reference_dual_path(pipe.transformer, (5, 7), cache_steps=2)
    reference = tp.run(pipe, kwargs)
    undo()
    nocache = None
    for cache in (False, True):
        pipe.enable_sparse_attention(
            "freeswim", block_size=16, base_resolution=BASE, attention_scale="default", cache=cache
        )
        out = tp.run(pipe, kwargs)
        pipe.disable_sparse_attention()
        if not cache:
            nocache = out
    err = float((out - reference).norm() / reference.norm())
    assert err < 1e-5, err
    assert float((nocache - reference).norm() / reference.norm()) > 100 * err  # cache mode differs


@pytest.mark.parametrize(("cache", "override_uncond"), [(False, False), (True, True)])
def test_override_uncond_equals_the_stock_processor_reference(cache, override_uncond):
    """Spec quirk 6: the reference overrides the unconditional pass without cache mode only; the
    option makes both modes agree, and differs from the reference's choice."""
    pipe, kwargs = tp.build_wan21()
    kwargs = dict(kwargs, num_inference_steps=4)
    cache_steps = 2 if cache else None
    results = {}
    for choice in (override_uncond, None):
        undo = _reference_dual_path(pipe.transformer, (5, 7), cache_steps=cache_steps, override_uncond=choice)
        reference = tp.run(pipe, kwargs)
        undo()
        pipe.enable_sparse_attention(
            "freeswim",
            block_size=16,
            base_resolution=BASE,
            attention_scale="default",
            cache=cache,
            override_uncond=choice,
        )
        results[choice] = (tp.run(pipe, kwargs), reference)
        pipe.disable_sparse_attention()
    for out, reference in results.values():
        assert float((out - reference).norm() / reference.norm()) < 1e-5
    chosen, default = results[override_uncond][0], results[None][0]
    assert float((chosen - default).norm() / default.norm()) > 1e-4  # 10x the agreement tolerance


def test_override_replaces_the_window_items_cross_attention():
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention("freeswim", block_size=16, base_resolution=BASE)
    seen = []
    handles = [
        b.attn2.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
        for b in pipe.transformer.blocks
    ]
    tp.run(pipe, kwargs)
    for h in handles:
        h.remove()
    pipe.disable_sparse_attention()
    assert seen and all(o.shape[0] == 2 for o in seen)
    assert all(torch.equal(o[0], o[1]) for o in seen)


def test_cache_mode_schedule_and_reuse(monkeypatch):
    pipe, kwargs = tp.build_wan21()
    kwargs = dict(kwargs, num_inference_steps=4)
    pipe.enable_sparse_attention("freeswim", block_size=16, base_resolution=BASE, cache=True, cache_steps=2)
    method = pipe.transformer._dit_accel_session.method
    calls = []
    original = method.wants_dual

    def spy(call):
        result = original(call)
        calls.append((call.step_index, call.cfg_branch, result))
        return result

    monkeypatch.setattr(method, "wants_dual", spy)
    cross_computed = []
    real_dense = freeswim_module.dense_attention

    def counting_dense(q, k, *args, **kw):
        from dit_accel.context import current_context

        ctx = current_context()
        if ctx is not None and ctx.layer.kind == "cross":
            cross_computed.append((ctx.call.step_index, ctx.call.cfg_branch))
        return real_dense(q, k, *args, **kw)

    monkeypatch.setattr(freeswim_module, "dense_attention", counting_dense)
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    assert torch.isfinite(out).all()
    # Guide steps 0 and 2 run the dual path on the conditional pass only.
    assert sorted({c for c in calls}) == sorted(
        {(s, b, b == "cond" and s % 2 == 0) for s in range(4) for b in ("cond", "uncond")}
    )
    blocks = len(pipe.transformer.blocks)
    # Cross-attention is computed on guide cond passes and on every uncond pass, reused otherwise.
    assert sorted(set(cross_computed)) == sorted(
        {(0, "cond"), (2, "cond")} | {(s, "uncond") for s in range(4)}
    )
    assert cross_computed.count((1, "cond")) == 0 and cross_computed.count((0, "cond")) == blocks
    # The cache holds one cross-attention output per block: (1, L, heads * head_dim) float32.
    dim = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    heads = pipe.transformer.config.num_attention_heads
    assert report.state_bytes == blocks * 420 * dim * 4, (report.state_bytes, heads)


def test_cache_that_fits_nowhere_raises(monkeypatch):
    pipe, kwargs = tp.build_wan21()
    pipe.enable_sparse_attention(
        "freeswim", block_size=16, base_resolution=BASE, cache=True, cache_device="cpu"
    )
    monkeypatch.setattr(freeswim_module, "_host_available_bytes", lambda: 1024)
    with pytest.raises(MemoryError, match="GiB for the cross-attention cache"):
        tp.run(pipe, kwargs)
    pipe.disable_sparse_attention()


def test_other_families_need_the_experimental_window_alone():
    pipe, kwargs = tp.build_cogvideox()
    with pytest.raises(NotImplementedError, match="experimental=True"):
        pipe.enable_sparse_attention("freeswim", block_size=16)
    with pytest.raises(NotImplementedError, match="cross_attn_override=False"):
        pipe.enable_sparse_attention("freeswim", block_size=16, experimental=True)
    dense = tp.run(pipe, kwargs)
    pipe.enable_sparse_attention(
        "freeswim", block_size=16, experimental=True, cross_attn_override=False, window=(3, 3)
    )
    out = tp.run(pipe, kwargs)
    report = pipe.sparse_attention_report()
    pipe.disable_sparse_attention()
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    assert 0 < report.mean_density < 1


def test_experimental_joint_window_equals_the_oracle():
    """Video queries: window keys plus every text key; text queries dense (HunyuanVideo layout)."""
    seed = torch.Generator().seed()
    g = torch.Generator().manual_seed(seed)
    grid, n_text = (2, 5, 6), 7
    n = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(2, n + n_text, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.ones(2, n + n_text, dtype=torch.bool)
    padding[1, n + 3 :] = False
    cfg = FreeSwimConfig(block_size=16, window=(3, 3), experimental=True, cross_attn_override=False)
    ctx = context(grid, family="HunyuanVideo", text_position="last")
    out, _ = FreeSwim(cfg)(q, k, v, scale=None, key_padding_mask=padding, context=ctx)
    allowed = torch.ones(n + n_text, n + n_text, dtype=torch.bool)
    allowed[:n, :n] = oracle_mask(grid, (3, 3))
    scale = math.sqrt(math.log(3120) / math.log(1560) / 16)
    ref = dense_attention_torch(
        q, k, v, block_mask=allowed[None, None], key_padding_mask=padding, scale=scale
    ).out
    assert float((out - ref).norm() / ref.norm()) < 1e-10, f"seed {seed}"


@pytest.mark.parametrize(
    "options",
    [
        dict(base_resolution=(0, 832)),
        dict(window=(0, 3)),
        dict(cache_steps=0),
        dict(cache_device="gpu"),
        dict(attention_scale="big"),
        dict(attention_scale=-1.0),
        dict(order="zigzag"),
        dict(cache=True, cross_attn_override=False),
        dict(override_uncond=True, cross_attn_override=False),
        dict(override_uncond="yes"),
    ],
)
def test_config_rejects_bad_values(options):
    with pytest.raises(ValueError):
        FreeSwimConfig(**options)


def test_enable_by_name_and_config_object():
    pipe, kwargs = tp.build_wan21()
    for how in ("freeswim", FreeSwimConfig(block_size=16, base_resolution=BASE)):
        extra = dict(block_size=16, base_resolution=BASE) if isinstance(how, str) else {}
        dit_accel.enable_sparse_attention(pipe, how, **extra)
        assert isinstance(pipe.transformer._dit_accel_session.method, FreeSwim)
        pipe.disable_sparse_attention()
        assert "forward" not in vars(pipe.transformer)


# ------------------------------------------------------------------------------ the workflow
def _workflow_kwargs():
    pipe, kwargs = tp.build_wan21()
    drop = ("height", "width", "output_type", "num_inference_steps", "num_frames")
    return pipe, {k: v for k, v in kwargs.items() if k not in drop}


def test_workflow_drafts_at_base_and_refines_at_twice_the_grid(monkeypatch):
    from dit_accel.pipelines import freeswim_generate

    pipe, kwargs = _workflow_kwargs()
    seen = []
    original = FreeSwim.attend

    def spy(self, q, k, v, **kw):
        seen.append((kw["context"].call.grid, kw["context"].call.step_index, TWIN_BRANCH.get()))
        return original(self, q, k, v, **kw)

    monkeypatch.setattr(FreeSwim, "attend", spy)
    result = freeswim_generate(
        pipe,
        height=160,
        width=224,
        num_frames=9,
        num_inference_steps=4,
        config=FreeSwimConfig(block_size=16, base_resolution=BASE),
        output_type="pt",
        **kwargs,
    )
    assert tuple(result.draft.shape) == (1, 9, 3, 80, 112)
    assert tuple(result.frames.shape) == (1, 9, 3, 160, 224)
    assert torch.isfinite(result.frames).all()
    # Stage B only: the 10x14 token grid, strength 0.7 of 4 steps = 2 steps, dual path throughout.
    assert (
        {s[0] for s in seen} == {(3, 10, 14)} and {s[1] for s in seen} == {0, 1} and all(s[2] for s in seen)
    )
    assert not dit_accel.api._sessions(pipe)  # the pipeline is left as it was
    # The result says what the refinement's attention did, read before FreeSwim was disabled.
    assert result.report.method == "freeswim" and {r["step"] for r in result.report.records} == {0, 1}


def test_workflow_rejects_sizes_that_are_not_multiples_of_16():
    from dit_accel.pipelines import freeswim_generate

    pipe, kwargs = _workflow_kwargs()
    with pytest.raises(ValueError, match="nearest valid height is 176"):
        freeswim_generate(pipe, height=170, width=224, num_frames=9, **kwargs)
    pipe.enable_sparse_attention("dense")
    with pytest.raises(ValueError, match="disable_sparse_attention"):
        freeswim_generate(pipe, height=160, width=224, num_frames=9, **kwargs)


def test_cache_size_at_the_reference_operating_point():
    """Spec 3.5: Wan-1.3B at 1088x1920, 81 frames: 171,360 x 1,536 x 2 B per block, ~15.8 GB for 30."""
    from types import SimpleNamespace

    from dit_accel.pipelines import freeswim_cache_bytes, nearest_valid_size

    wan13 = SimpleNamespace(
        config=SimpleNamespace(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, num_layers=30
        ),
        dtype=torch.bfloat16,
    )
    size = freeswim_cache_bytes(wan13, 1088, 1920, 81)
    assert size == 30 * 171_360 * 1_536 * 2
    assert round(size / 1e9, 1) == 15.8
    assert freeswim_cache_bytes(wan13, 1088, 1920, 81, passes=2) == 2 * size  # override_uncond=True
    assert nearest_valid_size(1080) == 1088


def test_gpu_benchmark_script_runs_at_toy_size(tmp_path):
    """benchmarks/bench_freeswim.py is what runs on a lent GPU; the toy run keeps it from rotting."""
    from benchmark_scripts import run_script

    run_script(
        "benchmarks/bench_freeswim.py", "--toy", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path)
    )
    rows = [r for r in (tmp_path / "bench_freeswim.md").read_text().splitlines() if r.startswith("| toy")]
    assert [r.split("|")[2].strip() for r in rows] == ["spatial", "raster"]
    tile_density = [float(r.split("|")[7]) for r in rows]
    assert tile_density[0] < tile_density[1] < 1  # spatial-major visits fewer tiles than raster


def test_at_its_base_resolution_freeswim_is_exactly_dense_unless_the_reference_preset():
    pipe, call = tp.build_wan21()  # 160 x 224 px: a 10 x 14 token grid
    stock = tp.run(pipe, call)
    base = dict(base_resolution=(call["height"], call["width"]), block_size=16)
    dit_accel.enable_sparse_attention(pipe, "freeswim", **base)
    assert torch.equal(tp.run(pipe, call), stock)
    assert dit_accel.sparse_attention_report(pipe).mean_density == 1.0
    dit_accel.enable_sparse_attention(pipe, "freeswim", preset="reference", **base)
    # The reference keeps its fixed scale and its twin branch at the base resolution.
    assert not torch.allclose(tp.run(pipe, call), stock, atol=1e-4)
    dit_accel.disable_sparse_attention(pipe)
