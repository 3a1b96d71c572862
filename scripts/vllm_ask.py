#!/usr/bin/env python3
"""Ask the server that ``make serve`` started a question about a local video, with the official
``openai`` client, and print the answer and the token usage (the request of docs/serving.md).

    python scripts/vllm_ask.py [CLIP] [--question TEXT] [--url http://127.0.0.1:8000/v1]

The clip (default: the bundled demo clip) must lie under the server's
``--allowed-local-media-path`` (``make serve``: the repository). Its own audio track is used
(``use_audio_in_video``), which is what OmniZip's audio guidance needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openai import OpenAI

DEMO_CLIP = Path(__file__).resolve().parents[1] / "omnizip" / "assets" / "demo_clip.mp4"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clip", nargs="?", type=Path, default=DEMO_CLIP)
    p.add_argument("--question", default="What happens in the video, and what is said?")
    p.add_argument("--url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)

    client = OpenAI(base_url=args.url, api_key="unused")
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": args.clip.resolve().as_uri()}},
            {"type": "text", "text": args.question},
        ]}],
        # the video's own audio track, interleaved with its frames
        extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}},
        max_tokens=args.max_tokens,
    )
    usage = reply.usage
    print(f"answer: {reply.choices[0].message.content!r}")
    print(f"prompt_tokens: {usage.prompt_tokens}, completion_tokens: {usage.completion_tokens}, "
          f"cached_tokens: {usage.prompt_tokens_details.cached_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
