"""lmms-eval plugin: OmniZip-patched Qwen-Omni models as an lmms-eval ``--model``, and the
audio-video benchmarks lmms-eval lacks as tasks.

Optional: lmms-eval is not a dependency of omnizip (``pip install "omnizip[lmms]"`` brings it).
This module imports without it; the model class is imported (and lmms-eval with it) only when
lmms-eval asks for it. Nothing here edits lmms-eval.

**The model** (``omnizip_qwen_omni``). lmms-eval 0.7 finds models through the Python entry
point group ``lmms_eval.models``; omnizip's ``pyproject.toml`` declares
``omnizip_qwen_omni = "omnizip.eval.lmms_eval_plugin:model_manifest"``, so an installed omnizip
is found with no environment variable::

    python -m lmms_eval --model omnizip_qwen_omni \\
        --model_args pretrained=Qwen/Qwen2.5-Omni-7B,method=omnizip,retention=0.45 \\
        --tasks worldsense --batch_size 1

The older plugin route still works (lmms-eval warns that it is deprecated):
``LMMS_EVAL_PLUGINS=omnizip.eval.lmms`` makes lmms-eval import ``omnizip.eval.lmms.models``
and read its ``AVAILABLE_MODELS``. In-process, :func:`register` adds the model to lmms-eval's
registry (for a source tree that is not installed, so has no entry point).

**The tasks** (``avut``, ``daily_omni``, ``shortvid_bench``): YAML configurations in the
folder :func:`task_path` returns (``python -m omnizip.eval.lmms.tasks`` prints it), given to
lmms-eval with ``--include_path``; see :mod:`omnizip.eval.lmms.tasks`.

``--model_args`` (comma separated ``key=value``; lmms-eval converts numbers and booleans):
``pretrained`` (checkpoint id/path; ``tiny``: the random-weight tiny model built in code),
``method`` (a name of :data:`omnizip.methods.METHODS` or ``none``), ``retention`` /
``token_budget``, ``preset`` (``45``/``35`` for the omnizip methods), ``device``, ``dtype``,
``attn_implementation``, ``max_new_tokens`` (default for tasks that set none), ``fps``,
``max_frames``, ``max_pixels``, ``min_pixels``, ``use_audio_in_video`` (False: the video's
audio track follows the video as its own block instead of being interleaved),
``system_prompt`` (``omnizip``: the OmniZip evaluation's, ``qwen``: Qwen's default, ``none``);
any other key is an option of the method (e.g. ``g=15``, ``layer=5``), and a key that is
neither is refused with the lists of both. lmms-eval's own ``--batch_size`` (1 or ``auto``),
``--max_batch_size`` and ``--device`` are accepted (``max_batch_size`` is ignored: requests
are answered one at a time).

Each request is answered with greedy decoding (the task's ``until`` strings cut the answer)
and logs one line with what the compression kept (the patch's summary). A request whose video
is missing or unreadable (lmms-eval's ``worldsense_doc_to_visual`` returns ``[]`` for a
missing file) is logged and answered with an empty string, which the task scores as wrong:
one bad item does not abort the run. A request's visuals must be one video file; images are
not supported. Only ``generate_until`` is implemented (the multiple-choice tasks of these
benchmarks are generation tasks). lmms-eval's ``clean()`` (called after the requests) removes
the patch's hooks and releases the model.

The interface implemented is lmms-eval's "simple" model API (``lmms_eval.api.model.lmms``:
``generate_until(requests)`` with ``request.args = (context, gen_kwargs, doc_to_visual,
doc_id, task, split)``), as of lmms-eval 0.7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CLASS_PATH", "MODEL_NAME", "build_model_class", "is_available", "model_manifest",
           "register", "task_path"]

MODEL_NAME = "omnizip_qwen_omni"
CLASS_NAME = "OmniZipQwenOmni"
#: where lmms-eval imports the class from (the legacy plugin layout, kept for both routes)
CLASS_PATH = f"omnizip.eval.lmms.models.{MODEL_NAME}.{CLASS_NAME}"


def is_available() -> bool:
    """True when lmms-eval can be imported."""
    try:
        import lmms_eval.api.model  # noqa: F401
    except ImportError:
        return False
    return True


def build_model_class() -> type:
    """The lmms-eval model class (imports lmms-eval; ImportError with a hint without it)."""
    if not is_available():
        raise ImportError(
            f"{MODEL_NAME} needs lmms-eval (pip install 'omnizip[lmms]'); it is an optional "
            "extra of omnizip"
        )
    from .lmms.model import OmniZipQwenOmni

    return OmniZipQwenOmni


def model_manifest() -> Any:
    """The ``lmms_eval.models.registry_v2.ModelManifest`` of ``omnizip_qwen_omni``: the payload
    of omnizip's ``lmms_eval.models`` entry point (lmms-eval calls it while building its
    model registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> type:
    """Add ``omnizip_qwen_omni`` to the model registry of lmms-eval >= 0.7 in this process and
    return the class: for running lmms-eval in-process from a source tree that is not installed
    (an installed omnizip needs no call: lmms-eval reads its entry point)."""
    cls = build_model_class()
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(model_manifest(), overwrite=True)
    return cls


def task_path() -> str:
    """The folder of omnizip's lmms-eval task configurations, for ``--include_path``."""
    return str(Path(__file__).resolve().parent / "lmms" / "tasks")


def __getattr__(attr: str) -> Any:  # lazy: `from omnizip.eval.lmms_eval_plugin import OmniZipQwenOmni`
    if attr == CLASS_NAME:
        return build_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
