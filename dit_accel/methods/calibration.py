"""Calibration for ``auto`` (``calibrate=``): per layer and head, how much softmax mass each
number of kept key blocks keeps, measured on the first denoising step of the first generation,
then the budget spent where it keeps the most.

Why: heads differ. On the first video proxy one head kept 89 % of its mass in a tenth of the key blocks
while others were near uniform (``benchmarks/results/proxy_video_v1_structure.md``); a uniform
per-head count spends the same blocks on both. A *curve* per head (mass kept by the best 1, 2, ...
``n`` blocks in the planner's ranking, mean over query blocks) is all the allocation needs, and it
does not depend on the budget, so the JSON keeps curves and any budget is allocated from them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .plan import Operands

#: Dense denoising steps whose attention is measured (the first step of the first generation).
CALIBRATION_STEPS = 1
_FORMAT = "dit-accel calibration 1"
_ROWS = 1024  # query rows per softmax chunk: bounds the probabilities held at once


def kept_mass_curves(x: Operands, ranking: torch.Tensor) -> torch.Tensor:
    """(H, n) float32: for every head, the mean share of a query's softmax mass that the best
    ``1..n`` video key blocks of ``ranking`` (B, H, n, n; higher first) keep, averaged over real
    query rows. Text keys count in the softmax (they are always attended) but not as blocks."""
    bq, bk = x.block_q, x.block_k
    batch, slots, heads, _ = x.q.shape
    n_k = ranking.shape[-1]
    video_keys = x.keys.shape[1] - x.num_text  # without text the last key block may be partial
    order = ranking.argsort(dim=-1, descending=True)  # (B, H, n_q, n_k)
    mass = torch.zeros(batch, heads, -(-slots // bq), n_k, dtype=torch.float32, device=x.q.device)
    bias = torch.zeros(x.key_valid.shape, dtype=torch.float32, device=x.q.device)
    bias = bias.masked_fill(~x.key_valid, -torch.inf)[:, None]
    for h in range(heads):
        keys = x.keys[:, :, h].float()
        for start in range(0, slots, _ROWS):
            q = x.q[:, start : start + _ROWS, h].float()
            p = torch.softmax(q @ keys.transpose(-1, -2) * x.scale + bias, dim=-1)
            p = torch.nn.functional.pad(p[..., :video_keys], (0, n_k * bk - video_keys))
            p = p.reshape(batch, q.shape[1], n_k, bk).sum(-1)
            p = p * x.video_ok[:, start : start + _ROWS, None]
            rows = torch.arange(start, start + q.shape[1], device=q.device) // bq
            mass[:, h].index_add_(1, rows, p)
    counts = torch.zeros(batch, mass.shape[2], device=x.q.device)
    counts.index_add_(1, torch.arange(slots, device=x.q.device) // bq, x.video_ok.float())
    kept = mass.gather(-1, order).cumsum(-1)  # (B, H, n_q, n_k): mass of the best 1..n blocks
    weights = counts[:, None, :, None]
    return (kept.sum((0, 2)) / weights.sum((0, 2)).clamp_min(1)).float()


def allocate(curves: dict[str, torch.Tensor], density: float, minimum: int) -> dict[str, torch.Tensor]:
    """Kept blocks per layer and head (int64 (H,) per layer) whose mean over layers and heads is
    ``density`` of the blocks, each at least ``minimum``: greedily, the next block goes where
    the curves say it keeps the most mass."""
    names = sorted(curves)
    table = torch.stack([curves[name] for name in names]).double()  # (L, H, n)
    n = table.shape[-1]
    minimum = max(1, min(minimum, n))
    counts = torch.full(table.shape[:2], minimum, dtype=torch.int64)
    budget = round(density * n * counts.numel()) - int(counts.sum())
    gain_of = torch.cat([table[..., :1], table.diff(dim=-1)], dim=-1)  # mass the k-th block adds
    for _ in range(max(0, budget)):
        room = counts < n
        if not room.any():
            break
        gains = gain_of.gather(-1, counts.clamp(max=n - 1)[..., None])[..., 0]
        pick = int(gains.masked_fill(~room, -torch.inf).argmax())
        counts.view(-1)[pick] += 1
    return {name: counts[i] for i, name in enumerate(names)}


class Calibration:
    """Curves per grid and layer: measured on dense steps, kept across generations, saved to and
    loaded from ``path`` (a JSON file; one entry per grid and block size) when one is given."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.curves: dict[str, dict[str, torch.Tensor]] = {}
        self._sums: dict[str, dict[str, list]] = {}
        self._allocations: dict[tuple[str, float, int], dict[str, torch.Tensor]] = {}
        self._loaded = False

    @staticmethod
    def key(grid: tuple[int, int, int], block_size: int) -> str:
        return f"{grid[0]}x{grid[1]}x{grid[2]}/block{block_size}"

    def _file(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"calibrate={str(self.path)!r}: cannot read the plan ({error})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"calibrate={str(self.path)!r} is not a dit-accel calibration file")
        return data

    def planned(self, key: str) -> bool:
        """Whether curves exist for ``key`` (measured here or in the file)."""
        if key not in self.curves and not self._loaded:
            self._loaded = True
            for grid_key, layers in self._file().get("grids", {}).items():
                self.curves[grid_key] = {
                    name: torch.tensor(c, dtype=torch.float32) for name, c in layers.items()
                }
        return key in self.curves

    def add(self, key: str, layer: str, curves: torch.Tensor) -> None:
        """One measured call's curves (several calls per layer average: CFG branches)."""
        entry = self._sums.setdefault(key, {}).setdefault(layer, [0, 0])
        entry[0] = entry[0] + curves.detach().cpu()
        entry[1] += 1

    def measuring(self, key: str) -> bool:
        return key in self._sums

    def finish(self, key: str) -> None:
        """The measured curves become the plan of ``key`` (and go to the file)."""
        sums = self._sums.pop(key, {})
        if not sums:
            return
        self.curves[key] = {layer: total / count for layer, (total, count) in sums.items()}
        if self.path is not None:
            data = self._file() or {"format": _FORMAT, "grids": {}}
            data["grids"][key] = {layer: c.tolist() for layer, c in self.curves[key].items()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(data))

    def counts(self, key: str, layer: str, density: float, minimum: int, heads: int) -> torch.Tensor | None:
        """Kept blocks per head of ``layer`` (int64 (H,)) for a mean ``density``; None for a layer
        the plan never saw (Wan 2.2's second expert, which does not run the first step): it keeps
        the uniform count, so the mean stays the budget."""
        cached = (key, round(density, 6), minimum)
        if cached not in self._allocations:
            self._allocations[cached] = allocate(self.curves[key], density, minimum)
        counts = self._allocations[cached].get(layer)
        if counts is None:
            return None
        if counts.numel() != heads:
            where = f"the plan in {str(self.path)!r}" if self.path else "the calibration"
            raise ValueError(
                f"{where} was measured on another model: it has no {heads}-head entry for layer "
                f"{layer!r} (grid {key}); delete the file or pass another path"
            )
        return counts

    def clear(self) -> None:
        self.curves.clear()
        self._sums.clear()
        self._allocations.clear()
        self._loaded = False
