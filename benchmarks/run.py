"""lucid_fx benchmarks against optax and torch, side by side in one process.

Usage::

    python benchmarks/run.py                       # every case, full sizes (a few minutes)
    python benchmarks/run.py --quick               # small sizes: a smoke run for CI
    python benchmarks/run.py --cases large,memory --json results.json

Prints a markdown table (case, lucid_fx, optax, torch, how many times slower or
larger the others are, notes with bandwidth efficiency and more) and, with
``--json``, writes every figure, the raw samples and the machine description.

Cases (see ``cases.py``):

- ``large``: one 16M float32 tensor, jitted and donated step, for plain,
  momentum, centered and centered + momentum, with the bandwidth efficiency
  against an in-place ``p - c·g`` triad timed alongside, and what XLA compiled
  (loops per leaf, bytes accessed per element);
- ``small``: 1000 tensors of 100 floats: optax's jitted tree step, torch's
  foreach step, and lucid_fx's tree step, ``flatten(tx)``, ``FlatLayout`` and
  ``fx.RMSprop.step()`` (gradients from ``fx.backward`` or assigned by hand);
- ``stateful``: the same contenders on one 16M tensor and on a ResNet-50's 161
  tensors;
- ``compile``: trace + lower + compile time of the 1000-tensor step;
- ``memory``: peak RSS of a step over 1 GiB of parameters, one process per library;
- ``bf16``: bfloat16 parameters with v in bfloat16 or float32: time, bytes and
  the accuracy of v;
- ``family``: every optimizer's step against optax's and torch's (``family.py``);
- ``muon``, ``adafactor``: the shape-aware optimizers on a transformer's matrices,
  batched and one-by-one Newton–Schulz, and the bytes of Adafactor's state
  (``shape_aware.py``);
- ``averaging``: an EMA update of a model's average (``swa_utils.AveragedModel``)
  against torch's and a jitted ``tree_map`` (``averaging.py``);
- ``zero1``: ``benchmarks/zero1.py`` (ZeRO-1 state sharding on 8 simulated
  devices) in a child process, printed as its own section after the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# The sibling modules (cases, harness) import as top-level modules from here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, SECTIONS
from harness import Row, Settings, as_table_row, machine, markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lucid_fx vs optax vs torch benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    every = [*CASES, *SECTIONS]
    parser.add_argument("--cases", default=",".join(every),
                        help=f"comma-separated subset of: {', '.join(every)}")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument("--reps", type=int, help="repetitions per contender (default 11; quick 3)")
    parser.add_argument("--verbose", action="store_true",
                        help="report each contender's first step (compile) time on stderr")
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in every]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {every}")
    settings = Settings(reps=3, target_s=0.01, quick=True) if args.quick else Settings()
    if args.reps:
        settings.reps = args.reps
    settings.verbose = args.verbose

    about = machine()
    print(f"# lucid_fx benchmarks ({'quick' if args.quick else 'full'})\n")
    print(f"{about['cpu']}, {about['cores']} cores, jax {about['jax']} on {about['jax_device']}, "
          f"optax {about['optax']}, torch {about['torch']}\n", flush=True)
    rows: list[Row] = []
    sections: dict[str, str] = {}
    durations = {}
    for name in names:
        start = time.perf_counter()
        if name in CASES:
            rows += CASES[name](settings)
        else:
            sections[name] = SECTIONS[name](settings)
        durations[name] = time.perf_counter() - start
        print(f"[{name}: {durations[name]:.0f} s]", file=sys.stderr, flush=True)
    if rows:
        print(markdown_table(rows))
        print("\nRatios > 1: the other library takes that many times longer (or more memory). "
              "BW eff: least bytes a step must move / time, over the triad's bytes / time.")
    for name, text in sections.items():
        print(f"\n## {name}\n\n```\n{text}\n```")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": about,
            "settings": vars(settings),
            "case_seconds": durations,
            "sections": sections,
            "rows": [as_table_row(row) for row in rows],
        }, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
