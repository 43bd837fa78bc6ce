"""VMoBA gate and chunk selection against the spec's hand examples and a plain float64 oracle.

The oracle below restates ``shared/methods/vmoba.md`` §3.4 with Python lists, loops and ``sorted`` — one
scope at a time, no tensors — so it shares no code or vectorisation tricks with the implementation.
Random tests draw fresh seeds each run (``VMOBA_SEED=<n>`` replays one) and print them on failure.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from dit_accel.methods.vmoba_select import chunk_gate, select_chunks

SCOPES = ["query_head", "head_global", "block", "overall"]


# ----------------------------------------------------------------------------------------------------------
# Oracle
# ----------------------------------------------------------------------------------------------------------


def oracle_threshold(values: list[float], selfs: list[bool], tau: float) -> tuple[set[int], float]:
    """Selected non-self positions of one scope, and how far the decision was from flipping.

    The margin is the smallest |cumulative share − need| over the positions that decided the cutoff,
    and the smallest gap between neighbouring sorted values; float32 can disagree only when it is tiny.
    """
    lo, hi = min(values), max(values)
    den = hi - lo
    if den <= 1e-6:
        den = 1.0
    n = [(v - lo) / den for v in values]
    z = sum(n)
    self_share = sum(n[i] for i in range(len(n)) if selfs[i]) / (z + 1e-6)
    need = max(tau - self_share, 0.0)
    # Descending value, then lower flat index first; self entries are not candidates at all.
    others = sorted([i for i in range(len(n)) if not selfs[i]], key=lambda i: (-n[i], i))
    margin = math.inf
    for a, b in zip(others[:-1], others[1:], strict=True):
        margin = min(margin, n[a] - n[b])
    cut = None
    cum = 0.0
    for r, i in enumerate(others):
        cum += n[i]
        share = cum / (z + 1e-6)
        if need > 0:
            margin = min(margin, abs(share - need))
        if share >= need:
            cut = r
            break
    if cut is None:
        cut = len(others) - 1
    return set(others[: cut + 1]), margin


def oracle_topk(values: list[float], selfs: list[bool], n_take: int) -> set[int]:
    keyed = [v + 1e9 if s else v for v, s in zip(values, selfs, strict=True)]
    ranked = sorted(range(len(values)), key=lambda i: (-keyed[i], i))
    return set(ranked[:n_take])


def scope_members(scope: str, h_count: int, s_count: int, c_count: int) -> list[list[tuple[int, int, int]]]:
    """Each scope's (c, h, s) entries, listed in [C, H, S] order (the order that breaks ties)."""
    C, H, S = range(c_count), range(h_count), range(s_count)
    if scope == "query_head":
        return [[(c, h, s) for c in C] for h in H for s in S]
    if scope == "head_global":
        return [[(c, h, s) for c in C for s in S] for h in H]
    if scope == "block":
        return [[(c, h, s) for h in H for s in S] for c in C]
    return [[(c, h, s) for c in C for h in H for s in S]]


def oracle_select(
    gate: torch.Tensor, own: list[int], mode: str, tau: float, k: int, scope: str
) -> tuple[torch.Tensor, float]:
    b_count, h_count, s_count, c_count = gate.shape
    g = gate.double().tolist()
    mask = [[[[False] * c_count for _ in range(s_count)] for _ in range(h_count)] for _ in range(b_count)]
    margin = math.inf
    for b in range(b_count):
        for members in scope_members(scope, h_count, s_count, c_count):
            values = [g[b][h][s][c] for c, h, s in members]
            selfs = [own[s] == c for c, h, s in members]
            if c_count == 1:
                picked = set(range(len(members)))
            elif mode == "threshold":
                picked, m = oracle_threshold(values, selfs, tau)
                margin = min(margin, m)
            else:
                picked = oracle_topk(values, selfs, max(1, k * len(members) // c_count))
            for i, (c, h, s) in enumerate(members):
                if i in picked or selfs[i]:
                    mask[b][h][s][c] = True
    return torch.tensor(mask, dtype=torch.bool), margin


# ----------------------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------------------


def fresh_seed() -> int:
    return int(os.environ.get("VMOBA_SEED") or int.from_bytes(os.urandom(6), "little"))


def distinct_gate(rng: random.Random, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """A float32 gate whose entries are pairwise far apart within each batch element (no float32 ties).

    Entry values are a monotone map of (a random permutation of ranks + jitter in [0.1, 0.9]), so
    neighbouring values differ by ≥ 0.2 rank steps; the map varies between linear and skewed profiles.
    """
    b_count, h_count, s_count, c_count = shape
    count = h_count * s_count * c_count
    profile = rng.choice(["linear", "exp", "square"])
    a = rng.uniform(0.5, 4.0)
    scale, shift = rng.uniform(0.1, 10.0), rng.uniform(-5.0, 5.0)
    out = []
    for _ in range(b_count):
        ranks = list(range(count))
        rng.shuffle(ranks)
        element = []
        for rank in ranks:
            t = (rank + rng.uniform(0.1, 0.9)) / count
            v = {"linear": t, "exp": math.exp(a * t), "square": t * t + 0.1 * t}[profile]
            element.append(v * scale + shift)
        out.append(element)
    return torch.tensor(out, dtype=torch.float32).reshape(shape)


def random_own(rng: random.Random, s_count: int, c_count: int, allow_none: bool) -> list[int]:
    if rng.random() < 0.5:  # contiguous chunks (the permuted layout), last one possibly short
        size = max(1, -(-s_count // c_count))
        own = [min(s // size, c_count - 1) for s in range(s_count)]
    else:
        own = [rng.randrange(c_count) for _ in range(s_count)]
    if allow_none:
        p = rng.choice([0.0, 0.15, 0.4])
        own = [-1 if rng.random() < p else o for o in own]
    return own


def random_case(rng: random.Random, scope: str, mode: str) -> dict:
    shape = (2, rng.randint(2, 3), rng.randint(7, 40), rng.randint(3, 9))
    return {
        "gate": distinct_gate(rng, shape),
        "own": random_own(rng, shape[2], shape[3], allow_none=True),
        "tau": rng.choice([0.25, 0.0, rng.uniform(0.02, 0.98), rng.uniform(0.9, 1.2)]),
        "k": rng.randint(1, shape[3] + 1),
        "scope": scope,
        "mode": mode,
    }


def run(case: dict, **kwargs) -> torch.Tensor:
    return select_chunks(
        case["gate"],
        torch.tensor(case["own"]),
        mode=case["mode"],
        threshold=case["tau"],
        topk=case["k"],
        scope=case["scope"],
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tau", "expected"), [(0.25, [0, 1]), (0.8, [0, 1, 3]), (0.1, [0, 1])])
def test_spec_hand_example(tau, expected):
    # §5: C = 4, own chunk 0, g = [2, 5, 1, 3]: n = [0.25, 1, 0, 0.5], Z = 1.75, self share 0.1429.
    gate = torch.tensor([2.0, 5.0, 1.0, 3.0]).view(1, 1, 1, 4)
    want = torch.zeros(4, dtype=torch.bool)
    want[expected] = True
    got = select_chunks(gate, torch.tensor([0]), threshold=tau)
    assert got.view(-1).tolist() == want.tolist()
    oracle, _ = oracle_select(gate, [0], "threshold", tau, 1, "query_head")
    assert oracle.view(-1).tolist() == want.tolist()
    # With one head and one query, head_global and overall have the same single scope.
    for scope in ("head_global", "overall"):
        assert select_chunks(gate, torch.tensor([0]), threshold=tau, scope=scope).view(-1).tolist() == (
            want.tolist()
        )


@pytest.mark.parametrize("mode", ["threshold", "topk"])
@pytest.mark.parametrize("scope", SCOPES)
def test_matches_float64_oracle(scope, mode):
    for _ in range(8):
        for _attempt in range(50):
            seed = fresh_seed()
            case = random_case(random.Random(seed), scope, mode)
            want, margin = oracle_select(case["gate"], case["own"], mode, case["tau"], case["k"], scope)
            if margin > 1e-5:
                break
        else:
            pytest.fail("no draw without near-ties in 50 attempts")
        got = run(case)
        where = f"seed={seed} shape={tuple(case['gate'].shape)} tau={case['tau']} k={case['k']}"
        assert got.dtype == torch.bool and got.shape == case["gate"].shape, where
        mismatch = (got != want).nonzero().tolist()
        assert not mismatch, f"{where}: {len(mismatch)} mismatches (b, h, s, c), first {mismatch[:5]}"


@pytest.mark.parametrize("scope", ["query_head", "head_global"])
def test_matches_oracle_on_real_gates(scope):
    """Gates from chunk_gate on Gaussian q/k (not built to be tie-free); the rare fragile draw is redrawn."""
    for _attempt in range(50):
        seed = fresh_seed()
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(2, 24, 3, 16, generator=gen, dtype=torch.bfloat16)
        mean_k = torch.randn(2, 6, 3, 16, generator=gen)
        gate = chunk_gate(q, mean_k)
        own = [s // 4 for s in range(24)]
        want, margin = oracle_select(gate, own, "threshold", 0.25, 1, scope)
        if margin > 1e-5:
            break
    else:
        pytest.fail("no draw without near-ties in 50 attempts")
    got = select_chunks(gate, torch.tensor(own), scope=scope)
    assert torch.equal(got, want), f"seed={seed}"


@pytest.mark.parametrize("mode", ["threshold", "topk"])
def test_query_slices_are_bitwise_identical(mode):
    seed = fresh_seed()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(2, 3, 37, 7, generator=gen)
    own = torch.tensor(random_own(rng, 37, 7, allow_none=True))
    whole = select_chunks(gate, own, mode=mode, topk=3)
    for step in (1, 2, 5, 16, 36, 37, 100):
        sliced = select_chunks(gate, own, mode=mode, topk=3, query_slice=step)
        assert torch.equal(sliced, whole), f"seed={seed} query_slice={step}"


@pytest.mark.parametrize("scope", ["head_global", "block", "overall"])
def test_other_scopes_ignore_query_slice(scope):
    seed = fresh_seed()
    gate = torch.randn(1, 2, 19, 5, generator=torch.Generator().manual_seed(seed))
    own = torch.arange(19) // 4
    whole = select_chunks(gate, own, scope=scope)
    assert torch.equal(select_chunks(gate, own, scope=scope, query_slice=3), whole), f"seed={seed}"


@pytest.mark.parametrize("mode", ["threshold", "topk"])
@pytest.mark.parametrize("scope", SCOPES)
def test_batch_items_are_independent(scope, mode):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(2, 3, 21, 6, generator=gen)
    own = torch.arange(21) // 4
    first = select_chunks(gate, own, mode=mode, topk=2, scope=scope)
    changed = gate.clone()
    changed[1] = torch.randn(3, 21, 6, generator=gen) * 100 + 7
    second = select_chunks(changed, own, mode=mode, topk=2, scope=scope)
    assert torch.equal(second[0], first[0]), f"seed={seed}"
    # ... and item 1 is selected as if it were alone.
    alone = select_chunks(changed[1:], own, mode=mode, topk=2, scope=scope)
    assert torch.equal(second[1], alone[0]), f"seed={seed}"


@pytest.mark.parametrize("mode", ["threshold", "topk"])
@pytest.mark.parametrize("scope", SCOPES)
def test_single_chunk_selects_everything(scope, mode):
    gate = torch.randn(2, 3, 5, 1)
    own = torch.tensor([0, 0, -1, 0, -1])
    got = select_chunks(gate, own, mode=mode, scope=scope, query_slice=2)
    assert got.all()


def test_all_equal_gates_query_head():
    # den ≤ 1e-6 → den = 1, n = 0 everywhere, Z = 0, self share 0, need = τ. For τ > 0 the cumulative
    # sum (0) never reaches need, so r = the last non-self index: every chunk is selected. For τ = 0,
    # need = 0 is reached at r = 0: the own chunk plus the lowest-numbered other chunk.
    gate = torch.full((1, 1, 3, 4), 0.7)
    own = torch.tensor([0, 2, -1])
    assert select_chunks(gate, own, threshold=0.25).view(3, 4).tolist() == [[True] * 4] * 3
    assert select_chunks(gate, own, threshold=0.0).view(3, 4).tolist() == [
        [True, True, False, False],  # own 0 + chunk 1
        [True, False, True, False],  # own 2 + chunk 0
        [True, False, False, False],  # no own chunk: chunk 0 only
    ]


@pytest.mark.parametrize("scope", ["head_global", "block", "overall"])
def test_all_equal_gates_other_scopes(scope):
    gate = torch.full((2, 2, 6, 3), -1.5)
    own = torch.tensor([0, 0, 1, 1, 2, 2])
    assert select_chunks(gate, own, scope=scope, threshold=0.25).all()


def test_tiny_range_is_not_rescaled():
    # Range 5e-7 ≤ 1e-6: den = 1, n = [0, 5e-7, 2e-7, 0], Z + 1e-6 = 1.7e-6, need = 0.35.
    # Chunk 1 alone is a 0.294 share, chunks 1 + 2 reach 0.41 → {0, 1, 2}. Rescaling by the range would
    # give n = [0, 1, 0.4, 0] and stop after chunk 1.
    gate = torch.tensor([0.0, 5e-7, 2e-7, 0.0]).view(1, 1, 1, 4)
    got = select_chunks(gate, torch.tensor([0]), threshold=0.35)
    assert got.view(-1).tolist() == [True, True, True, False]
    assert oracle_select(gate, [0], "threshold", 0.35, 1, "query_head")[0].view(-1).tolist() == (
        got.view(-1).tolist()
    )


@pytest.mark.parametrize("mode", ["threshold", "topk"])
@pytest.mark.parametrize("scope", SCOPES)
def test_own_chunk_always_selected(scope, mode):
    seed = fresh_seed()
    rng = random.Random(seed)
    gate = distinct_gate(rng, (2, 3, 30, 8))
    own = random_own(rng, 30, 8, allow_none=True)
    # Low τ / k = 1: the settings that select the least.
    got = select_chunks(gate, torch.tensor(own), mode=mode, scope=scope, threshold=0.0, topk=1)
    for s, c in enumerate(own):
        if c >= 0:
            assert got[:, :, s, c].all(), f"seed={seed} s={s}"


def test_own_chunk_selected_even_when_lowest():
    # The own chunk has the smallest gate and the others carry the whole mass.
    gate = torch.tensor([-9.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4)
    assert select_chunks(gate, torch.tensor([0]), threshold=0.25)[0, 0, 0, 0]


@pytest.mark.parametrize("scope", SCOPES)
def test_at_least_one_other_chunk_in_threshold_mode(scope):
    seed = fresh_seed()
    rng = random.Random(seed)
    gate = distinct_gate(rng, (2, 3, 25, 6))
    own = random_own(rng, 25, 6, allow_none=False)
    own_t = torch.tensor(own)
    is_self = (own_t[:, None] == torch.arange(6)).expand(2, 3, 25, 6)
    for tau in (0.0, 0.01, 0.25):
        got = select_chunks(gate, own_t, threshold=tau, scope=scope)
        others = got & ~is_self
        if scope == "query_head":
            per_scope = others.sum(dim=-1)  # (B, H, S)
        elif scope == "head_global":
            per_scope = others.sum(dim=(2, 3))  # (B, H)
        elif scope == "block":
            per_scope = others.sum(dim=(1, 2))  # (B, C)
        else:
            per_scope = others.sum(dim=(1, 2, 3))  # (B,)
        assert (per_scope >= 1).all(), f"seed={seed} tau={tau}"


def test_self_tie_picks_a_real_other_chunk():
    # §3.6: C = 2 with the own chunk the maximum: the other normalises to 0 and ties with the zeroed self
    # entry; the extra chunk must still be the real other one.
    gate = torch.tensor([[5.0, 1.0], [1.0, 5.0]]).view(1, 1, 2, 2)
    assert select_chunks(gate, torch.tensor([0, 1])).all()


def test_ties_take_the_lower_chunk_id():
    # Chunks 2 and 3 tie for best other; only one is needed.
    gate = torch.tensor([1.0, 0.0, 4.0, 4.0]).view(1, 1, 1, 4)
    assert select_chunks(gate, torch.tensor([0]), threshold=0.1).view(-1).tolist() == [
        True,
        False,
        True,
        False,
    ]
    # Same in topk mode (k = 2: self + one other) with the tie on chunks 1 and 2.
    gate = torch.tensor([1.0, 4.0, 4.0, 0.0]).view(1, 1, 1, 4)
    got = select_chunks(gate, torch.tensor([0]), mode="topk", topk=2)
    assert got.view(-1).tolist() == [True, True, False, False]


def test_ties_take_the_lower_flat_index_in_wider_scopes():
    # head_global, H = 1, S = 2, C = 3, own = [0, 1]; entries (c, s) in [C, H, S] order, flat c·S + s.
    # Best others tie: (c=2, s=0) at flat 4 and (c=0, s=1) at flat 1 → (c=0, s=1) is taken.
    gate = torch.zeros(1, 1, 2, 3)
    gate[0, 0, 0] = torch.tensor([0.0, 1.0, 9.0])  # query 0: chunks 0 (own), 1, 2
    gate[0, 0, 1] = torch.tensor([9.0, 0.0, 2.0])  # query 1: chunks 0, 1 (own), 2
    got = select_chunks(gate, torch.tensor([0, 1]), threshold=0.01, scope="head_global")
    assert got[0, 0].tolist() == [[True, False, False], [True, True, False]]


def test_topk_selects_exactly_k_per_query():
    seed = fresh_seed()
    rng = random.Random(seed)
    gate = distinct_gate(rng, (2, 3, 17, 7))
    own = torch.tensor(random_own(rng, 17, 7, allow_none=False))
    for k in range(1, 8):
        counts = select_chunks(gate, own, mode="topk", topk=k, query_slice=5).sum(dim=-1)
        assert (counts == k).all(), f"seed={seed} k={k}"
    no_own = torch.full((17,), -1)
    assert (select_chunks(gate, no_own, mode="topk", topk=3).sum(dim=-1) == 3).all(), f"seed={seed}"
    assert select_chunks(gate, own, mode="topk", topk=9).all()


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("mode", ["threshold", "topk"])
def test_no_host_sync(scope, mode):
    """Runs on meta tensors, which refuse .item(), nonzero and any other data-dependent shape."""
    gate = torch.empty(2, 3, 50, 7, device="meta")
    own = torch.empty(50, dtype=torch.long, device="meta")
    got = select_chunks(gate, own, mode=mode, scope=scope, topk=2, query_slice=16)
    assert got.device.type == "meta" and got.shape == gate.shape and got.dtype == torch.bool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunk_gate_matches_float64_einsum(dtype):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 13, 3, 32, generator=gen).to(dtype)
    mean_k = torch.randn(2, 5, 3, 32, generator=gen)
    got = chunk_gate(q, mean_k)
    want = torch.einsum("bshd,bchd->bhsc", q.double(), mean_k.double())
    assert got.dtype == torch.float32 and got.shape == (2, 3, 13, 5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=f"seed={seed}")


def test_chunk_gate_is_unscaled():
    q = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2).to(torch.bfloat16)
    mean_k = torch.tensor([[3.0, 4.0], [-1.0, 0.5]]).view(1, 2, 1, 2)
    assert chunk_gate(q, mean_k).view(-1).tolist() == [11.0, 0.0]


def test_rejects_bad_arguments():
    gate = torch.zeros(1, 1, 3, 2)
    own = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="mode"):
        select_chunks(gate, own, mode="top")
    with pytest.raises(ValueError, match="scope"):
        select_chunks(gate, own, scope="global")
    with pytest.raises(ValueError, match="float32"):
        select_chunks(gate.half(), own)
    with pytest.raises(ValueError, match="own_chunk"):
        select_chunks(gate, own[:2])
    with pytest.raises(ValueError, match="query_slice"):
        select_chunks(gate, own, query_slice=0)
    with pytest.raises(ValueError, match="topk"):
        select_chunks(gate, own, mode="topk", topk=0)
