"""Writes docs/performance.md from the JSON that ``benchmarks/run.py --json`` wrote.

Every figure on that page, in the table and in the text, is read from the JSON,
so the page cannot disagree with the run it describes. Usage::

    python benchmarks/run.py --json benchmarks/results/cpu.json   # a few minutes
    python docs/gen_performance.py                                # -> docs/performance.md
    python docs/gen_performance.py --check                        # CI: is the page fresh?

Commit the page together with the JSON it came from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the table's format, shared with the benchmark
from table import markdown_table

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cpu.json"
DEFAULT_OUT = ROOT / "docs" / "performance.md"
Row = dict[str, Any]


def times(x: float) -> str:
    """A ratio in prose: one decimal below 10, whole numbers above."""
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def span(values: list[float], fmt: Callable[[float], str] = lambda v: f"{v:.2f}") -> str:
    low, high = min(values), max(values)
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}–{fmt(high)}"


def findings(rows: list[Row], on_cpu: bool) -> list[str]:
    """What the numbers say, each sentence computed from the rows it cites."""

    def row(case: str) -> Row | None:
        return next((r for r in rows if r["case"] == case), None)

    def starting(prefix: str) -> list[Row]:
        return [r for r in rows if r["case"].startswith(prefix)]

    out: list[str] = []
    large = [r for r in rows if re.fullmatch(r"\S+ f32, [\w+]+ \(\d+ B/elem\)", r["case"])]
    if large:
        vs_optax = [r["optax_over_lucid_fx"] for r in large if r["optax_over_lucid_fx"]]
        vs_torch = [r["torch_over_lucid_fx"] for r in large if r["torch_over_lucid_fx"]]
        loops = [r["extra"]["hlo"]["lucid_fx"]["loops"] for r in large]
        moved = [r["extra"]["hlo"]["lucid_fx"]["hlo_bytes_per_element"] for r in large]
        ideal = [r["extra"]["ideal_bytes_per_element"] for r in large]
        traffic = [r["extra"]["hlo_traffic_efficiency"]["lucid_fx"] for r in large]
        same = all(r["extra"]["hlo"]["lucid_fx"] == r["extra"]["hlo"]["optax"] for r in large)
        text = (
            f"- **Large tensors: lucid_fx and optax compile to {'the same' if same else 'different'} "
            f"loops.** On one 16M-element float32 tensor optax / lucid_fx is {span(vs_optax)} "
            f"over the {len(large)} configurations (1.00 is a tie; the spread is this machine's noise)"
        )
        if vs_torch:
            text += f", and torch's foreach step takes {span(vs_torch, times)} as long as lucid_fx's"
        out.append(text + ".")
        caps = ", ".join(f"{i / m:.2f}" for i, m in zip(ideal, moved))
        out.append(
            "- **The bandwidth limit on CPU.** XLA:CPU does not fuse a loop that writes several "
            "arrays, so each new buffer gets its own loop and each loop reads the gradient again: "
            f"plain, momentum, centered and centered + momentum take {', '.join(map(str, loops))} "
            f"loops per tensor and move {', '.join(f'{m:g}' for m in moved)} bytes per element "
            f"instead of the minimum {', '.join(map(str, ideal))}. That caps the bandwidth "
            f"efficiency of any library on this backend at {caps}; the loops themselves run at "
            f"{span(traffic)} of the triad's bandwidth. XLA:GPU can fuse those outputs into one "
            "loop; these figures are CPU only."
        )
    stateful = [r for r in starting("1 x 16M: fx.RMSprop") + starting("ResNet-50")
                if "fx.RMSprop" in r["case"]]
    if stateful:
        ratio = [r["extra"]["times_s"]["lucid_fx"] / r["lucid_fx"] for r in stateful]
        out.append(
            "- **The stateful optimizer on large tensors** runs at "
            f"{span(ratio)} of the speed of a hand-written jitted `fx.rmsprop` step (one 16M "
            "tensor and a ResNet-50's 161 tensors, gradients assigned or from `fx.backward`; "
            "above 1 is faster)."
        )
    by_config = [r for r in large if "fx.RMSprop.step()" in r["extra"]["times_s"]] if large else []
    if by_config:
        ratio = [r["extra"]["times_s"]["optax"] / r["extra"]["times_s"]["fx.RMSprop.step()"]
                 for r in by_config]
        out.append(
            f"- In each of the {len(by_config)} configurations on that tensor, "
            f"`fx.RMSprop.step()` (its gradient assigned before every step) runs at "
            f"{span(ratio)} of the speed of optax's jitted, donated step (above 1 is faster)."
        )
    first = [r for r in starting("compile, ") if "first fx.backward" in r["case"]]
    if first:
        # "compile, 1000 tensors: first fx.backward (...)" -> "over 1000 tensors"
        where = [("on the main job's MLP" if "main job" in r["case"]
                  else "over " + r["case"].split(":")[0].removeprefix("compile, ")) for r in first]
        out.append(
            "- **The first `fx.backward`** (trace, compile and run, its Parameters packed), as a "
            "multiple of `jax.jit(jax.value_and_grad)` of the same loss over plain arrays: "
            + ", ".join(f"{r['extra']['over_jax_value_and_grad']:.2f}× {w}"
                        for r, w in zip(first, where))
            + ". Each packed slot is cut at an offset passed as data, so XLA compiles one kernel "
            "per shape rather than one per slot."
        )
    tree = row("1000 x 100: fx.rmsprop jitted tree step")
    flat = row("1000 x 100: FlatLayout")
    if tree and flat:
        per_array = (tree["lucid_fx"] - flat["lucid_fx"]) / (5 * tree["extra"]["tensors"])
        text = (
            f"- **Many small tensors: dispatch costs, math does not.** A step over "
            f"{tree['extra']['tensors']} arrays of 100 floats costs about "
            f"{per_array * 1e6:.1f} µs per array crossing the `jit` boundary. Keeping the "
            f"parameters flat with `FlatLayout` removes that cost: that step is "
            f"{times(flat['optax_over_lucid_fx'])} faster than optax's"
        )
        if flat["torch_over_lucid_fx"]:
            text += f" and {times(flat['torch_over_lucid_fx'])} faster than torch's"
        compile_flat = row("compile, 1000 tensors: FlatLayout step")
        if compile_flat:
            text += (f", and it compiles in {compile_flat['lucid_fx'] / compile_flat['optax']:.2f}× "
                     "optax's time")
        out.append(text + ".")
    for label, how in (("fx.backward grads", "with gradients from `fx.backward`,"),
                       ("grads by hand", ("with gradients assigned by hand (`p.grad = g` for each "
                                         "tensor before every step),"))):
        r = row(f"1000 x 100: fx.RMSprop ({label})")
        if not r:
            continue
        lead = ("`fx.RMSprop` packs small parameters the same way internally: "
                if label == "fx.backward grads" else "")
        start = how if lead else how[0].upper() + how[1:]
        text = (f"- {lead}{start} its `step()` is "
                f"{times(r['optax_over_lucid_fx'])} faster than optax's jitted step")
        if r["torch_over_lucid_fx"]:
            text += f" and {times(r['torch_over_lucid_fx'])} faster than torch's foreach step"
        c = row(f"compile, 1000 tensors: fx.RMSprop ({label}): construction + first 2 steps")
        if c:
            text += (f"; construction and its first two steps take {c['lucid_fx'] / c['optax']:.2f}× "
                     "the time optax needs to compile its step")
        out.append(text + ".")
    wrapped = row("1000 x 100: flatten(tx)")
    if wrapped:
        out.append(
            "- `fx.flatten(tx)` keeps only the optimizer state flat (the parameters stay a tree), "
            f"so it gains less: {times(wrapped['optax_over_lucid_fx'])} over optax."
        )
    memory = starting("peak RSS of a step")
    if memory:
        peak = memory[0]["extra"]["peak_over_live"]
        net = memory[0]["extra"]["net_peak_over_live"]
        text = (
            f"- **Memory.** With parameters and state donated, the peak RSS of a step is "
            f"{peak['lucid_fx']:.2f}× parameters + gradients + state ({net['lucid_fx']:.2f}× net "
            f"of the JAX runtime's own memory). Without donation it is "
            f"{peak['lucid_fx-no-donation']:.2f}×"
        )
        if "torch" in peak:
            text += (f"; torch's foreach step reaches {peak['torch']:.2f}×, as it allocates a "
                     "temporary for sqrt(v)")
        out.append(text + ".")
    jitted = [(m.group(1), m.group(2), r) for r in rows
              if (m := re.fullmatch(r"(\S+) f32, fx\.(\w+) jitted step", r["case"]))]
    if jitted:
        def ratios(column: str, items: list[tuple[str, Row]]) -> str:
            return ", ".join(f"{name} {times(r[column])}" for name, r in items if r[column])

        size = jitted[0][0]
        items = [(name, r) for _, name, r in jitted]
        out.append(
            f"- **The family, jitted** (one {size}-element float32 tensor): torch's step takes "
            f"{ratios('torch_over_lucid_fx', items)} as long as lucid_fx's; optax's "
            f"{ratios('optax_over_lucid_fx', items)} (where optax's algorithm is not torch's, "
            "the table's notes say so)."
        )
    options_key = "lucid_fx (CPU_COMPILER_OPTIONS)"  # benchmarks/family.py: WITH_CPU_OPTIONS
    timed = {name: r["extra"]["times_s"] for _, name, r in jitted
             if options_key in r["extra"].get("times_s", {})}
    if timed:
        def over_plain(name: str, key: str) -> float:
            return float(timed[name][key] / timed[name]["lucid_fx"])

        changed = [name for name in ("asgd", "rprop") if name in timed]  # programs it changes
        others = [over_plain(name, options_key) for name in timed if name not in changed]
        stateful = {name: next(k for k in timed[name] if k.endswith(".step()")) for name in changed}
        out.append(
            "- **Donated buffers on XLA:CPU.** Jitted with `compiler_options="
            "{\"xla_cpu_copy_insertion_use_region_analysis\": True}` (the guide's option; the "
            "stateful face's CPU step uses it), the step takes "
            + ", ".join(f"{over_plain(name, options_key):.2f}× its plain time for {name}"
                        for name in changed)
            + f" (XLA drops a copy of a donated buffer), and {span(others, lambda v: f'{v:.2f}×')} "
            "for the others, whose compiled programs are the same with and without it (that "
            "spread is this run's noise). The stateful `step()` over the same tensor "
            "takes "
            + ", ".join(f"{over_plain(name, key):.2f}× the plain jitted step for {name}"
                        for name, key in stateful.items())
            + "."
        )
    stepped = [(m.group(1), r) for r in rows
               if (m := re.fullmatch(r".* f32, fx\.(\w+)\.step\(\) \(grads by hand\)", r["case"]))]
    if stepped:
        out.append(
            f"- **The family, stateful** (`step()` over {stepped[0][1]['case'].split(' f32')[0]} "
            f"float32 tensors, gradients assigned by hand): torch's foreach step takes "
            f"{ratios('torch_over_lucid_fx', stepped)} as long as lucid_fx's."
        )
    bf16 = row("16M bf16, v in bfloat16 (10 B/elem)")
    f32 = row("16M bf16, v in float32 (14 B/elem)")
    if bf16 and f32:
        error = bf16["extra"]["square_avg_error"]
        hlo = bf16["extra"]["hlo"]
        out.append(
            "- **bfloat16.** A bfloat16 v cannot follow the running average: each step moves v "
            "by (1-α) = 1% of itself, less than bfloat16's resolution (0.4% per ulp). After "
            f"{error['steps']} steps the median relative error of v is {error['bf16_state']:.2%} "
            f"with a bfloat16 v and {error['f32_state']:.5%} with "
            "`fx.rmsprop(..., state_dtype=jnp.float32)`. The step continues from the buffers as "
            f"stored, so a bfloat16-state step moves {hlo['bf16_state']['hlo_bytes_per_element']:g} "
            f"bytes per element ({hlo['f32_state']['hlo_bytes_per_element']:g} with a float32 v) "
            f"and runs {times(bf16['optax_over_lucid_fx'])} faster than optax's."
        )
    muon = next(iter(starting("Muon, ")), None)
    if muon:
        t = muon["extra"]["times_s"]
        label = muon["case"].removeprefix("Muon, ").split(":")[0]
        text = f"- **Muon** on {label}: "
        others = [(f"`optax.contrib.muon` {times(muon['optax_over_lucid_fx'])}", "optax"),
                  (f"torch's `Muon` {times(muon['torch_over_lucid_fx'] or 0)}", "torch")]
        text += " and ".join(s for s, key in others if muon[f"{key}_over_lucid_fx"])
        text += (
            " as long as `fx.muon`'s jitted step, whose Newton–Schulz runs once per shape; "
            f"the same step with one iteration per matrix takes {t['one by one'] / t['lucid_fx']:.2f}×, "
            f"with the iteration in float32 {t['float32'] / t['lucid_fx']:.2f}×, and "
            f"`fx.Muon.step()` {t['stateful'] / t['lucid_fx']:.2f}×."
        )
        if on_cpu:
            text += (
                " On a CPU the step is its matrix products: XLA:CPU runs a batched product "
                "as a loop over its matrices, so batching saves dispatches and no more, and "
                "torch's bfloat16 products (oneDNN) outrun XLA's float32 ones. Batching is "
                "meant for accelerators, where one small product leaves most of the chip idle; "
                "a run of this benchmark on a GPU measures it."
            )
        out.append(text)
    factored = next(iter(starting("Adafactor, ")), None)
    state = next(iter(starting("Adafactor's state")), None)
    if factored and state:
        held = state["extra"]["state_bytes"]
        text = "- **Adafactor**: "
        if factored["torch_over_lucid_fx"]:
            text += f"torch's foreach step takes {times(factored['torch_over_lucid_fx'])} and "
        text += (
            f"`optax.adafactor` (the paper's algorithm) {times(factored['optax_over_lucid_fx'])} as "
            f"long as `fx.adafactor`'s jitted step; its factored state is "
            f"{held['lucid_fx'] / 2**20:.3g} MiB where `fx.adam`'s is "
            f"{held['fx.adam'] / 2**20:.0f} MiB ({held['fx.adam'] / held['lucid_fx']:.0f}× as much)."
        )
        out.append(text)
    ema = starting("EMA update, ")
    if ema:
        vs_tree = [r["optax_over_lucid_fx"] for r in ema]
        text = (
            "- **Weight averaging** (an EMA update of a model's average, "
            "`swa_utils.AveragedModel.update_parameters`): a jitted `tree_map` "
            f"(`optax.incremental_update`, the optax column) takes {span(vs_tree, times)} as long"
        )
        vs_torch = [r["torch_over_lucid_fx"] for r in ema if r["torch_over_lucid_fx"]]
        if vs_torch:
            text += f", and torch's `AveragedModel` {span(vs_torch, times)}"
        out.append(text + ", over " + ", ".join(r["case"].removeprefix("EMA update, ") for r in ema)
                   + ".")
    return out


def render(data: dict[str, Any], source: str) -> str:
    about = data["machine"]
    settings = data["settings"]
    rows = data["rows"]
    total = sum(data["case_seconds"].values())
    mode = ("`--quick` (small sizes, few repetitions: a smoke run, not a measurement)"
            if settings["quick"] else "the full run (the default sizes)")
    memory = about.get("memory_bytes")
    load = about.get("load_average")
    parts = [
        "# Performance",
        "",
        (f"<!-- Generated by `python docs/gen_performance.py` from `{source}`. Do not edit: "
        "rerun the benchmark and the generator. -->"),
        "",
        ("An optimizer step is memory traffic. Per element, RMSprop reads θ, g and v (plus ḡ and "
        "b when it uses them) and writes θ and v (plus ḡ and b): 20 bytes per element in float32 "
        "for the plain step, 36 for centered + momentum. The limit is the machine's memory "
        "bandwidth, measured in the same process with an in-place `p - c·g` (the *triad*, 12 "
        "bytes per element). With many small tensors the cost is something else: the per-array "
        "dispatch at the `jax.jit` boundary. Fewer, larger buffers are faster."),
        "",
        ("`benchmarks/run.py` times lucid_fx, optax (`optax.rmsprop(..., eps_in_sqrt=False)`, the "
        "same math) and torch (`torch.optim.RMSprop(foreach=True)`) in one process, interleaved: "
        "each repetition runs every contender once, in a rotating order, and the table shows "
        "medians. Compare ratios, which are measured under the same conditions, rather than "
        "absolute times. Before timing, the run checks that the three libraries agree after one "
        "step."),
        "",
        "## The run behind this page",
        "",
        (f"- **Source:** `{source}`, written by `python benchmarks/run.py "
         f"{'--quick ' if settings['quick'] else ''}--json {source}`: "
        f"{mode}, {settings['reps']} repetitions per contender, "
        f"{len(data['case_seconds'])} cases in {total / 60:.1f} minutes."),
        f"- **Machine:** {about['cpu']}, {about['cores']} cores"
        + (f", {memory / 2**30:.0f} GiB RAM" if memory else "")
        + f"; Python {about['python']}, JAX {about['jax']} on `{about['jax_device']}`, "
        f"optax {about['optax']}, torch {about['torch']} ({about['torch_threads']} threads), "
        f"lucid_fx {about['lucid_fx']}."
        + (f" Load average when the run started: {load[0]:.2f}." if load else ""),
        ("- The machine is shared: other jobs can run during a case, which moves absolute times "
        "a lot and ratios less. Rerun with a higher `--reps` when a ratio matters."),
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        "How to read the table:",
        "",
        ("- **Ratios.** Above 1, the other library takes that many times longer (or uses that much "
        "more memory) than lucid_fx."),
        ("- **BW eff.** The fewest bytes a step must move (in the case name), divided by the time "
        "and by the bandwidth of the triad timed alongside."),
        ("- **XLA loops.** What `jax.jit` compiled for the step: the loops over the tensor and the "
        "bytes they move per element, from XLA's own cost analysis."),
        "",
        "## What the numbers say",
        "",
        *findings(rows, about["jax_device"].startswith("cpu")),
        "",
    ]
    for name, text in data.get("sections", {}).items():
        title = {"zero1": "ZeRO-1 state sharding (`benchmarks/zero1.py`)"}.get(name, name)
        parts += [f"## {title}", ""]
        if name == "zero1":
            parts += [
                ("Replicated optimizer state against ZeRO-1 (`lucid_fx.sharding.zero1`) on 8 "
                "simulated CPU devices of this one machine. The memory ratio is exact (1/8 of "
                "every buffer plus the replicated step count); the step-time ratio says little "
                "about an accelerator, since simulated devices share the same cores and memory "
                "and the all-gather is a plain copy. See [Scaling out](scaling.md)."),
                "",
            ]
        parts += ["```text", text.rstrip(), "```", ""]
    parts += [
        "## Reproduce",
        "",
        "```bash",
        'pip install -e ".[bench]"                # optax, torch, psutil',
        "python benchmarks/run.py                 # every case at full size",
        "python benchmarks/run.py --quick         # small sizes: a smoke run",
        "python benchmarks/run.py --cases large,memory --reps 31 --json results.json --verbose",
        f"python benchmarks/run.py --json {source} && python docs/gen_performance.py",
        "```",
        "",
        "The cases are " + ", ".join(f"`{name}`" for name in data["case_seconds"]) + ". `--json` "
        "writes every figure with the raw samples, first-call (compile) times, XLA's loop counts "
        "and bytes, and the machine description. The `memory` case runs each library in a fresh "
        "process (`benchmarks/memory.py`) so that the peak RSS belongs to one library alone; "
        "`zero1` runs `benchmarks/zero1.py` in a child process on 8 simulated devices.",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if --out differs from what the JSON gives")
    args = parser.parse_args(argv)
    path = args.json.resolve()
    source = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    page = render(json.loads(path.read_text()), source)
    if args.check:
        if not args.out.exists() or args.out.read_text() != page:
            print(f"{args.out} is out of date: run python docs/gen_performance.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
