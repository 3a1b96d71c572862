"""Offline building blocks for demos, tests and the CLI: a tiny random-weight Qwen2.5-Omni
(``tiny_model``), an offline processor (``processor``) and real test media (``media``)."""
