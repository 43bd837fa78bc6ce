"""VMoBA's gate and chunk selection (spec: ``shared/methods/vmoba.md`` §3.3, §3.4, §3.6), as pure tensor code.

Every query scores each key chunk by ``q · mean_k`` (:func:`chunk_gate`) and then keeps its own chunk plus
the chunks that carry a share ``τ`` of the min–max normalised gate mass (:func:`select_chunks`). The
functions here only decide *which* chunks are attended; permutation and attention live elsewhere.

Why it is written this way:

* Vectorised over batch, heads, queries and chunks: the gate has ~10⁸ entries at the reference point
  (3D layers at 20×30×52, H = 12, C = 325), far too many for Python loops.
* No host synchronisation (``.item()``, ``nonzero``, data-dependent shapes): selection runs inside every
  attention call, and a device→host sync per layer would stall the GPU queue. Every shape is derived from
  input shapes, so the functions also run on ``meta`` tensors (the tests use that to prove it).
* ``query_head`` selection is independent per query, so it can run in query slices (``query_slice``) with a
  bitwise-identical result; this bounds the sort's temporaries (an int64 index per gate entry, 1 GB at the
  reference point when done at once, §3.7).
* Ties are broken deterministically (stable sort: lower flat index first) so masks are reproducible across
  runs, devices and slicings.
"""

from __future__ import annotations

import torch

SCOPES = ("query_head", "head_global", "block", "overall")
MODES = ("threshold", "topk")

# Constants of the reference rule (§3.4); changing them changes which chunks are selected.
_DEN_EPS = 1e-6  # a scope whose gate range is at most this is not rescaled (den = 1)
_Z_EPS = 1e-6  # added to the normalised mass Z before every share is computed
_TOPK_SELF_BONUS = 1e9  # topk mode: added to self entries so they rank first


def chunk_gate(q: torch.Tensor, mean_k: torch.Tensor) -> torch.Tensor:
    """Gate ``g[b, h, s, c] = q[b, s, h] · mean_k[b, c, h]`` in float32, shape (B, H, S, C).

    ``q`` is (B, S, H, D) in any float dtype, ``mean_k`` (B, C, H, D) the float32 mean key of each chunk.
    There is deliberately no ``1/√D`` scale and no softmax: the reference gates on the raw dot product, and
    the selection's min–max normalisation makes it invariant to a positive scale anyway (§3.3).

    The product is computed in float32 whatever the input dtype, because the selection compares cumulative
    shares and bf16 rounding would flip choices against the reference. (On CUDA, whether float32 matmuls
    use TF32 is governed by ``torch.backends.cuda.matmul.allow_tf32``; this function does not change it.)
    """
    if q.dim() != 4 or mean_k.dim() != 4:
        raise ValueError(
            f"q must be (B, S, H, D) and mean_k (B, C, H, D); got {tuple(q.shape)}, {tuple(mean_k.shape)}"
        )
    if q.shape[0] != mean_k.shape[0] or q.shape[2:] != mean_k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and mean_k {tuple(mean_k.shape)} disagree on B, H or D")
    if not q.is_floating_point() or not mean_k.is_floating_point():
        raise TypeError(f"q and mean_k must be floating point; got {q.dtype}, {mean_k.dtype}")
    return torch.einsum("bshd,bchd->bhsc", q.float(), mean_k.float())


def _threshold_take(x: torch.Tensor, is_self: torch.Tensor, tau: float) -> torch.Tensor:
    """The §3.4 threshold rule over the last dim of ``x`` (one scope per leading index).

    ``x`` is float32 (..., N); ``is_self`` a bool mask broadcastable to it. Returns bool (..., N): the
    selected entries, self entries always included.

    Self entries get sort key −1 (every other normalised value is ≥ 0) so they come after all real
    others and can never be "the one extra chunk" (§3.6); they add 0 to the cumulative sums. The cutoff
    is the *first* sorted position whose cumulative share reaches ``need`` (found with ``argmax``, which
    returns the first maximum, rather than by counting misses, so it does not rely on a device cumsum
    being monotone), clamped to the last real other; with no real other nothing extra is taken.
    """
    n_entries = x.shape[-1]
    lo = x.amin(dim=-1, keepdim=True)
    den = x.amax(dim=-1, keepdim=True) - lo
    den = torch.where(den <= _DEN_EPS, torch.ones_like(den), den)
    norm = (x - lo).div_(den)
    z = norm.sum(dim=-1, keepdim=True).add_(_Z_EPS)
    self_share = torch.where(is_self, norm, 0.0).sum(dim=-1, keepdim=True).div_(z)
    need = (tau - self_share).clamp_min_(0.0)
    del self_share

    # ``norm`` becomes the sort key in place (its values are no longer needed), so the peak is about
    # key + sorted values + int64 order + cumulative sums: ~20 bytes per gate entry of the slice.
    key = norm.masked_fill_(is_self, -1.0)
    vals, order = key.sort(dim=-1, descending=True, stable=True)
    del key, norm
    reached = vals.clamp_min_(0.0).cumsum(dim=-1).div_(z) >= need
    del vals
    first = torch.where(
        reached.any(dim=-1, keepdim=True),
        reached.to(torch.uint8).argmax(dim=-1, keepdim=True),
        n_entries,
    )
    del reached
    n_others = n_entries - is_self.sum(dim=-1, keepdim=True)
    last = torch.minimum(first, n_others - 1)  # −1 when the scope has no real other: take nothing extra
    rank = torch.arange(n_entries, device=x.device)
    take_sorted = rank <= last
    take = torch.zeros_like(take_sorted).scatter_(-1, order, take_sorted)
    return take | is_self


def _topk_take(x: torch.Tensor, is_self: torch.Tensor, n_take: int) -> torch.Tensor:
    """``topk`` mode over the last dim: the ``n_take`` largest of ``x + 1e9·self``, self always included.

    A stable descending sort (not ``torch.topk``) so equal gates resolve to the lower flat index on every
    device. In float32, ``g + 1e9`` blurs the order *among* self entries, which is harmless: they rank
    above every other entry for any realistic gate (|g| ≪ 1e9) and are added to the result anyway.
    """
    key = torch.where(is_self, x + _TOPK_SELF_BONUS, x)
    order = key.sort(dim=-1, descending=True, stable=True).indices
    del key
    rank = torch.arange(x.shape[-1], device=x.device)
    take_sorted = (rank < n_take).expand_as(order)
    take = torch.zeros(order.shape, dtype=torch.bool, device=x.device).scatter_(-1, order, take_sorted)
    return take | is_self


def select_chunks(
    gate: torch.Tensor,
    own_chunk: torch.Tensor,
    *,
    mode: str = "threshold",
    threshold: float = 0.25,
    topk: int = 1,
    scope: str = "query_head",
    query_slice: int | None = None,
) -> torch.Tensor:
    """Which key chunks each query attends: bool (B, H, S, C), True = query (b, h, s) attends chunk c.

    ``gate`` is the float32 (B, H, S, C) output of :func:`chunk_gate`; ``own_chunk`` (S,) the chunk id of
    each query, or −1 for a query in no chunk (no self entry; other values outside [0, C) act like −1,
    since validating them would need a host sync). The own chunk is always selected.

    Scopes are slices of the per-batch-element gate viewed as [C, H, S] (§3.4); statistics (min, max,
    mass, self share, ranking) are taken over one scope, never across batch elements:

    * ``query_head`` — per (h, s), over the C chunks (the reference default);
    * ``head_global`` — per head, over all (c, s);
    * ``block`` — per key chunk c, over all (h, s);
    * ``overall`` — over all (c, h, s).

    ``threshold`` mode keeps, per scope, the best non-self entries until their normalised mass plus the
    self entries' share reaches ``threshold``; at least one non-self entry is always kept when the scope
    has one (the cutoff index is never negative). ``topk`` mode keeps the top ``topk`` entries of
    ``gate + 1e9·self`` per (h, s) for ``query_head`` (self included, so ``topk − 1`` others), and the top
    ``topk · (entries in the scope) / C`` for the other scopes: ``topk·S`` (``head_global``),
    ``topk·H·S`` (``overall``), ``max(1, ⌊topk·H·S/C⌋)`` (``block``).

    Ties between equal values resolve to the lower flat index of the scope in [C, H, S] order (for
    ``query_head``: the lower chunk id), by stable sorting. With C == 1 every query attends the single
    chunk (the reference falls back to dense attention there). In scopes other than ``query_head`` a
    query whose ``own_chunk`` is −1 can end up with no chunk at all; callers must handle such rows.

    ``query_slice`` (``query_head`` only) processes queries in slices of that many, bitwise identical to
    one pass, to bound memory. The other scopes ignore it: their statistics span all queries, so the
    whole scope must be in memory at once.
    """
    if gate.dim() != 4 or gate.dtype != torch.float32:
        raise ValueError(f"gate must be float32 (B, H, S, C); got {gate.dtype} {tuple(gate.shape)}")
    batch, heads, seq, chunks = gate.shape
    if own_chunk.shape != (seq,) or own_chunk.is_floating_point() or own_chunk.dtype == torch.bool:
        raise ValueError(
            f"own_chunk must be an integer tensor of shape ({seq},); got {own_chunk.dtype} "
            f"{tuple(own_chunk.shape)}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}")
    if mode == "topk" and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive int; got {topk!r}")
    if query_slice is not None and (
        isinstance(query_slice, bool) or not isinstance(query_slice, int) or query_slice < 1
    ):
        raise ValueError(f"query_slice must be None or a positive int; got {query_slice!r}")
    threshold = float(threshold)

    if chunks == 1:
        return torch.ones(gate.shape, dtype=torch.bool, device=gate.device)

    own = own_chunk.to(device=gate.device, dtype=torch.long)
    is_self = own[:, None] == torch.arange(chunks, device=gate.device)  # (S, C)

    def take(x: torch.Tensor, self_mask: torch.Tensor, n_take: int) -> torch.Tensor:
        if mode == "threshold":
            return _threshold_take(x, self_mask, threshold)
        return _topk_take(x, self_mask, n_take)

    if scope == "query_head":
        step = seq if query_slice is None else query_slice
        out = torch.empty(gate.shape, dtype=torch.bool, device=gate.device)
        for start in range(0, seq, step):
            stop = min(start + step, seq)
            out[:, :, start:stop] = take(gate[:, :, start:stop], is_self[start:stop], topk)
        return out

    # Flatten each scope into the last dim, in [C, H, S] order so "lower flat index" means that order.
    if scope == "head_global":
        x = gate.transpose(2, 3).reshape(batch, heads, chunks * seq)
        picked = take(x, is_self.T.reshape(chunks * seq), topk * seq)
        return picked.reshape(batch, heads, chunks, seq).transpose(2, 3).contiguous()
    self_chs = is_self.T[:, None, :].expand(chunks, heads, seq)
    if scope == "block":
        x = gate.permute(0, 3, 1, 2).reshape(batch, chunks, heads * seq)
        n_take = max(1, topk * heads * seq // chunks)
        picked = take(x, self_chs.reshape(chunks, heads * seq), n_take)
    else:  # overall
        x = gate.permute(0, 3, 1, 2).reshape(batch, chunks * heads * seq)
        picked = take(x, self_chs.reshape(chunks * heads * seq), topk * heads * seq)
    return picked.reshape(batch, chunks, heads, seq).permute(0, 2, 3, 1).contiguous()
