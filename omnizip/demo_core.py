"""A short demo of the OmniZip core on synthetic tokens shaped like Qwen2.5-Omni's
interleaved audio-video layout (used by ``make demo`` until a model-level demo exists).

    python -m omnizip.demo_core
"""

from __future__ import annotations

import time

import torch

from . import OmniZipConfig, compress_sequence

AUDIO_ID, VIDEO_ID, TEXT_ID = 151646, 151656, 100


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens_per_frame, seconds, hidden = 144, 60, 1024
    layout = [TEXT_ID] * 20
    for _ in range(seconds // 2):  # 2-second windows: 2 frames + 50 audio tokens
        layout += [VIDEO_ID] * (2 * tokens_per_frame) + [AUDIO_ID] * 50
    layout += [TEXT_ID] * 30
    ids = torch.tensor(layout)
    embeds = torch.randn(ids.numel(), hidden, generator=gen)
    # Speech-like audio importance: loud first half, quiet second half.
    n_audio = int((ids == AUDIO_ID).sum())
    scores = torch.rand(n_audio, generator=gen) * torch.linspace(2.0, 0.2, n_audio)
    print(f"synthetic {seconds} s clip: {ids.numel()} tokens, hidden size {hidden}")
    for name in ("45", "35"):
        for budget in ("reference", "exact"):
            config = OmniZipConfig.preset(name, budget=budget)
            start = time.perf_counter()
            res = compress_sequence(embeds, ids, scores, audio_token_id=AUDIO_ID,
                                    video_token_id=VIDEO_ID, tokens_per_frame=tokens_per_frame,
                                    config=config)
            ms = (time.perf_counter() - start) * 1e3
            print(f"preset {name}% budget={budget:<9s} {ms:6.1f} ms  {res.summary()}")
    ratios = res.video_chunk_ratio[: res.num_guided]
    print("per-window audio retention S_i (first 8):",
          [round(float(x), 2) for x in res.window_audio_retention[:8]])
    print("per-window video ratio r_i   (first 8):", [round(float(x), 2) for x in ratios[:8]])


if __name__ == "__main__":
    main()
