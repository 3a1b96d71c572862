"""Hugging Face input helpers: :mod:`omnizip.hf.messages` (Qwen-style chat messages, read with
``qwen-omni-utils``, to processor inputs on transformers 5.x)."""
