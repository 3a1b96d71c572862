"""The base class of model adapters (one subclass per model family).

An adapter locates a family's modules on one model instance and registers forward hooks on
them; :func:`omnizip.patch` picks the adapter from :data:`omnizip.models.ADAPTERS` by class
name and wraps it in an ``OmniZipHandle``, which removes every hook registered here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

__all__ = ["ModelAdapter"]


class ModelAdapter:
    """Base class of model adapters (one per model family).

    Subclasses set ``name`` and ``model_classes`` and implement :meth:`attach`, which registers
    forward hooks on the model *instance* through :meth:`_pre_hook` / :meth:`_post_hook` (the
    handle removes them all). Hooks must never modify the caller's tensors in place. The
    adapter's own hooks are bound methods of the adapter, so :func:`omnizip.patch` can find and
    replace an existing patch. ``self.handle.config`` is the compression method and
    ``self.handle._record(...)`` publishes a prefill's per-row results (``handle`` is the
    ``omnizip.patch.OmniZipHandle``; not imported here, so ``patch`` -> ``models`` is one way).
    """

    name: ClassVar[str] = ""
    model_classes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module, handle: Any) -> None:
        self.model = model
        self.handle = handle
        self._registered: list[Any] = []

    def _pre_hook(self, module: torch.nn.Module, fn: Any) -> None:
        """Register ``fn(module, args, kwargs)`` as a forward pre-hook on ``module``."""
        self._registered.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def _post_hook(self, module: torch.nn.Module, fn: Any, always_call: bool = False) -> None:
        """Register ``fn(module, args, kwargs, output)`` as a forward hook on ``module``
        (``always_call``: also when the forward raised)."""
        self._registered.append(
            module.register_forward_hook(fn, with_kwargs=True, always_call=always_call)
        )

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        """True when ``model`` is (a subclass of) one of ``model_classes`` (by class name)."""
        names = {klass.__name__ for klass in type(model).__mro__}
        return any(name in names for name in cls.model_classes)

    @classmethod
    def locate(cls, model: torch.nn.Module) -> Any:  # pragma: no cover - interface
        """The family's modules on ``model`` (at least ``.decoder``, the language model whose
        inputs are compressed); ValueError naming the family when one is missing."""
        raise NotImplementedError

    def attach(self) -> None:  # pragma: no cover - interface
        """Register the hooks (through :meth:`_pre_hook` / :meth:`_post_hook`)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Drop per-model state (called by the handle's ``remove`` after the hooks go)."""
