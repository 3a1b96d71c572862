"""Model adapters for :func:`omnizip.patch` (one small file per model family).

``ADAPTERS`` lists them in the order :func:`omnizip.patch` tries them; an adapter is a
:class:`omnizip.patch.ModelAdapter` subclass that names the model classes it serves.
"""

from .qwen2_5_omni import Qwen2_5OmniAdapter
from .qwen3_omni import Qwen3OmniAdapter

ADAPTERS = (Qwen2_5OmniAdapter, Qwen3OmniAdapter)

__all__ = ["ADAPTERS", "Qwen2_5OmniAdapter", "Qwen3OmniAdapter"]
