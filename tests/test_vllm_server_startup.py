"""A vLLM server refuses an invalid OmniZip setting at start-up, with a clear message.

Two doors: ``make serve`` / scripts/vllm_serve.py checks the settings before vLLM loads
anything (one line on stderr, exit status 2), and a plain vLLM server started with OmniZip
``--hf-overrides`` by hand stops in the plugin (non-zero exit, the reason in its log).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from vllm_server.harness import REPO, run_launcher, run_to_exit, vllm_python

QWEN2_5_ARCH = "OmniZipQwen2_5OmniForConditionalGeneration"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2.5-omni"), "qwen2.5-omni")


@pytest.mark.parametrize(("args", "field", "wrong"), [
    (["--preset", "99"], "preset", "'99'"),
    (["--omnizip-config", '{"rho_video": 1.5}'], "rho_video", "1.5"),
    # `make serve`'s default preset with an override, as OMNIZIP_CONFIG gives it
    (["--preset", "45", "--omnizip-config", '{"rho_video": 1.5}'], "rho_video", "1.5"),
    (["--omnizip-config", '{"budget": "reference"}'], "budget", "'reference'"),
    # streams are served as chunk items decided one by one (docs/serving_streams.md)
    (["--omnizip-config", '{"causal": true}'], "causal", "True"),
    (["--omnizip-config", '{"rho_v": 0.5}'], "rho_v", "rho_v"),
    (["--omnizip-config", "[0.5]"], "--omnizip-config", "[0.5]"),
])
def test_launcher_refuses_a_bad_setting_in_one_line(checkpoint, args, field, wrong):
    result = run_launcher(["--model", str(checkpoint), *args], timeout=300)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vllm_serve: error: ")
    assert field in lines[0] and wrong in lines[0]
    assert result.stdout == ""  # nothing was started


@pytest.mark.parametrize(("args", "expected"), [
    (["--preset", "45"], {"rho_audio": 0.3, "rho_video": 0.6}),
    (["--preset", "35"], {"rho_audio": 0.4, "rho_video": 0.7}),
    (["--preset", "45", "--omnizip-config", '{"rho_video": 0.7, "g": 15}'],
     {"rho_audio": 0.3, "rho_video": 0.7, "g": 15}),
])
def test_launcher_passes_the_settings_to_vllm(checkpoint, args, expected):
    result = run_launcher(["--model", str(checkpoint), "--dry-run", *args, "--", "--enforce-eager"],
                          timeout=300)

    assert result.returncode == 0, result.stderr
    cmd = json.loads(result.stdout)
    overrides = json.loads(cmd[cmd.index("--hf-overrides") + 1])
    assert overrides["architectures"] == [QWEN2_5_ARCH]
    assert {k: overrides["omnizip"][k] for k in expected} == expected
    assert overrides["omnizip"]["budget"] == "exact"
    assert cmd[-1] == "--enforce-eager"
    assert cmd[cmd.index("--allowed-local-media-path") + 1] == str(REPO)


def test_launcher_with_omnizip_off_serves_vllms_own_model(checkpoint):
    result = run_launcher(["--model", str(checkpoint), "--dry-run", "--omnizip", "off",
                           "--preset", "99"], timeout=300)

    assert result.returncode == 0, result.stderr
    cmd = json.loads(result.stdout)
    assert "--hf-overrides" not in cmd  # the checkpoint's own architecture
    assert cmd[cmd.index("--model") + 1] == str(checkpoint)


def test_launcher_refuses_a_folder_without_a_config(tmp_path):
    result = run_launcher(["--model", str(tmp_path)], timeout=300)

    assert result.returncode == 2
    assert result.stderr.strip() == f"vllm_serve: error: --model: {tmp_path} has no config.json"


def test_plain_vllm_server_with_a_bad_omnizip_override_exits_with_the_reason(checkpoint):
    overrides = {"architectures": [QWEN2_5_ARCH], "omnizip": {"rho_video": 1.5}}
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(checkpoint), "--port", "0", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
           "--hf-overrides", json.dumps(overrides)]
    try:
        result = run_to_exit(cmd, timeout=600)
    except subprocess.TimeoutExpired:  # pragma: no cover - a server that started anyway
        pytest.fail("the server started with rho_video=1.5 instead of refusing it")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # the validation message (not vLLM's echo of its arguments, which also names the value)
    reason = [line for line in output.splitlines() if "rho_video" in line and "must lie in [0, 1), got 1.5" in line]
    assert reason, output[-3000:]
    print("\n".join(reason), file=sys.stderr)
