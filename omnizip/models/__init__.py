"""Model adapters for :func:`omnizip.patch` (one small file per model family).

``ADAPTERS`` is the registry :func:`omnizip.patch` reads, in the order it tries them; an
adapter is a :class:`omnizip.models.base.ModelAdapter` subclass that names the model classes
it serves. A new family is one module here plus one entry in ``ADAPTERS``.
"""

from .base import ModelAdapter
from .qwen2_5_omni import Qwen2_5OmniAdapter
from .qwen3_omni import Qwen3OmniAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (Qwen2_5OmniAdapter, Qwen3OmniAdapter)

__all__ = ["ADAPTERS", "ModelAdapter", "Qwen2_5OmniAdapter", "Qwen3OmniAdapter"]
