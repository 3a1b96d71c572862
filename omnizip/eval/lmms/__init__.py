"""lmms-eval plugin package: ``LMMS_EVAL_PLUGINS=omnizip.eval.lmms`` (see
:mod:`omnizip.eval.lmms_eval_plugin`)."""
