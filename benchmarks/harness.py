"""Timing and bookkeeping shared by the benchmark cases.

The machine these numbers come from is usually shared and noisy, so every case
times its contenders *interleaved*: repetition r runs each contender once, in an
order rotated by r, and a contender's figure is the median over repetitions.
Ratios between contenders of one case are therefore measured under the same
conditions, which absolute times are not.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import table

import lucid_fx as fx

torch: Any
try:  # torch is optional: its columns are left empty without it
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None


@dataclass
class Settings:
    """How long to measure: repetitions per contender and the time one repetition aims for."""

    reps: int = 11
    target_s: float = 0.03  # each repetition runs enough steps to last about this long
    quick: bool = False
    verbose: bool = False


@dataclass
class Contender:
    """Something to time: ``run(n)`` performs ``n`` steps and returns once they are done.

    ``run`` must have been called once before timing (compilation, first-step
    allocation), which :func:`contender` does.
    """

    name: str
    run: Callable[[int], None]
    steps: int = 1
    first_call_s: float = 0.0  # the first step: compilation included


def contender(name: str, run: Callable[[int], None], settings: Settings) -> Contender:
    """Warms ``run`` up and picks how many steps one repetition runs."""
    start = time.perf_counter()
    run(1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run(1)
    once = max(time.perf_counter() - start, 1e-7)
    steps = max(1, min(10_000, math.ceil(settings.target_s / once)))
    if settings.verbose:
        print(f"  {name}: first step {first:.2f} s, then {once * 1e3:.3g} ms", file=sys.stderr,
              flush=True)
    return Contender(name, run, steps, first)


def interleave(contenders: list[Contender], settings: Settings) -> dict[str, list[float]]:
    """Seconds per step of each contender, one sample per repetition, round-robin."""
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for rep in range(settings.reps):
        shift = rep % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            start = time.perf_counter()
            c.run(c.steps)
            samples[c.name].append((time.perf_counter() - start) / c.steps)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def timed(runs: dict[str, Callable[[int], None]], settings: Settings) -> dict[str, float]:
    """Median seconds per step of each ``run``, warmed up, then timed interleaved."""
    contenders = [contender(label, run, settings) for label, run in runs.items()]
    times = medians(interleave(contenders, settings))
    del contenders
    gc.collect()  # the contenders' buffers go before the next case allocates its own
    return times


def wait_for_step(optimizer: Any) -> None:
    """Waits until ``optimizer``'s last ``step()`` is done, on its packed buffers.

    Reading each Parameter's ``.value`` would also wait, but first cut every
    Parameter's view out of its pack, one call and one copy each: a cost of the read,
    not of ``step()`` (9 ms a step for the 120 Parameters of the Adafactor case).
    """
    jax.block_until_ready([pack.buffer for group in optimizer._packs for pack in group])


def copy_tree(tree: Any) -> Any:
    """A fresh copy of every array of ``tree``, for a step that donates its input."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def torch_tensors(arrays: list[jax.Array]) -> list[Any]:
    """torch tensors of ``arrays`` (float32 or bfloat16, as each array is)."""
    dtype_of = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.bfloat16): torch.bfloat16}
    return [torch.from_numpy(np.array(a, dtype=np.float32)).to(dtype_of[a.dtype]) for a in arrays]


def jax_loop(step: Callable[..., Any], carry: tuple[Any, ...], *args: Any) -> Callable[[int], None]:
    """``run(n)``: applies ``carry = step(*carry, *args)`` n times, then waits for the result.

    ``step`` is jitted with the carry donated, so each step updates in place.
    """
    box = [carry]

    def run(n: int) -> None:
        c = box[0]
        for _ in range(n):
            c = step(*c, *args)
        box[0] = jax.block_until_ready(c)

    return run


def transform_step(
    tx: Any, apply_updates: Callable[[Any, Any], Any],
    compiler_options: dict[str, Any] | None = None,
) -> jax.stages.Wrapped:
    """The jitted, donated training step ``(params, state, grads) -> (params, state)``,
    compiled with XLA's defaults or with ``compiler_options``."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


def triad_step() -> jax.stages.Wrapped:
    """The bandwidth yardstick: an in-place ``p - c·g`` (reads 8, writes 4 bytes per float32)."""
    return jax.jit(lambda p, g: (p - jnp.float32(0.01) * g,), donate_argnums=0)


def hlo_stats(step: jax.stages.Wrapped, *args: Any, elements: int) -> dict[str, float]:
    """What XLA compiled: loops over the big arrays and bytes accessed per element.

    ``bytes accessed`` is XLA's own cost analysis (operands read plus outputs
    written, summed over the fusions); a fusion over an array of ``elements``
    is one loop over memory.
    """
    compiled = step.lower(*args).compile()
    text = compiled.as_text() or ""
    entry = text[text.index("\nENTRY"):]
    loops = sum(
        1
        for line in entry.splitlines()
        if " fusion(" in line and re.search(rf"\[{elements}\]", line.split("=", 1)[1].split(" ")[1])
    )
    analysis: Any = compiled.cost_analysis()
    cost = analysis[0] if isinstance(analysis, list) else analysis
    return {"loops": loops, "hlo_bytes_per_element": round(cost["bytes accessed"] / elements, 2)}


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "jax_device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "lucid_fx": fx.__version__,
        "optax": _version("optax"),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


@dataclass
class Row:
    """One line of the table: a case, lucid_fx's figure and the competitors'."""

    case: str
    unit: str  # "s" (time), "bytes" (memory)
    lucid_fx: float | None
    optax: float | None = None
    torch: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self, other: str) -> float | None:
        """How many times larger the other library's figure is (> 1: lucid_fx wins)."""
        value = getattr(self, other)
        if value is None or not self.lucid_fx:
            return None
        return value / self.lucid_fx


def as_table_row(row: Row) -> dict[str, Any]:
    """``row`` as :mod:`table` and the JSON take it: its fields and its ratios."""
    return vars(row) | {"optax_over_lucid_fx": row.ratio("optax"),
                        "torch_over_lucid_fx": row.ratio("torch")}


def markdown_table(rows: list[Row]) -> str:
    return table.markdown_table(as_table_row(row) for row in rows)
