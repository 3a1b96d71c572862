"""lmms-eval task configurations for the audio-video benchmarks lmms-eval lacks.

- ``avut``: AVUT, annotation file ``AV_Human_data.json`` (``$OMNIZIP_AVUT``);
- ``daily_omni``: Daily-Omni, ``qa.json`` (``$OMNIZIP_DAILY_OMNI``);
- ``shortvid_bench``: ShortVid-Bench, ``ShortVid-Bench-1k.json`` (``$OMNIZIP_SHORTVID_BENCH``);
- ``omnivideobench``: OmniVideoBench, ``data.json`` or the flat records (``$OMNIZIP_OMNIVIDEOBENCH``);
- ``lvomnibench``: LVOmniBench, ``data.json`` (``$OMNIZIP_LVOMNIBENCH``).

Give lmms-eval this folder with ``--include_path`` (``python -m omnizip.eval.lmms.tasks`` prints
it) and point the task at a local copy of the benchmark with an environment variable:
``OMNIZIP_AVUT``, ``OMNIZIP_DAILY_OMNI``, ``OMNIZIP_SHORTVID_BENCH``, ``OMNIZIP_OMNIVIDEOBENCH``,
``OMNIZIP_LVOMNIBENCH`` hold the annotation file's
path, ``OMNIZIP_<NAME>_VIDEO_DIR`` optionally the video folder (default: where
:mod:`omnizip.eval.datasets` looks). The questions are read by the same loaders as
``omnizip eval``, the prompt is :func:`omnizip.eval.prompt.build_prompt` and the answer letter is
read by :func:`omnizip.eval.extract.extract_choice` (:mod:`.common`), so both harnesses score the
same way. The metric ``accuracy`` is the share of correct answers; per-category accuracy is
logged.

lmms-eval's CLI also adds this folder to its task path when ``LMMS_EVAL_PLUGINS=omnizip.eval.lmms``
is set, but lmms-eval 0.7.3 builds its task index before it does so: use ``--include_path``.
"""

from ...lmms_eval_plugin import task_path

__all__ = ["task_path"]
