"""The demo model's parts: its transformer config and its word-level prompt encoder."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from .data import COLOURS, DIRECTIONS, SHAPES

#: A small Wan 2.1-architecture transformer on pixels: 4x4 patches of 3-channel frames.
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=64,
    freq_dim=64,
    ffn_dim=256,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=256,
)
VOCABULARY = ("<pad>", "<unk>", "moving", *COLOURS, *SHAPES, *DIRECTIONS)
MAX_WORDS = 6


def prompt_words(prompt: str) -> list[str]:
    """The words the prompt encoder reads: lower case, commas as spaces."""
    return prompt.lower().replace(",", " ").split()


def check_vocabulary(prompt: str) -> None:
    """A ValueError listing the known words unless every word of ``prompt`` is one of them and
    there are at most ``MAX_WORDS`` (the encoder reads other words as ``<unk>``, drops extra ones)."""
    known = VOCABULARY[2:]
    words = prompt_words(prompt)
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(
            f"the demo model does not know {', '.join(map(repr, unknown))}; its words are {', '.join(known)}"
        )
    if len(words) > MAX_WORDS:
        raise ValueError(f"the demo model reads at most {MAX_WORDS} words, got {len(words)} in {prompt!r}")


def build_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


class DemoPromptEncoder(torch.nn.Module):
    """Words of the demo vocabulary -> (B, 6, 64) embeddings; no tokenizer, no download.

    Unknown words map to ``<unk>``; the empty prompt (all padding) is the unconditional input.
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.words = torch.nn.Embedding(len(VOCABULARY), dim)
        self.positions = torch.nn.Parameter(torch.zeros(MAX_WORDS, dim))

    @property
    def dtype(self) -> torch.dtype:  # DiffusionPipeline.to() reads these of every component
        return self.positions.dtype

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @staticmethod
    def token_ids(prompts: list[str]) -> torch.Tensor:
        index = {w: i for i, w in enumerate(VOCABULARY)}
        ids = torch.zeros(len(prompts), MAX_WORDS, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt_words(prompt)[:MAX_WORDS]
            ids[row, : len(words)] = torch.tensor([index.get(w, 1) for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.token_ids(prompts).to(self.positions.device)
        present = (ids != 0).unsqueeze(-1)
        return (self.words(ids) + self.positions) * present
