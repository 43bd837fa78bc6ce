"""Processors for models whose stock processors call SDPA directly (CogVideoX, PixArt).

Each does exactly what the stock processor does for the modules it is installed on, except that
the attention product goes through ``dispatch_attention_fn`` with the ``dit_accel`` backend.
Tensors stay (batch, seq, heads, head_dim), the dispatcher's layout; norms over ``head_dim`` and
rotary embeddings are layout-agnostic, so the arithmetic is the stock arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from .backend import IntegrationError


class _RoutedProcessor:
    """Holds the backend member; subclasses implement ``__call__`` with the stock signature."""

    def __init__(self, backend: Any) -> None:
        self._attention_backend = backend
        self._parallel_config = None


class CogVideoXRoutedProcessor(_RoutedProcessor):
    """Joint text+video self-attention of CogVideoX (text first), routed through the dispatcher."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, text_seq_length:] = apply_rotary_emb(
                query[:, text_seq_length:], image_rotary_emb, sequence_dim=1
            )
            if not attn.is_cross_attention:
                key[:, text_seq_length:] = apply_rotary_emb(
                    key[:, text_seq_length:], image_rotary_emb, sequence_dim=1
                )

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


class SelfAttentionRoutedProcessor(_RoutedProcessor):
    """Plain self-attention (PixArt's ``attn1``), routed through the dispatcher.

    Installed only on modules that use none of ``AttnProcessor2_0``'s optional features (spatial
    or group norm, residual connection, output rescaling): ``check_module`` refuses the others.
    """

    @staticmethod
    def check_module(attn: Any) -> None:
        unsupported = [
            name
            for name, present in (
                ("spatial_norm", getattr(attn, "spatial_norm", None) is not None),
                ("group_norm", getattr(attn, "group_norm", None) is not None),
                ("residual_connection", bool(getattr(attn, "residual_connection", False))),
                ("rescale_output_factor", getattr(attn, "rescale_output_factor", 1.0) != 1.0),
                ("is_cross_attention", bool(getattr(attn, "is_cross_attention", False))),
            )
            if present
        ]
        if unsupported:
            raise IntegrationError(
                f"self-attention module uses features dit-accel does not route: {unsupported}"
            )

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise IntegrationError(
                "SelfAttentionRoutedProcessor received encoder_hidden_states; it serves self-attention only"
            )
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = query.view(batch_size, -1, attn.heads, key.shape[-1] // attn.heads)
        key = key.view(batch_size, -1, attn.heads, key.shape[-1] // attn.heads)
        value = value.view(batch_size, -1, attn.heads, value.shape[-1] // attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        return hidden_states
