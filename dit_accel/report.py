"""What sparse attention did in the last generation: per-call density records and a readable table."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch


def _as_floats(values: list[Any]) -> list[float]:
    """Densities as floats, with one device-to-host copy for all tensor values rather than one each."""
    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    out = [float(v) if not isinstance(v, torch.Tensor) else 0.0 for v in values]
    if tensors:
        copied = torch.stack(
            [values[i].detach().to(torch.float64).reshape(()).cpu() for i in tensors]
        ).tolist()
        for i, value in zip(tensors, copied, strict=True):
            out[i] = value
    return out


@dataclass
class SparseAttentionReport:
    """Returned by ``sparse_attention_report()``.

    Attributes:
        method: the enabled method's name.
        config: the config in use.
        records: one dict per routed attention call of the last generation, with ``transformer``,
            ``layer``, ``layer_index``, ``step``, ``cfg_branch``, ``method`` and ``density`` (the
            fraction of query x key blocks computed; 1.0 for dense calls).
        state_bytes: memory held by the method across steps.
        fallbacks: layers that ran dense because their call could not be routed, with the reason.
        dense_reasons: layers the method's policy kept dense (``auto`` below ``min_tokens``),
            with the reason.
    """

    method: str
    config: Any
    records: list[dict] = field(default_factory=list)
    state_bytes: int = 0
    fallbacks: dict[str, str] = field(default_factory=dict)
    dense_reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        densities = _as_floats([r["density"] for r in self.records])
        self.records = [{**r, "density": d} for r, d in zip(self.records, densities, strict=True)]

    @property
    def mean_density(self) -> float:
        """Mean density over all recorded calls (1.0 when nothing was recorded)."""
        if not self.records:
            return 1.0
        return sum(r["density"] for r in self.records) / len(self.records)

    def density_by_layer(self) -> dict[str, float]:
        sums: dict[str, list[float]] = defaultdict(list)
        for r in self.records:
            sums[f"{r['transformer']}.{r['layer']}"].append(r["density"])
        return {name: sum(v) / len(v) for name, v in sums.items()}

    def __str__(self) -> str:
        steps = sorted({r["step"] for r in self.records})
        lines = [
            f"dit-accel sparse attention report: method={self.method}, calls={len(self.records)}, "
            f"steps={len(steps)}, mean density={self.mean_density:.3f}, "
            f"state={self.state_bytes / 2**20:.1f} MiB",
            "",
            "| layer | calls | mean density |",
            "|---|---:|---:|",
        ]
        counts: dict[str, int] = defaultdict(int)
        for r in self.records:
            counts[f"{r['transformer']}.{r['layer']}"] += 1
        for name, density in self.density_by_layer().items():
            lines.append(f"| {name} | {counts[name]} | {density:.3f} |")
        for layer, reason in self.fallbacks.items():
            lines.append(f"dense fallback in {layer}: {reason}")
        for layer, reason in self.dense_reasons.items():
            lines.append(f"dense by policy in {layer}: {reason}")
        return "\n".join(lines)
