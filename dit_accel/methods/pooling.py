"""Rectified SpaAttn's pooled estimates: block means, the estimated block mass, selection, GAPR.

Everything here works on pooled data (one vector per block of ``block_size`` curve-ordered
tokens), so it costs O(n_blocks^2 x head_dim) per head: small next to attention itself. All of it
is batched over (batch, head) on the device, with no host synchronisation.

Shapes: per-token tensors are (B, N, H, D) as everywhere in dit-accel; pooled tensors are
(B, H, n_blocks, D) and block maps (B, H, n_query_blocks, n_columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import num_blocks


@dataclass(frozen=True)
class PooledBlocks:
    """Per-block means and mean absolute deviations of one tensor, (B, H, n_blocks, D) each.

    ``weight``: (n_blocks,) or (B, n_blocks) tokens a block stands for in the mass estimate
    (``block_size`` for every block with padded means, the real token count with valid means).
    """

    mean: torch.Tensor
    deviation: torch.Tensor
    weight: torch.Tensor


def pool_blocks(
    x: torch.Tensor, block_size: int, valid: torch.Tensor | None, means: str, dtype: torch.dtype
) -> PooledBlocks:
    """Means and mean absolute deviations of consecutive ``block_size``-token blocks of ``x``.

    ``means="padded"`` (the reference) averages a partial last block over ``block_size`` slots
    with zeros in the missing ones (and in invalid tokens), so padding pulls the mean toward zero
    and adds |mean| per missing slot to the deviation. ``means="valid"`` averages real tokens only.
    ``valid``: bool (B, N) or None (every token real).
    """
    batch, n, heads, dim = x.shape
    blocks = num_blocks(n, block_size)
    pad = blocks * block_size - n
    x = x.to(dtype)
    if valid is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=x.device)
    w = torch.nn.functional.pad(valid, (0, pad)).to(dtype).view(batch, blocks, block_size, 1, 1)
    xb = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).view(batch, blocks, block_size, heads, dim) * w
    if means == "padded":
        count = torch.full((batch, blocks, 1, 1), float(block_size), dtype=dtype, device=x.device)
        mean = xb.sum(2) / count
        deviation = (xb - mean.unsqueeze(2)).abs().sum(2) / count  # zero slots count with |0 - mean|
        weight = count.view(batch, blocks)
    elif means == "valid":
        count = w.sum(2).clamp_min(1)
        mean = xb.sum(2) / count
        deviation = ((xb - mean.unsqueeze(2)).abs() * w).sum(2) / count
        weight = w.sum(2).view(batch, blocks)
    else:
        raise ValueError(f"means must be 'padded' or 'valid', got {means!r}")
    return PooledBlocks(mean.transpose(1, 2), deviation.transpose(1, 2), weight)


def estimated_block_mass(
    q_mean: torch.Tensor,
    k_mean: torch.Tensor,
    block_weight: torch.Tensor,
    scale: float,
    text_keys: torch.Tensor | None = None,
    text_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """p~: each query block's estimated share of full-attention mass per key block, (B, H, n_q, C).

    The mean query scores every pooled key block and, with text, every text key on its own
    ("isolated pooling"). A pooled block stands for ``block_weight`` keys of the same logit, a text
    key for one, so ``p~_J = w_J p_J / Z`` and the text keys merge into one last column
    ``sum_t p_t / Z`` (C = n_k + 1); without text C = n_k. Rows sum to 1.

    q_mean, k_mean: (B, H, n, D). block_weight: (B, n_k). text_keys: (B, T, H, D); text_valid:
    bool (B, T) or None.
    """
    logits = torch.einsum("bhqd,bhkd->bhqk", q_mean, k_mean) * scale
    w = block_weight.to(logits.dtype)[:, None, None, :]
    if text_keys is None or text_keys.shape[1] == 0:
        p = torch.softmax(logits, dim=-1) * w
        return p / p.sum(-1, keepdim=True)
    text_logits = torch.einsum("bhqd,bthd->bhqt", q_mean, text_keys.to(q_mean.dtype)) * scale
    if text_valid is not None:
        text_logits = text_logits.masked_fill(~text_valid[:, None, None, :], float("-inf"))
    p = torch.softmax(torch.cat([logits, text_logits], dim=-1), dim=-1)
    n_k = k_mean.shape[2]
    mass = torch.cat([p[..., :n_k] * w, p[..., n_k:].sum(-1, keepdim=True)], dim=-1)
    return mass / mass.sum(-1, keepdim=True)


def top_p_with_floor(mass: torch.Tensor, top_p: float, k_min: int) -> torch.Tensor:
    """bool, like ``mass``: per row the largest columns until their cumulative sum passes ``top_p``.

    Sorted descending (stable: ties keep column order), with cumulative sums c_1 <= c_2 <= ...,
    a row keeps n = max(#{r : c_r <= top_p} + 1, k_min) columns (at most all of them).
    """
    ordered, columns = torch.sort(mass, dim=-1, descending=True, stable=True)
    below = (ordered.cumsum(-1) <= top_p).sum(-1, keepdim=True)
    n_keep = (below + 1).clamp(min=k_min, max=mass.shape[-1])
    rank = torch.arange(mass.shape[-1], device=mass.device)
    return torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, columns, rank < n_keep)


def top_k_floor(n_blocks: int, drop_rate: float) -> int:
    """k_min = int((1 - drop) x n) in floating point, as the reference (0.8 of 900 gives 179)."""
    return int((1 - drop_rate) * n_blocks)


def gapr_trusted(q: PooledBlocks, k: PooledBlocks) -> torch.Tensor:
    """bool (B, H, n_q, n_k): the pooled logit is larger than its pooling error bound.

    Trusted when |q_mean . k_mean| > |q_dev . k_mean| + |q_mean . k_dev| (strict). The test is
    invariant to the softmax scale and to the block size, which both sides would share.
    """
    gain = torch.einsum("bhqd,bhkd->bhqk", q.mean, k.mean).abs()
    err_q = torch.einsum("bhqd,bhkd->bhqk", q.deviation, k.mean).abs()
    err_k = torch.einsum("bhqd,bhkd->bhqk", q.mean, k.deviation).abs()
    return gain > err_q + err_k


def rectification(
    mass: torch.Tensor,
    kept: torch.Tensor,
    trusted: torch.Tensor | None,
    v_mean: torch.Tensor,
    *,
    ipar: bool,
    gapr: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R (B, H, n_q) and C (B, H, n_q, D) of ``O = R x O_sparse + C`` per query block.

    mass: p~ (B, H, n_q, C); kept: bool, same shape (the final block mask on p~'s columns, the
    merged text column included); trusted: GAPR's test on the n_k video columns (only read with
    ``gapr``); v_mean: pooled
    values (B, H, n_k, D). With both switches on (the reference):
    ``R = sum over kept and untrusted dropped columns of p~`` and
    ``C = sum over trusted dropped columns of p~ x mean V``. ``ipar=False`` sets R = 1,
    ``gapr=False`` sets C = 0 and leaves R the kept columns' mass.
    """
    n_k = v_mean.shape[2]
    video_mass = mass[..., :n_k]
    dropped = ~kept[..., :n_k]
    compensated = dropped & trusted if gapr else torch.zeros_like(dropped)
    if gapr:
        comp = torch.einsum("bhqk,bhkd->bhqd", video_mass * compensated, v_mean)
    else:
        comp = torch.zeros(*mass.shape[:3], v_mean.shape[-1], dtype=mass.dtype, device=mass.device)
    if not ipar:
        return torch.ones(mass.shape[:3], dtype=mass.dtype, device=mass.device), comp
    carried = kept.clone()
    if gapr:  # untrusted dropped blocks are not computed: their mass goes to the kept ones
        carried[..., :n_k] |= dropped & ~trusted
    return (mass * carried).sum(-1), comp


def per_row_rectify(
    out: torch.Tensor,
    row_max: torch.Tensor,
    row_sum: torch.Tensor,
    q: torch.Tensor,
    k: PooledBlocks,
    v_mean: torch.Tensor,
    compensated: torch.Tensor,
    block_size: int,
    scale: float,
    max_elements: int = 1 << 25,
) -> torch.Tensor:
    """The per-row correction (spec 4, not in the reference): each row adds its compensated blocks.

    ``O_i = (l_i O_i + sum_j w_ij v_j) / (l_i + sum_j w_ij)`` with ``w_ij = n_j exp(s_ij - m_i)``,
    ``s_ij = scale q_i . mean k_j`` the row's own logit to pooled block j and ``n_j`` the tokens the
    block stands for. Unlike ``R x O + C`` this uses each row's query and the kernel's exact
    normaliser ``l_i``, so rows of one block are corrected differently. Everything is shifted by
    a shared max ``max(m_i, max_j s_ij)`` (a dropped block's pooled logit can exceed the kept max).

    out: (B, N, H, D) sparse output; row_max, row_sum: (B, H, N) over kept keys (natural log);
    q: (B, N, H, D); k: pooled keys; v_mean: (B, H, n_k, D); compensated: bool (B, H, n_q, n_k).
    Rows are processed in chunks so that the (rows x n_k) logits stay under ``max_elements``.
    """
    batch, n, heads, dim = q.shape
    n_k = v_mean.shape[2]
    compute = torch.promote_types(out.dtype, torch.float32)
    weight = torch.log(k.weight.to(compute).clamp_min(1e-30))[:, None, None, :]  # log n_j
    result = torch.empty(batch, n, heads, dim, dtype=compute, device=out.device)
    step = max(block_size, (max_elements // max(1, batch * heads * n_k)) // block_size * block_size)
    for start in range(0, n, step):
        stop = min(start + step, n)
        qc = q[:, start:stop].to(compute)
        logits = torch.einsum("bqhd,bhkd->bhqk", qc, k.mean.to(compute)) * scale + weight
        rows_block = torch.arange(start, stop, device=out.device) // block_size
        allowed = compensated[:, :, rows_block]  # (B, H, rows, n_k)
        logits = logits.masked_fill(~allowed, float("-inf"))
        m = row_max[..., start:stop].to(compute)
        shift = torch.maximum(m, logits.amax(-1))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        w = torch.exp(logits - shift[..., None])  # 0 where not compensated
        kept = row_sum[..., start:stop].to(compute) * torch.exp(m - shift)
        kept = torch.where(torch.isfinite(m), kept, torch.zeros_like(kept))
        numer = kept[..., None] * out[:, start:stop].to(compute).transpose(1, 2) + torch.einsum(
            "bhqk,bhkd->bhqd", w, v_mean.to(compute)
        )
        denom = (kept + w.sum(-1)).clamp_min(torch.finfo(compute).tiny)
        result[:, start:stop] = (numer / denom[..., None]).transpose(1, 2)
    return result.to(out.dtype)
