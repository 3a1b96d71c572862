"""``python -m omnizip.eval.lmms.tasks``: print the task folder (for ``--include_path``)."""

from . import task_path

print(task_path())
