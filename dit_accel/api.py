"""The public verbs: enable, disable, report; as functions and as DiffusionPipeline methods."""

from __future__ import annotations

import os
from typing import Any

import torch

from .config import SparseAttentionConfig, resolve_config
from .report import SparseAttentionReport
from .session import SparseSession

_SESSION_ATTR = "_dit_accel_session"
_INSTALL_ATTR = "_dit_accel_installation"
_TRANSFORMER_COMPONENTS = ("transformer", "transformer_2")


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``torch.compile`` wrapper (``pipe.transformer = torch.compile(...)``):
    hooks and processors belong on the model, which the wrapper calls."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else module


def _components(target: Any) -> list[tuple[str, torch.nn.Module]]:
    """(component name, model) of every transformer of a pipeline, or of a bare transformer."""
    if isinstance(target, torch.nn.Module):
        return [("transformer", _unwrapped(target))]
    modules = [(name, getattr(target, name, None)) for name in _TRANSFORMER_COMPONENTS]
    return [(name, _unwrapped(m)) for name, m in modules if isinstance(m, torch.nn.Module)]


def _transformers(target: Any) -> list[tuple[str, torch.nn.Module]]:
    """(component name, model) of the transformers to patch; raises for anything unsupported."""
    from .patches import UnsupportedModelError, adapter_for

    if not isinstance(target, torch.nn.Module) and not isinstance(getattr(target, "components", None), dict):
        raise TypeError(
            "enable_sparse_attention expects a diffusers pipeline or transformer, "
            f"got {type(target).__name__}"
        )
    found = _components(target)
    if not found:
        raise UnsupportedModelError(
            f"{type(target).__name__} has no transformer component for dit-accel to patch"
        )
    for _, module in found:
        adapter_for(module)
    return found


def enable_sparse_attention(
    pipe_or_transformer: Any, method: str | SparseAttentionConfig = "auto", **overrides: Any
) -> SparseAttentionReport:
    """Route the video/image self-attention of a pipeline (or bare transformer) through ``method``.

    Args:
        pipe_or_transformer: a diffusers pipeline (its ``transformer`` and, for Wan 2.2 A14B,
            ``transformer_2`` are patched) or a transformer model.
        method: a registered method name ("auto", "dense", "window3d", ...) or a config object.
            "auto" (the default) is a policy with one budget knob, ``density``; see ``AutoConfig``.
        **overrides: config fields, e.g. ``block_size=64`` or ``window=(9, 24, 24)``.

    Enabling again replaces the previous method. Returns the (empty) report of the new session.
    """
    from .patches import Installation, adapter_for

    config = resolve_config(method, **overrides)
    targets = _transformers(pipe_or_transformer)
    # The transformers of one pipeline are of one family: its defaults complete the config.
    config = adapter_for(targets[0][1]).resolve(config)
    _check_against_models(config, targets)
    disable_sparse_attention(pipe_or_transformer)
    session = SparseSession(config)
    scheduler = getattr(pipe_or_transformer, "scheduler", None)
    if scheduler is not None:
        session.steps_hint = lambda: _scheduled_steps(scheduler)
    installed: list[torch.nn.Module] = []
    try:
        for name, module in targets:
            installation = Installation(module, adapter_for(module), session, name)
            installation.install()
            setattr(module, _INSTALL_ATTR, installation)
            setattr(module, _SESSION_ATTR, session)
            installed.append(module)
            session.transformer_names.append(name)
    except Exception:
        for module in installed:
            _uninstall(module)
        raise
    return session.report()


def _check_against_models(config: SparseAttentionConfig, targets: list[tuple[str, torch.nn.Module]]) -> None:
    """What the config alone cannot know: layer indices that exist, a backend that can run."""
    from .patches import adapter_for

    for name, module in targets:
        layers = len(adapter_for(module).routed_layers(module))
        beyond = [i for i in config.dense_layers or () if i >= layers]
        if beyond:
            raise ValueError(
                f"dense_layers {beyond}: {name} has {layers} routed self-attention layers (0-{layers - 1})"
            )
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if config.kernel_backend == "triton" and not (torch.cuda.is_available() or interpreted):
        raise ValueError(
            "kernel_backend='triton' needs a CUDA device (or TRITON_INTERPRET=1, the CPU interpreter); "
            "use 'auto' or 'torch' on this machine"
        )


def _scheduled_steps(scheduler: Any) -> int | None:
    """Denoising steps of the generation in progress, from the scheduler's timestep list."""
    timesteps = getattr(scheduler, "timesteps", None)
    return len(timesteps) if timesteps is not None and len(timesteps) else None


def _uninstall(module: torch.nn.Module) -> None:
    installation = module.__dict__.pop(_INSTALL_ATTR, None)
    session = module.__dict__.pop(_SESSION_ATTR, None)
    if installation is not None:
        installation.uninstall()
    if session is not None:
        session.close()


def _sessions(target: Any) -> list[SparseSession]:
    sessions: list[SparseSession] = []
    for _, module in _components(target):
        session = getattr(module, _SESSION_ATTR, None)
        if session is not None and session not in sessions:
            sessions.append(session)
    return sessions


def disable_sparse_attention(pipe_or_transformer: Any) -> None:
    """Restore the original processors, backends and forward behaviour exactly; free method state."""
    for _, module in _components(pipe_or_transformer):
        _uninstall(module)


def sparse_attention_report(pipe_or_transformer: Any) -> SparseAttentionReport:
    """What sparse attention did during the last generation (density per call, state memory)."""
    sessions = _sessions(pipe_or_transformer)
    if not sessions:
        raise RuntimeError(
            "sparse attention is not enabled on this object; call enable_sparse_attention() first"
        )
    return sessions[0].report()


def install_pipeline_methods() -> None:
    """Add the three verbs to ``diffusers.DiffusionPipeline`` (idempotent)."""
    from diffusers import DiffusionPipeline

    DiffusionPipeline.enable_sparse_attention = enable_sparse_attention
    DiffusionPipeline.disable_sparse_attention = disable_sparse_attention
    DiffusionPipeline.sparse_attention_report = sparse_attention_report
