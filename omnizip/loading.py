"""The one way omnizip loads a Qwen-Omni model and its processor (CLI, ``omnizip eval``, the
lmms-eval plugin).

``load_model(name_or_path, *, dtype, device, attn_implementation)`` accepts:

* a built-in random-weight model of the real architecture, built in code (no download; its
  answers are noise, everything else is real): :data:`BUILTIN_MODELS`;
* a Hugging Face id or a local checkpoint folder whose config's ``model_type`` is in
  :data:`MODEL_CLASSES` (Qwen2.5-Omni or Qwen3-Omni, full model or thinker). Full models are
  loaded without their talker (``enable_audio_output=False``): omnizip serves text output.

Bad arguments raise :class:`LoadError` (a ValueError naming the argument) before anything
large is loaded; so do checkpoints that cannot be read.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BUILTIN_MODELS",
    "DTYPES",
    "MODEL_CLASSES",
    "LoadError",
    "Loaded",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

#: ``model_type`` of a checkpoint's config -> the transformers class that loads it
MODEL_CLASSES: dict[str, str] = {
    "qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration",
}
#: full models whose talker (speech output) is not built
_WITH_TALKER = ("qwen2_5_omni", "qwen3_omni_moe")
#: ``--dtype`` names (besides ``auto``)
DTYPES = ("float32", "bfloat16", "float16")
#: attention implementations omnizip is tested with
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class LoadError(ValueError):
    """A model that cannot be loaded as asked. ``option`` names the argument at fault
    (``model``, ``dtype``, ``device`` or ``attn_implementation``), ``detail`` says why."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option} {detail}")
        self.option = option
        self.detail = detail


@dataclass
class Loaded:
    """A loaded model. Unpacks as ``model, processor = load_model(...)``."""

    model: Any
    processor: Any
    name: str
    builtin: bool
    description: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype

    @property
    def thinker(self) -> Any:
        """The thinker (the model itself when it is one)."""
        return getattr(self.model, "thinker", self.model)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.processor))


# ----------------------------------------------------------------------------- built-in models
@dataclass(frozen=True)
class _Builtin:
    family: str
    build: Callable[[str, Any, Any], Any]  # (attn_implementation, dtype, device) -> model
    processor: Callable[[], Any]


def _tiny_qwen2_5(attn: str, dtype: Any, device: Any) -> Any:
    from .demo.tiny_model import build_tiny_qwen2_5_omni_thinker

    return build_tiny_qwen2_5_omni_thinker(attn_implementation=attn, dtype=dtype).to(device)


def _scaled_qwen2_5(attn: str, dtype: Any, device: Any) -> Any:
    from .demo.scaled_model import build_scaled_thinker

    return build_scaled_thinker(device, dtype, attn_implementation=attn)


def _tiny_qwen3(attn: str, dtype: Any, device: Any) -> Any:
    from .demo.tiny_model import build_tiny_qwen3_omni_thinker

    return build_tiny_qwen3_omni_thinker(attn_implementation=attn, dtype=dtype).to(device)


def _qwen2_5_processor(**pixels: int) -> Callable[[], Any]:
    def make() -> Any:
        from .demo.processor import build_offline_processor

        return build_offline_processor(**pixels)

    return make


def _qwen3_processor() -> Any:
    from .demo.processor import build_offline_qwen3_omni_processor

    return build_offline_qwen3_omni_processor()


_QWEN2_5 = "Qwen2.5-Omni"
_QWEN3 = "Qwen3-Omni (MoE)"

#: Built-in random-weight thinkers (real architectures, offline processors at the real token
#: ids). ``tiny`` is ``tiny-qwen2.5-omni`` with frames capped at 112x112 pixels (56x56 at
#: least): the smoke-test setting of ``omnizip eval --model tiny``.
BUILTIN_MODELS: dict[str, _Builtin] = {
    "tiny-qwen2.5-omni": _Builtin(_QWEN2_5, _tiny_qwen2_5, _qwen2_5_processor()),
    "scaled-qwen2.5-omni": _Builtin(_QWEN2_5, _scaled_qwen2_5, _qwen2_5_processor()),
    "tiny-qwen3-omni": _Builtin(_QWEN3, _tiny_qwen3, _qwen3_processor),
    "tiny": _Builtin(_QWEN2_5, _tiny_qwen2_5,
                     _qwen2_5_processor(max_pixels=112 * 112, min_pixels=56 * 56)),
}


# ----------------------------------------------------------------------------- arguments
def resolve_device(device: Any = "auto") -> Any:
    """``torch.device`` for ``"auto"`` (CUDA when available), a device string or a device."""
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise LoadError("device", f"{device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("device", f"{device!r}: CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: Any, device: Any, builtin: bool) -> Any:
    """``torch.dtype`` for a name of :data:`DTYPES` (or a floating torch dtype); ``"auto"``:
    built-in models float32 on CPU and bfloat16 on CUDA, checkpoints ``"auto"`` (their own)."""
    import torch

    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if dtype == "auto":
        if builtin:
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return "auto"
    if dtype not in DTYPES:
        raise LoadError("dtype", f"{dtype!r}: expected auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def check_attn_implementation(name: str | None, device: Any) -> None:
    """``attn_implementation`` is None (the default) or one of :data:`ATTN_IMPLEMENTATIONS`
    that this machine can run (flash-attention needs its package and a CUDA device)."""
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        raise LoadError("attn_implementation",
                        f"{name!r}: expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise LoadError("attn_implementation",
                            f"{name!r} needs the flash-attn package (pip install flash-attn)")
        if device.type != "cuda":
            raise LoadError("attn_implementation", f"{name!r} needs a CUDA device, got {device}")


# ----------------------------------------------------------------------------- loading
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def _describe_builtin(model: Any, name: str, family: str) -> str:
    from .flops import decoder_dims

    dims = decoder_dims(model)
    text = model.config.text_config
    heads = getattr(text, "num_attention_heads", "?")
    kv = getattr(text, "num_key_value_heads", "?")
    params = sum(p.numel() for p in model.model.language_model.layers.parameters())
    return (
        f"{name}: random-weight {family} thinker (real architecture), decoder hidden "
        f"{dims.hidden}, {dims.layers} layers, {heads} heads / {kv} KV heads, FFN "
        f"{dims.mlp_width}, {params / 1e6:.1f}M decoder parameters"
    )


def load_model(
    name_or_path: str,
    *,
    dtype: Any = "auto",
    device: Any = "auto",
    attn_implementation: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Loaded:
    """The model (eval mode) and processor for a built-in name, a Hub id or a local folder.

    Args:
        name_or_path: a key of :data:`BUILTIN_MODELS`, or a checkpoint whose ``model_type`` is
            in :data:`MODEL_CLASSES`.
        dtype: ``"auto"`` or one of :data:`DTYPES` (see :func:`resolve_dtype`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (checkpoints load straight
            to it with ``device_map`` when accelerate is installed, else load then move).
        attn_implementation: None (built-in: sdpa; checkpoints: their own) or one of
            :data:`ATTN_IMPLEMENTATIONS`.
        log: called with progress lines (the CLI prints them); None: silent.

    Returns a :class:`Loaded`. Raises :class:`LoadError` for bad arguments and checkpoints that
    cannot be loaded.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise LoadError("model", f"{name_or_path!r}: expected a built-in name "
                        f"({', '.join(BUILTIN_MODELS)}), a Hugging Face id or a folder")
    dev = resolve_device(device)
    check_attn_implementation(attn_implementation, dev)
    started = time.perf_counter()
    name = name_or_path
    builtin = BUILTIN_MODELS.get(name)
    if builtin is not None:
        dt = resolve_dtype(dtype, dev, builtin=True)
        _say(log, f"building {name} (random weights) on {dev} ...")
        model = builtin.build(attn_implementation or "sdpa", dt, dev)
        description = _describe_builtin(model, name, builtin.family)
        _say(log, f"  built in {time.perf_counter() - started:.1f} s: {description}")
        return Loaded(model, builtin.processor(), name, True, description, dev, dt)
    return _load_checkpoint(name, resolve_dtype(dtype, dev, builtin=False), dev,
                            attn_implementation, log, started)


def _load_checkpoint(name: str, dt: Any, dev: Any, attn: str | None,
                     log: Callable[[str], None] | None, started: float) -> Loaded:
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not path.exists():
        raise LoadError("model", f"{name!r}: no such file or directory")
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise LoadError("model", f"{name!r}: not a model folder (no config.json in it)")
    _say(log, f"loading {name} with from_pretrained on {dev} ...")
    try:
        import transformers
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(name)
    except Exception as exc:  # network, missing repo, bad config: one line
        raise LoadError("model", f"{name!r}: cannot load its config: {_one_line(exc)}") from exc
    model_type = str(getattr(config, "model_type", None))
    cls_name = MODEL_CLASSES.get(model_type)
    if cls_name is None or not hasattr(transformers, cls_name):
        raise LoadError("model", f"{name!r}: model_type {model_type!r} is not an omni model "
                        f"omnizip serves ({', '.join(MODEL_CLASSES)})")
    kwargs: dict[str, Any] = {"dtype": dt}
    # device_map loads straight to the device but needs accelerate; otherwise load, then move
    place = importlib.util.find_spec("accelerate") is not None
    if place:
        kwargs["device_map"] = str(dev)
    if model_type in _WITH_TALKER:
        kwargs["enable_audio_output"] = False  # text output only: do not build the talker
    if attn:
        kwargs["attn_implementation"] = attn
    try:
        model = getattr(transformers, cls_name).from_pretrained(name, **kwargs)
        if not place:
            model = model.to(dev)
        processor = AutoProcessor.from_pretrained(name)
    except Exception as exc:  # weights, processor files, memory: one line
        raise LoadError("model", f"{name!r}: cannot load it: {_one_line(exc)}") from exc
    if getattr(model, "has_talker", False) and hasattr(model, "disable_talker"):
        model.disable_talker()
    model.eval()
    thinker = getattr(model, "thinker", model)
    param = next(thinker.parameters())
    billions = sum(p.numel() for p in thinker.parameters()) / 1e9
    description = f"{name} ({cls_name}, {param.dtype}, {billions:.2f}B thinker parameters)"
    _say(log, f"  loaded in {time.perf_counter() - started:.1f} s")
    return Loaded(model, processor, name, False, description, param.device, param.dtype)
