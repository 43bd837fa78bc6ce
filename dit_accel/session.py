"""A session: one enabled method on one pipeline (or bare transformer), with its step count and records.

The transformers of a pipeline share one session, so Wan 2.2's two experts count denoising steps
together and report into one table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .config import SparseAttentionConfig
from .context import AttentionContext
from .methods import GridCache, SparseMethod, build_method
from .report import SparseAttentionReport

logger = logging.getLogger(__name__)


class StepTracker:
    """Derives the denoising step from the calls a transformer receives.

    When the pipeline passes ``step_index`` through ``cache_context`` it is used as is. Otherwise a
    smaller timestep than the previous call's starts the next step, an equal one (the second CFG
    call) stays on it, and a larger one (noise went up) starts a new generation.
    """

    def __init__(self, on_new_generation: Callable[[], None] | None = None) -> None:
        self.on_new_generation = on_new_generation
        self.step = -1
        self.last_timestep: float | None = None

    def observe(self, timestep: float | None, given_step: int | None) -> int:
        previous_t, previous_step = self.last_timestep, self.step
        restarted = previous_t is not None and timestep is not None and timestep > previous_t
        if given_step is not None:
            restarted = restarted or given_step < previous_step
            self.step = given_step
        elif previous_t is None or restarted:
            self.step = 0
        elif timestep is not None and timestep < previous_t:
            self.step += 1
        if timestep is not None:
            self.last_timestep = timestep
        if (previous_t is None or restarted) and self.on_new_generation is not None:
            self.on_new_generation()
        return self.step


class SparseSession:
    def __init__(self, config: SparseAttentionConfig) -> None:
        self.config = config
        #: Per-grid orders and layouts: built once, freed on disable.
        self.cache = GridCache()
        self.method: SparseMethod = build_method(config, self.cache)
        self.steps = StepTracker(on_new_generation=self.start_generation)
        self.records: list[dict] = []
        self.fallbacks: dict[str, str] = {}
        self.transformer_names: list[str] = []
        #: Total denoising steps when the pipeline does not say so through cache_context
        #: (set by the API from the pipeline's scheduler; None for bare transformers).
        self.steps_hint: Callable[[], int | None] = lambda: None

    def start_generation(self) -> None:
        """Drop every trace of the previous generation: method state and records."""
        self.method.reset()
        self.records.clear()

    def record(self, context: AttentionContext, density: torch.Tensor | float) -> None:
        self.records.append(
            {
                "transformer": context.call.transformer_name,
                "layer": context.layer.name,
                "layer_index": context.layer.index,
                "step": context.call.step_index,
                "cfg_branch": context.call.cfg_branch,
                "method": self.method.name,
                # Kept as a tensor until the report is read, so recording never syncs the device.
                "density": density,
            }
        )

    def note_fallback(self, layer: str, reason: str) -> None:
        if layer not in self.fallbacks:
            logger.warning("dit-accel: %s runs dense attention: %s", layer, reason)
        self.fallbacks[layer] = reason

    def report(self) -> SparseAttentionReport:
        return SparseAttentionReport(
            method=self.method.name,
            config=self.config,
            records=self.records,
            state_bytes=self.method.state.nbytes(),
            fallbacks=dict(self.fallbacks),
            dense_reasons=dict(self.method.dense_reasons),
        )

    def close(self) -> None:
        self.method.close()
