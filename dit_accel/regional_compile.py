"""Regional compilation: ``torch.compile`` on each repeated transformer block.

Compiling the blocks rather than the whole transformer compiles one block's graph once and reuses
it for every block (dit-accel passes the layer as a graph input for exactly this), so compile time
stays small, as diffusers' ``compile_repeated_blocks`` intends.
"""

from __future__ import annotations

from typing import Any

import torch

#: Block lists of models that do not declare ``_repeated_blocks`` (CogVideoX, PixArt in diffusers 0.42).
_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


def compile_blocks(transformer: torch.nn.Module, **compile_kwargs: Any) -> int:
    """Compile every repeated block of ``transformer``; return how many were compiled.

    ``fullgraph=True`` unless given: dit-accel's attention is one custom op, so a graph break in a
    block would be a bug worth an error rather than a silent slowdown. Uses diffusers'
    ``compile_repeated_blocks`` where the model declares its blocks, otherwise the known block lists.
    """
    compile_kwargs.setdefault("fullgraph", True)
    declared = getattr(transformer, "_repeated_blocks", None) or ()
    blocks = [m for m in transformer.modules() if type(m).__name__ in declared]
    if not blocks:
        blocks = [block for name in _BLOCK_LISTS for block in getattr(transformer, name, ())]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no repeated blocks to compile")
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)
