"""The ``dit_accel`` attention backend, registered with diffusers' attention dispatcher.

diffusers routes every attention call of its modern processors through ``dispatch_attention_fn``
and a registry keyed by the ``AttentionBackendName`` enum. We add one member, ``dit_accel``, and a
backend function that hands the call to the active method. Nothing in diffusers is forked: a module
uses the backend only when its processor's ``_attention_backend`` says so.

If diffusers changes this mechanism, registration fails loudly (``IntegrationError``) instead of
silently leaving attention dense.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch

from ..context import CURRENT_CALL, AttentionContext, layer_of, running_layer_key
from ..kernels import dense_attention

logger = logging.getLogger(__name__)

BACKEND_NAME = "dit_accel"


class IntegrationError(RuntimeError):
    """diffusers' extension points are not what this version of dit-accel was built against."""


# The session serving the current transformer call; set by the transformer hook (patches/base.py).
ACTIVE_SESSION: ContextVar[Any] = ContextVar("dit_accel_session", default=None)

_MEMBER = None


def _key_padding_from_mask(attn_mask: torch.Tensor | None, batch: int, seq_k: int) -> tuple[bool, Any]:
    """(ok, key_padding_mask): ok is False when the mask is not a pure per-key mask."""
    if attn_mask is None:
        return True, None
    if attn_mask.dtype != torch.bool:
        return False, None
    if attn_mask.dim() == 2 and attn_mask.shape == (batch, seq_k):
        return True, attn_mask
    if (
        attn_mask.dim() == 4
        and attn_mask.shape[1] == 1
        and attn_mask.shape[2] == 1
        and attn_mask.shape[3] == seq_k
    ):
        return True, attn_mask[:, 0, 0].expand(batch, seq_k)
    return False, None


def dit_accel_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    _parallel_config: Any = None,
) -> torch.Tensor:
    """Backend entry point: (batch, seq, heads, head_dim) in, same layout out.

    Under ``torch.compile`` the call becomes one opaque custom op, ``dit_accel::attention``: methods
    keep Python state (layouts cached per grid, step counters, per-layer statistics) that Dynamo
    must not trace, and the op keeps all of it out of the graph without a graph break. The layer
    arrives as a key tensor (an input of the graph, so one graph serves every block); the call
    context is read when the op runs.
    """
    layer_key = running_layer_key()
    args = (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer_key)
    if _parallel_config is not None:
        return _context_parallel(*args, _parallel_config)
    if torch.compiler.is_compiling():
        return torch.ops.dit_accel.attention(*args)
    return _attention(*args)


def _attention(
    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer_key
) -> torch.Tensor:
    """Hand the call to the session's method, or compute exactly what diffusers would."""
    session, call, layer = ACTIVE_SESSION.get(), CURRENT_CALL.get(), layer_of(layer_key)
    if session is None or call is None or layer is None:
        return _exact_dense(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    context = AttentionContext(call, layer)
    ok, key_padding_mask = _key_padding_from_mask(attn_mask, query.shape[0], key.shape[1])
    if not (ok and dropout_p == 0.0 and not is_causal and query.shape[2] == key.shape[2]):
        session.note_fallback(layer.name, "unsupported attention arguments (mask, dropout, causal or GQA)")
        return _exact_dense(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    out, density = session.method(
        query, key, value, scale=scale, key_padding_mask=key_padding_mask, context=context
    )
    if density is not None:  # None: a call the method serves but that is not sparse attention
        session.record(context, density)
    return out


# Not capturable in a CUDA graph: the op runs Python (step counters, layouts per grid, records)
# that a graph replay would skip. The tag makes torch.compile's "reduce-overhead" mode leave it out.
_OP_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


@torch.library.custom_op("dit_accel::attention", mutates_args=(), tags=_OP_TAGS)
def _attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    layer_key: torch.Tensor | None,
) -> torch.Tensor:
    # Contiguous: the layout the fake implementation promises the compiler. Methods return fresh
    # tensors, never their state, which compiled code may reuse as a buffer and write into.
    out = _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer_key)
    return out.contiguous()


@_attention_op.register_fake
def _(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer_key):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


@torch.compiler.disable
def _context_parallel(
    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer_key, parallel_config
):
    """Ulysses context parallelism: diffusers' all-to-all gives every rank the whole sequence for a
    subset of the heads, the method runs on that (its layouts are per head), and the output goes
    back. Ring attention would hand each rank partial key ranges, which a method's layout over the
    whole sequence cannot serve: it is refused. Runs eagerly (a graph break under compile).
    """
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    cp = parallel_config.context_parallel_config
    if cp is None or cp.ring_degree > 1:
        raise NotImplementedError(
            "dit-accel supports Ulysses context parallelism (ContextParallelConfig(ulysses_degree=N)) but "
            "not ring attention (ring_degree > 1): each rank must see the whole sequence"
        )

    def forward_op(
        ctx, q, k, v, mask, dropout, causal, op_scale, gqa, return_lse, _save_ctx=True, _parallel_config=None
    ):
        if return_lse:
            raise NotImplementedError("dit-accel's context-parallel attention does not return LSEs")
        return _attention(q, k, v, mask, dropout, causal, op_scale, gqa, layer_key)

    def backward_op(*args, **kwargs):
        raise NotImplementedError("dit-accel attention is inference-only (no backward)")

    return _templated_context_parallel_attention(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
        False,
        forward_op=forward_op,
        backward_op=backward_op,
        _parallel_config=parallel_config,
    )


def _exact_dense(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> torch.Tensor:
    """What diffusers' native backend computes, for calls a method must not touch."""
    if attn_mask is None and not is_causal and dropout_p == 0.0 and not enable_gqa:
        return dense_attention(query, key, value, scale=scale)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )
    return out.transpose(1, 2)


def register_backend() -> Any:
    """Add ``dit_accel`` to diffusers' backend enum and registry (idempotent); return the member."""
    global _MEMBER
    if _MEMBER is not None:
        return _MEMBER
    try:
        from diffusers.models import attention_dispatch as dispatch

        names, registry = dispatch.AttentionBackendName, dispatch._AttentionBackendRegistry
        backends, constraints, arg_names = (
            registry._backends,
            registry._constraints,
            registry._supported_arg_names,
        )
    except (ImportError, AttributeError) as error:
        raise IntegrationError(
            "diffusers' attention dispatcher (AttentionBackendName, _AttentionBackendRegistry) "
            "was not found; "
            "this diffusers version is not supported by dit-accel"
        ) from error

    member = names._value2member_map_.get(BACKEND_NAME)
    if member is None:
        member = _add_enum_member(names, "DIT_ACCEL", BACKEND_NAME)
    backends[member] = dit_accel_attention
    constraints[member] = []
    supports_cp = getattr(registry, "_supports_context_parallel", None)
    if supports_cp is not None:  # Ulysses only; ring attention is refused at call time
        supports_cp.add(member.value)
    arg_names[member] = set(_parameters(dit_accel_attention))
    if (
        names(BACKEND_NAME) is not member
        or registry._backends.get(names(BACKEND_NAME)) is not dit_accel_attention
    ):
        raise IntegrationError("registering the dit_accel attention backend with diffusers failed")
    _MEMBER = member
    return member


def _parameters(fn: Callable) -> list[str]:
    import inspect

    return list(inspect.signature(fn).parameters)


def _add_enum_member(enum_cls: Any, name: str, value: str) -> Any:
    """Extend a ``str`` Enum in place; diffusers looks members up by value, so that is all it needs."""
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member.__init__(value)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)
    return member
