"""Step derivation from timesteps, and the dispatcher backend's registration and fallbacks."""

from __future__ import annotations

import torch

from dit_accel.session import StepTracker


def test_steps_follow_decreasing_timesteps_and_cfg_repeats():
    restarts = []
    tracker = StepTracker(on_new_generation=lambda: restarts.append(1))
    # Two CFG calls per step (same timestep), three steps.
    steps = [tracker.observe(t, None) for t in (999.0, 999.0, 666.0, 666.0, 333.0, 333.0)]
    assert steps == [0, 0, 1, 1, 2, 2]
    assert len(restarts) == 1
    # A larger timestep means a new generation.
    assert tracker.observe(999.0, None) == 0
    assert len(restarts) == 2


def test_given_step_index_wins_and_a_smaller_one_restarts():
    restarts = []
    tracker = StepTracker(on_new_generation=lambda: restarts.append(1))
    assert [tracker.observe(t, i) for i, t in enumerate((1.0, 0.9, 0.8))] == [0, 1, 2]
    # Same timestep sequence again (e.g. a caching hook skipped nothing): step 0 restarts.
    assert tracker.observe(1.0, 0) == 0
    assert len(restarts) == 2


def test_backend_is_registered_with_diffusers():
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from dit_accel.patches.backend import dit_accel_attention, register_backend

    member = register_backend()
    assert register_backend() is member
    assert AttentionBackendName("dit_accel") is member
    assert _AttentionBackendRegistry._backends[member] is dit_accel_attention


def test_backend_without_context_is_exact_sdpa():
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from dit_accel.patches.backend import register_backend

    member = register_backend()
    q, k, v = (torch.randn(2, 20, 2, 8) for _ in range(3))
    mask = torch.rand(2, 1, 20, 20) > 0.3  # not a key-padding mask
    ours = dispatch_attention_fn(q, k, v, attn_mask=mask, backend=member)
    native = dispatch_attention_fn(q, k, v, attn_mask=mask, backend="native")
    assert torch.equal(ours, native)
