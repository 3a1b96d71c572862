"""No task configs: lmms-eval's CLI adds ``<plugin>.tasks`` to its task path when a plugin is
set, so the folder must exist. Use lmms-eval's own ``worldsense`` / ``videomme`` tasks."""
