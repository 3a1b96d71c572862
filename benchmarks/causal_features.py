"""How much the causal log-mel (running-maximum clamp) differs from Whisper's whole-clip clamp,
on speech spoken by espeak-ng (docs/algorithm.md section 9, "Causal audio features").

For each clip: frames in total, frames that differ (any mel bin by more than 1e-6), and the
max / mean absolute difference of the normalised features ((x + 4) / 4 units) over all values
and over the differing frames. Both the Qwen3-Omni path (``padding="longest"``) and the
Qwen2.5-Omni path (``padding="max_length"``, valid frames only) are compared.

    python benchmarks/causal_features.py            # prints a table, JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from omnizip.audio_features import causal_audio_inputs

SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the band plays in the park.",
    "Please remember to turn off the lights and lock the door before you leave tonight.",
]


def speak(text: str, speed: int = 160) -> np.ndarray:
    """espeak-ng speech as float32 mono 16 kHz (ffmpeg resamples)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = str(Path(tmp) / "s.wav")
        subprocess.run(["espeak-ng", "-s", str(speed), "-w", wav, text], check=True, capture_output=True)
        raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", wav, "-ar", "16000", "-ac", "1",
                              "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.float32).copy()


def clips() -> dict[str, np.ndarray]:
    first, second = speak(SENTENCES[0]), speak(SENTENCES[1])
    gap = np.zeros(8000, dtype=np.float32)
    return {
        "plain speech": np.concatenate([first, gap, second]),
        "quiet (-30 dB) then loud": np.concatenate([first * 10 ** (-30 / 20), gap, second]),
        "loud then quiet (-30 dB)": np.concatenate([first, gap, second * 10 ** (-30 / 20)]),
        "silence 2 s then speech": np.concatenate([np.zeros(32000, dtype=np.float32), first]),
    }


def compare(waveform: np.ndarray, extractor, padding: str) -> dict:
    kwargs = {"truncation": False} if padding == "longest" else {}
    whisper = extractor(waveform, sampling_rate=16000, padding=padding, return_attention_mask=True,
                        return_tensors="pt", **kwargs)
    ours = causal_audio_inputs(waveform, extractor, padding=padding)
    assert torch.equal(ours["feature_attention_mask"], whisper["attention_mask"])
    valid = int(whisper["attention_mask"].sum())
    a = ours["input_features"][0, :, :valid].double()
    b = whisper["input_features"][0, :, :valid].double()
    diff = (a - b).abs()
    changed = diff.amax(dim=0) > 1e-6
    return {
        "frames": valid,
        "frames_changed": int(changed.sum()),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "mean_abs_changed_frames": float(diff[:, changed].mean()) if changed.any() else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/causal_features.json"))
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        raise SystemExit("needs espeak-ng and ffmpeg on PATH")
    from transformers import WhisperFeatureExtractor

    # The Qwen-Omni processors' extractor: 128 mel bins, 16 kHz, hop 160, n_fft 400, 300-s padding.
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                        chunk_length=300, n_fft=400)
    rows = []
    print(f"{'clip':<28} {'padding':<11} {'frames':>6} {'changed':>8} {'max |d|':>8} "
          f"{'mean |d|':>9} {'mean |d| changed':>17}")
    for name, waveform in clips().items():
        for padding in ("longest", "max_length"):
            row = {"clip": name, "seconds": round(len(waveform) / 16000, 2), "padding": padding,
                   **compare(waveform, extractor, padding)}
            rows.append(row)
            print(f"{name:<28} {padding:<11} {row['frames']:>6} {row['frames_changed']:>8} "
                  f"{row['max_abs']:>8.3f} {row['mean_abs']:>9.4f} {row['mean_abs_changed_frames']:>17.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, torch {torch.__version__}"
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
