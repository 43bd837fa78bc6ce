"""The per-call context an attention method sees, carried in context variables.

diffusers calls the attention backend with tensors only. What a method also needs (the token
grid, where text sits, the denoising step, the CFG branch, which layer) is read by hooks on the
transformer and its attention modules and parked here for the duration of the call. Context
variables rather than globals so that threads and async pipelines cannot see each other's calls.

Which *layer* runs is the exception: it must be visible to ``torch.compile`` while it traces a
transformer block, and Dynamo cannot trace context variables. Each routed module therefore carries
a small CPU tensor naming its layer, and forward hooks keep a per-thread stack of those tensors
that Dynamo can trace (see ``enter_layer``).
"""

from __future__ import annotations

import itertools
import threading
from contextvars import ContextVar
from dataclasses import dataclass

import torch


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

    No model family: what depends on it is resolved into the config when a method is enabled.
    """

    grid: tuple[int, int, int]
    text_position: str
    step_index: int
    num_inference_steps: int | None
    cfg_branch: str
    transformer_name: str

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
CURRENT_BRANCH: ContextVar[tuple[str, dict] | None] = ContextVar("dit_accel_branch", default=None)
#: True while a transformer forward runs with the batch doubled into [method items, full-attention
#: items] (the twin branch a method like FreeSwim asks the adapter for).
TWIN_BRANCH: ContextVar[bool] = ContextVar("dit_accel_twin_branch", default=False)


def current_context() -> AttentionContext | None:
    """The context of the attention call in progress, or None outside a patched transformer."""
    call, layer = CURRENT_CALL.get(), layer_of(running_layer_key())
    if call is None or layer is None:
        return None
    return AttentionContext(call, layer)


# ---------------------------------------------------------------------------- layer identity
#: The attribute of a routed module that holds its layer key (a 0-d int64 CPU tensor).
LAYER_KEY_ATTR = "_dit_accel_layer_key"

_LAYERS: dict[int, LayerContext] = {}
_NEXT_KEY = itertools.count()
_RUNNING = threading.local()


def register_layer(layer: LayerContext) -> torch.Tensor:
    """A new key for ``layer``: a tensor, so compiled code takes it as an input, not a constant.

    A constant would differ per block and make ``torch.compile`` build one graph per block.
    """
    key = next(_NEXT_KEY)
    _LAYERS[key] = layer
    return torch.tensor(key, dtype=torch.int64)


def unregister_layer(key: torch.Tensor) -> None:
    _LAYERS.pop(int(key), None)


def layer_of(key: torch.Tensor | None) -> LayerContext | None:
    """The layer a key names, or None (no key, or a key from an uninstalled model)."""
    return None if key is None else _LAYERS.get(int(key))


def _running_layers() -> list:
    stack = getattr(_RUNNING, "stack", None)
    if stack is None:
        stack = _RUNNING.stack = []
    return stack


def enter_layer(module: torch.nn.Module, args: tuple) -> None:
    """Forward pre-hook of a routed module: its layer key goes on this thread's stack.

    One function for every module, reading the key from the module: Dynamo guards on the hook
    functions it traces, so per-module closures would cost one compiled graph per block.
    """
    _running_layers().append(getattr(module, LAYER_KEY_ATTR))


def leave_layer(module: torch.nn.Module, args: tuple, output: object) -> None:
    """Forward hook of a routed module. Not ``always_call`` (Dynamo guards on the hook id of those,
    one graph per block again); a forward that raises leaves its key, which ``clear_layers`` drops."""
    stack = _running_layers()
    if stack:
        stack.pop()


def clear_layers() -> None:
    """Forget keys left by a forward that raised; called when a transformer call starts (in place:
    compiled code is specialised to the list object)."""
    _running_layers().clear()


def running_layer_key() -> torch.Tensor | None:
    """The key of the innermost routed module running on this thread, or None."""
    stack = _running_layers()
    return stack[-1] if stack else None
