"""The per-call context an attention method sees, carried in context variables.

diffusers calls the attention backend with tensors only. What a method also needs (the token
grid, where text sits, the denoising step, the CFG branch, which layer) is read by hooks on the
transformer and its attention modules and parked here for the duration of the call. Context
variables rather than globals so that threads and async pipelines cannot see each other's calls.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class CallContext:
    """What is known for one transformer forward call.

    Attributes:
        grid: (frames, height, width) of the video/image token grid after patchify.
        text_position: where text tokens sit in joint self-attention: "none" (Wan, PixArt),
            "first" (CogVideoX) or "last" (HunyuanVideo).
        step_index: the denoising step, counted from 0 in each generation.
        num_inference_steps: total steps when the pipeline says so, else None.
        cfg_branch: "cond", "uncond", "cond_uncond" (both in one batch) or "unknown".
        transformer_name: which transformer of the pipeline runs ("transformer", "transformer_2").
        family: the adapter's model family ("Wan", "HunyuanVideo", "CogVideoX", "PixArt"), for
            per-family config defaults (never for branching inside an algorithm).
    """

    grid: tuple[int, int, int]
    text_position: str
    step_index: int
    num_inference_steps: int | None
    cfg_branch: str
    transformer_name: str
    family: str = ""

    @property
    def num_video_tokens(self) -> int:
        frames, height, width = self.grid
        return frames * height * width


@dataclass(frozen=True)
class LayerContext:
    """Which attention layer runs: its module path, its index among routed layers, and its kind.

    ``kind`` is "self" for the routed self-attention (every method) and "cross" for the text
    cross-attention a method routes itself (FreeSwim's override).
    """

    name: str
    index: int
    kind: str = "self"


@dataclass(frozen=True)
class AttentionContext:
    """Everything a method may use besides the tensors themselves."""

    call: CallContext
    layer: LayerContext


CURRENT_CALL: ContextVar[CallContext | None] = ContextVar("dit_accel_call", default=None)
CURRENT_LAYER: ContextVar[LayerContext | None] = ContextVar("dit_accel_layer", default=None)
CURRENT_BRANCH: ContextVar[tuple[str, dict] | None] = ContextVar("dit_accel_branch", default=None)


def current_context() -> AttentionContext | None:
    """The context of the attention call in progress, or None outside a patched transformer."""
    call, layer = CURRENT_CALL.get(), CURRENT_LAYER.get()
    if call is None or layer is None:
        return None
    return AttentionContext(call, layer)
