"""Splitting a joint text+video attention call into its video and text parts.

HunyuanVideo appends text tokens after the video tokens, CogVideoX puts them first; Wan and
PixArt have no text in self-attention. Methods sparsify video queries only: text queries stay
dense and text keys are always attended, so this split is shared by every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import CallContext


@dataclass(frozen=True)
class JointSplit:
    video: slice
    text: slice
    num_text: int

    def join(self, video: torch.Tensor, text: torch.Tensor | None, first_text: bool) -> torch.Tensor:
        if text is None:
            return video
        return torch.cat([text, video] if first_text else [video, text], dim=1)


def split_joint(seq_len: int, call: CallContext) -> JointSplit:
    """Where video and text tokens sit in a sequence of ``seq_len`` tokens; raises on a mismatch."""
    n_video = call.num_video_tokens
    n_text = seq_len - n_video
    if n_text < 0 or (n_text > 0 and call.text_position == "none"):
        raise ValueError(
            f"attention sequence has {seq_len} tokens but the token grid {call.grid} has {n_video}; "
            "the adapter's grid does not match this model's attention input"
        )
    if call.text_position == "first":
        return JointSplit(slice(n_text, seq_len), slice(0, n_text), n_text)
    return JointSplit(slice(0, n_video), slice(n_video, seq_len), n_text)
