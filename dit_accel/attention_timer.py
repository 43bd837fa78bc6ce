"""Wall time spent inside routed attention calls, for ``dit-accel render`` and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

import torch


class _TimedMethod:
    """Stands in for a session's method: the same object behind it, with its calls timed."""

    def __init__(self, method: Any, timer: AttentionTimer) -> None:
        self._method, self._timer = method, timer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            return self._method(*args, **kwargs)
        finally:
            sync()
            self._timer.seconds += time.perf_counter() - start


class AttentionTimer:
    """Wall time inside routed attention calls (synchronising CUDA around each one, so the number is
    the attention's own time; the syncs add a little to the wall time).

    With ``follow=True``, sessions enabled later, while the pipeline runs (FreeSwim's workflow
    enables its method for the refinement only), are timed too, from the first transformer call
    after enabling (a forward pre-hook on each transformer).
    """

    def __init__(self, pipe: Any, follow: bool = False) -> None:
        from .api import _components

        self.seconds = 0.0
        self._pipe = pipe
        self._sessions: list[Any] = []
        modules = [module for _, module in _components(pipe)] if follow else []
        self._hooks = [module.register_forward_pre_hook(self._attach) for module in modules]
        self._attach()

    def _attach(self, *hook_args: Any) -> None:
        from .api import _sessions

        for session in _sessions(self._pipe):
            if session not in self._sessions:
                session.method = _TimedMethod(session.method, self)
                self._sessions.append(session)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for session in self._sessions:
            if isinstance(session.method, _TimedMethod):
                session.method = session.method._method
