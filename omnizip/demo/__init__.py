"""Offline building blocks for demos, tests and the CLI: tiny random-weight Qwen2.5-Omni and
Qwen3-Omni models (``tiny_model``), offline processors (``processor``) and real test media
(``media``)."""
