"""Train the accuracy probe from scratch (outside CI; docs/probe.md).

    python scripts/train_probe.py --seed 0 -o omnizip/probe/assets     # the committed weights
    python scripts/train_probe.py --seed 1 -o out/probe-seed1          # another seed

Runs the curriculum of :mod:`omnizip.probe.train`, then evaluates the trained model on the
held-out clips with all tokens and prints its accuracy; the folder gets ``probe.safetensors``
(trained parameters only: the embedding table is rebuilt from the seed) and ``probe.json``
(seed, sizes, task, settings, training history, held-out accuracy).

Threads: one by default. On a shared 2-core machine (other processes busy) two torch threads
ran a training step 2-3x slower than one, because every parallel region waits for the
descheduled thread; pass --threads 2 on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="model and data seed (default 0)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--heldout", type=int, default=128, metavar="N",
                        help="held-out clips per variant for the final accuracy (default 128)")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="stop training after M minutes (default: run the curriculum out)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="go on training the run saved in DIR (stopped by --max-minutes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from omnizip.probe.evaluate import evaluate, heldout_set
    from omnizip.probe.model import ProbeModel, save_probe
    from omnizip.probe.task import ProbeTask, build_probe_processor
    from omnizip.probe.train import train_probe

    start = time.perf_counter()
    resume = None
    if args.resume is not None:
        import json
        from pathlib import Path

        from safetensors.torch import load_file

        resume = (load_file(str(Path(args.resume) / "probe.safetensors")),
                  json.loads((Path(args.resume) / "probe.json").read_text()))
        if resume[1]["seed"] != args.seed:
            parser.error(f"--resume {args.resume}: trained with seed {resume[1]['seed']}, "
                         f"not --seed {args.seed}")
    model, record = train_probe(
        args.seed, resume=resume, log=lambda line: print(line, flush=True),
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    task = ProbeTask(**record["task"])
    probe = ProbeModel(model=model, processor=build_probe_processor(task), task=task, record=record)
    row = evaluate(probe, heldout_set(probe, args.heldout))
    record["heldout"] = {"clips": row["n"], "accuracy": row["accuracy"],
                         "accuracy_by_variant": row["accuracy_by_variant"]}
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    save_probe(model, args.output, record)
    print(f"seed {args.seed}: trained in {record['train_seconds']:.0f} s, held-out accuracy "
          f"{row['accuracy']:.3f} {row['accuracy_by_variant']} on {row['n']} clips -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
