"""ModelAdapter: what dit-accel must know about one transformer family, and how it is installed.

An adapter answers three questions for its family: which attention modules are video/image
self-attention (or joint text+video attention), how to read the token grid from the transformer's
input, and how to route a module through the ``dit_accel`` backend. ``Installation`` then puts the
hooks in place and records every change so that ``uninstall`` restores the exact original objects.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from ..context import (
    CURRENT_BRANCH,
    CURRENT_CALL,
    LAYER_KEY_ATTR,
    CallContext,
    LayerContext,
    clear_layers,
    enter_layer,
    leave_layer,
    register_layer,
    unregister_layer,
)
from .backend import ACTIVE_SESSION, IntegrationError, register_backend


class UnsupportedModelError(TypeError):
    """The model has no dit-accel adapter."""


class ModelAdapter:
    """Per-family knowledge; subclasses fill the class attributes and ``routed_layers``/``token_grid``."""

    family: ClassVar[str] = ""
    transformer_classes: ClassVar[tuple[str, ...]] = ()
    text_position: ClassVar[str] = "none"
    #: Per method name, the values of config fields left at None (the family default), as
    #: measured (``benchmarks/results/quality_*.md``). The key "rettention" also fills
    #: ``RettentionCorrection.warmup_fraction`` when another method uses Re-ttention's correction.
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The same under ``preset="reference"``: the reference scripts' values for this family.
    reference_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def defaults(self, config: Any) -> dict[str, dict[str, Any]]:
        return self.reference_defaults if config.preset == "reference" else self.method_defaults

    def resolve(self, config: Any) -> Any:
        """``config`` with every family default filled in: what the method will run."""
        from ..methods.corrections import CORRECTIONS, RettentionCorrection

        table = self.defaults(config).get(config.method, {})
        changes = {
            name: value
            for name, value in table.items()
            if hasattr(config, name) and getattr(config, name) is None
        }
        if config.dense_steps is None and not config.BUDGETED_STEPS:
            changes.setdefault("dense_steps", 0)
        changes.setdefault("dense_layers", () if config.dense_layers is None else config.dense_layers)
        correction = config.correction
        if isinstance(correction, str) and correction in CORRECTIONS:
            correction = CORRECTIONS[correction]()
        warmup = self.defaults(config).get("rettention", {}).get("warmup_fraction")
        if isinstance(correction, RettentionCorrection) and correction.warmup_fraction is None:
            correction = dataclasses.replace(correction, warmup_fraction=warmup)
        changes["correction"] = correction
        return config.replace(**changes)

    def patch_hw(self, transformer: torch.nn.Module) -> tuple[int, int]:
        """Latent pixels per token along height and width."""
        patch = transformer.config.patch_size
        return (
            (int(patch[-2]), int(patch[-1])) if isinstance(patch, list | tuple) else (int(patch), int(patch))
        )

    def install_twin_branch(
        self, installation: Installation, backend: Any, method: Any
    ) -> list[Callable[[], None]]:
        """Families without separate text cross-attention have no twin branch to offer."""
        method.patch[installation.name] = self.patch_hw(installation.transformer)
        if method.window_alone_allowed():
            return []
        raise NotImplementedError(
            f"{type(method).__name__} is implemented for Wan (the reference): it needs a full-attention twin "
            f"branch with separate text cross-attention, which {self.family} does not have. Pass "
            "experimental=True with cross_attn_override=False to run the window alone."
        )

    @classmethod
    def matches(cls, transformer: torch.nn.Module) -> bool:
        return any(klass.__name__ in cls.transformer_classes for klass in type(transformer).__mro__)

    #: (block list attribute, attention attribute) pairs naming the routed modules, in model order.
    attention_paths: ClassVar[tuple[tuple[str, str], ...]] = ()

    def routed_layers(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """(module path, module) of every self-attention module to route, in model order."""
        return [
            (f"{blocks}.{i}.{attn}", getattr(block, attn))
            for blocks, attn in self.attention_paths
            for i, block in enumerate(getattr(transformer, blocks))
        ]

    def token_grid(self, transformer: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid for this input of the transformer."""
        raise NotImplementedError

    def route(self, module: torch.nn.Module, backend: Any) -> Callable[[], None]:
        """Send ``module``'s attention product to ``backend``; return the function that undoes it.

        Default, for processors that already call ``dispatch_attention_fn``: install a copy of the
        stock processor whose ``_attention_backend`` is ours (the copy keeps any parallel config).
        """
        original = module.processor
        if not hasattr(original, "_attention_backend"):
            raise IntegrationError(
                f"{type(original).__name__} does not dispatch through diffusers' attention backends"
            )
        routed = copy.copy(original)
        routed._attention_backend = backend
        module.processor = routed

        def undo() -> None:
            # Parallelism enabled after us was recorded on our copy; the original must carry it on.
            if getattr(routed, "_parallel_config", None) is not getattr(original, "_parallel_config", None):
                original._parallel_config = routed._parallel_config
            module.processor = original

        return undo


class ProcessorSwapAdapter(ModelAdapter):
    """For families whose stock processor calls SDPA directly: install a routed processor instead.

    Only the stock processor class is replaced (a fused or custom processor the user installed
    would be silently dropped otherwise); ``routed_processor`` computes the same arithmetic.
    """

    stock_processors: ClassVar[tuple[str, ...]] = ()
    routed_processor: ClassVar[type] = object

    def route(self, module: torch.nn.Module, backend: Any) -> Callable[[], None]:
        original = module.processor
        if type(original).__name__ not in self.stock_processors:
            raise IntegrationError(
                f"{self.family} self-attention uses {type(original).__name__}; dit-accel routes only "
                f"{self.stock_processors} (unfuse QKV projections or restore the default processor first)"
            )
        check = getattr(self.routed_processor, "check_module", None)
        if check is not None:
            check(module)
        module.processor = self.routed_processor(backend)
        return lambda: setattr(module, "processor", original)


@functools.cache
def _forward_parameters(transformer_cls: type) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(transformer_cls.forward).parameters if p != "self")


def _argument(transformer: torch.nn.Module, args: tuple, kwargs: dict, name: str) -> Any:
    """A forward argument by name, whether passed by keyword or position."""
    if name in kwargs:
        return kwargs[name]
    index = _forward_parameters(type(transformer)).index(name)
    return args[index] if index < len(args) else None


def _timestep_value(timestep: Any) -> float:
    """One number per call: per-token timesteps (Wan 2.2 TI2V) reduce to their largest value."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().float().max())
    return float(timestep)


class Installation:
    """The hooks dit-accel puts on one transformer, and their exact undo."""

    def __init__(self, transformer: torch.nn.Module, adapter: ModelAdapter, session: Any, name: str) -> None:
        self.transformer, self.adapter, self.session, self.name = transformer, adapter, session, name
        self._undo: list[Callable[[], None]] = []
        self._tokens: list[tuple] = []

    def install(self) -> None:
        backend = register_backend()
        layers = self.adapter.routed_layers(self.transformer)
        if not layers:
            raise IntegrationError(f"no self-attention modules found in {type(self.transformer).__name__}")
        try:
            for index, (path, module) in enumerate(layers):
                self._undo.append(self.adapter.route(module, backend))
                self.hook_layer(module, LayerContext(path, index))
            self._hook_transformer()
            self._wrap_cache_context()
            method = self.session.method
            if method.twin_branch:
                self._undo.extend(self.adapter.install_twin_branch(self, backend, method))
        except Exception:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def hook_layer(self, module: torch.nn.Module, layer: LayerContext) -> None:
        """Make ``layer`` the running layer while ``module`` runs (undone on uninstall).

        The hooks are traceable by ``torch.compile`` (no graph break in a compiled block); the
        layer reaches the attention backend as the module's key tensor (``context.enter_layer``).
        """
        if hasattr(module, LAYER_KEY_ATTR):
            raise IntegrationError(f"{layer.name} is already routed by dit-accel")
        key = register_layer(layer)
        setattr(module, LAYER_KEY_ATTR, key)
        pre = module.register_forward_pre_hook(enter_layer)
        post = module.register_forward_hook(leave_layer)

        def undo() -> None:
            pre.remove()
            post.remove()
            delattr(module, LAYER_KEY_ATTR)
            unregister_layer(key)

        self._undo.append(undo)

    def _hook_transformer(self) -> None:
        transformer, adapter, session = self.transformer, self.adapter, self.session

        # Reads the timestep on the host and sets context variables, which Dynamo cannot trace. Hooks
        # of the compiled module itself run outside its graph, so this costs no graph break.
        @torch.compiler.disable
        def enter(mod, args, kwargs):
            clear_layers()
            hidden_states = _argument(mod, args, kwargs, "hidden_states")
            timestep = _argument(mod, args, kwargs, "timestep")
            branch = CURRENT_BRANCH.get()
            branch_name, branch_info = branch if branch is not None else ("unknown", {})
            step = session.steps.observe(
                _timestep_value(timestep) if timestep is not None else None, branch_info.get("step_index")
            )
            call = CallContext(
                grid=adapter.token_grid(mod, hidden_states),
                text_position=adapter.text_position,
                step_index=step,
                num_inference_steps=branch_info.get("num_inference_steps") or session.steps_hint(),
                cfg_branch=branch_name,
                transformer_name=self.name,
            )
            self._tokens.append((CURRENT_CALL.set(call), ACTIVE_SESSION.set(session)))

        @torch.compiler.disable
        def leave(mod, args, kwargs, output):
            if self._tokens:
                call_token, session_token = self._tokens.pop()
                CURRENT_CALL.reset(call_token)
                ACTIVE_SESSION.reset(session_token)

        pre = transformer.register_forward_pre_hook(enter, with_kwargs=True)
        post = transformer.register_forward_hook(leave, with_kwargs=True, always_call=True)
        self._undo.append(pre.remove)
        self._undo.append(post.remove)

    def _wrap_cache_context(self) -> None:
        """Learn the CFG branch from diffusers' ``cache_context(name, ...)`` around each call."""
        transformer = self.transformer
        original = getattr(transformer, "cache_context", None)
        if original is None:
            return
        had_instance_attr = "cache_context" in vars(transformer)

        @contextmanager
        def cache_context(name: str, **kwargs: Any):
            token = CURRENT_BRANCH.set((name, kwargs))
            try:
                with original(name, **kwargs):
                    yield
            finally:
                CURRENT_BRANCH.reset(token)

        transformer.cache_context = cache_context

        def undo() -> None:
            if had_instance_attr:
                transformer.cache_context = original
            else:
                del transformer.cache_context

        self._undo.append(undo)
