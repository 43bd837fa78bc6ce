"""The full-attention twin branch a method may ask for (FreeSwim), for families that have one.

Inside the transformer's forward the batch is doubled: [method items, full-attention items] from
the same inputs. Self-attention runs the method on the first half and dense attention on the
second (the driver, ``methods/base.py``); the routed text cross-attention goes to the method,
which decides what every item gets. The transformer returns the first half only, so a pipeline
and its scheduler never see the twin items.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..context import CURRENT_CALL, TWIN_BRANCH, CallContext


def double_batch(
    transformer: torch.nn.Module, wants_twin: Callable[[CallContext | None], bool]
) -> Callable[[], None]:
    """Hook the transformer call: when ``wants_twin(call)``, run both branches in one batch.

    Every tensor argument whose first dimension is the latent batch is repeated (hidden states,
    timesteps, text and image embeddings); the output keeps the first half. Forward hooks rather
    than a wrapped ``forward``: they run outside a compiled transformer (the decision and the flag
    live in context variables, which Dynamo cannot trace), so compiling adds no graph break.
    Returns the function that removes the hooks.
    """
    signature = inspect.signature(transformer.forward)
    running: list[tuple[Any, int] | None] = []  # per call in progress: (flag token, batch) or None

    @torch.compiler.disable
    def enter(mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not wants_twin(CURRENT_CALL.get()):
            running.append(None)
            return None
        bound = signature.bind(*args, **kwargs)
        batch = bound.arguments["hidden_states"].shape[0]
        for name, value in bound.arguments.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                bound.arguments[name] = torch.cat([value, value])
        running.append((TWIN_BRANCH.set(True), batch))
        return bound.args, bound.kwargs

    @torch.compiler.disable
    def leave(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        entry = running.pop() if running else None
        if entry is None:
            return None
        token, batch = entry
        TWIN_BRANCH.reset(token)
        if output is None:  # the forward raised
            return None
        if isinstance(output, tuple):
            return (output[0][:batch], *output[1:])
        output.sample = output.sample[:batch]
        return output

    # Registered after the session's hooks: the call context is set when ``enter`` runs.
    pre = transformer.register_forward_pre_hook(enter, with_kwargs=True)
    post = transformer.register_forward_hook(leave, with_kwargs=True, always_call=True)

    def undo() -> None:
        pre.remove()
        post.remove()

    return undo
