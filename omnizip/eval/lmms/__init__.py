"""lmms-eval integration (see :mod:`omnizip.eval.lmms_eval_plugin`): the model class
(:mod:`.model`, imported only by lmms-eval), its arguments (:mod:`.model_args`), the legacy
``LMMS_EVAL_PLUGINS=omnizip.eval.lmms`` layout (:mod:`.models`) and the task configurations
(:mod:`.tasks`)."""
