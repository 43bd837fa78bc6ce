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


def keys_with_text(
    video_k: torch.Tensor,
    video_v: torch.Tensor,
    text_k: torch.Tensor,
    text_v: torch.Tensor,
    video_ok: torch.Tensor | None,
    text_ok: torch.Tensor | None,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and values ``[video padded to whole blocks, text]`` and their validity (B, L).

    Padding the video keys makes the text keys start on a block boundary, so a key block is either
    video or text and a layout can list "every text block"; the padding slots are invalid keys.
    Without text nothing is padded (the last key block may be partial, as the queries' is).
    ``video_ok`` / ``text_ok``: bool (B, N) or None (all valid). ``text_k`` may have no tokens.
    """
    batch, n_video = video_k.shape[:2]
    padded = -(-n_video // block_size) * block_size if text_k.shape[1] else n_video

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = padded - n_video
        return torch.cat([x, x.new_zeros(batch, extra, *x.shape[2:])], dim=1) if extra else x

    valid = torch.zeros(batch, padded, dtype=torch.bool, device=video_k.device)
    valid[:, :n_video] = True if video_ok is None else video_ok
    text_valid = (
        text_ok
        if text_ok is not None
        else torch.ones(batch, text_k.shape[1], dtype=torch.bool, device=video_k.device)
    )
    return (
        torch.cat([pad(video_k), text_k], dim=1),
        torch.cat([pad(video_v), text_v], dim=1),
        torch.cat([valid, text_valid], dim=1),
    )
