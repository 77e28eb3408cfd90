"""ZeRO-1 state sharding against fully replicated state: memory per device and step time.

Data-parallel setting: the parameters are replicated on every device of an
8-device mesh. The optimizer state is either replicated too (``fx.rmsprop`` as
is) or split 8 ways by ``lucid_fx.sharding.zero1``. One step is the compiled
``update`` + ``apply_updates`` with the state donated; the gradients are given
(replicated, as after a data-parallel all-reduce), so only the optimizer is timed.

Run (the device count must be set before jax starts)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/zero1.py

On simulated CPU devices every "device" shares the same cores and memory, so the
step-time ratio says how much arithmetic and traffic each layout costs in total,
not what a real accelerator would see (where the all-gather runs over a link).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import lucid_fx as fx
from lucid_fx.sharding import bytes_per_device, zero1

CONFIGS = {
    "plain (v)": {},
    "centered+momentum (v, g_avg, b)": {"centered": True, "momentum": 0.9},
}


def model_params(layers: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {}
    for i in range(layers):
        params[f"w{i}"] = rng.standard_normal((width, width), dtype=np.float32)
        params[f"b{i}"] = rng.standard_normal(width, dtype=np.float32)
    return params


def interleaved_step_seconds(runs: dict[str, list[Any]], repeats: int) -> dict[str, float]:
    """Best seconds per step of each run, over ``repeats`` steps timed in alternation.

    Alternation makes load from other processes hit every run alike; the best of
    many (as ``timeit`` reports) is the cost of the step itself, least disturbed
    by that load. ``runs[name] = [step, params, grads, state]``.
    """
    for run in runs.values():  # compile and warm up
        step, params, grads, state = run
        run[1], run[3] = jax.block_until_ready(step(params, grads, state))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            step, params, grads, state = run
            start = time.perf_counter()
            run[1], run[3] = jax.block_until_ready(step(params, grads, state))
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    n = jax.device_count()
    if n < 2:
        raise SystemExit(
            "needs several devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, PartitionSpec())
    host = model_params(args.layers, args.width)
    grads = jax.device_put(jax.tree.map(lambda x: 1e-3 * x, host), replicated)
    mib = 2**20
    print(f"{n} devices, {args.layers} x ({args.width}x{args.width} + {args.width}) float32 "
          f"parameters ({sum(x.nbytes for x in host.values()) / mib:.1f} MiB), "
          f"best of {args.repeats} steps")
    header = (f"{'config':34} {'layout':11} {'state MiB/device':>17} {'ratio':>6} "
              f"{'step ms':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name, config in CONFIGS.items():
        runs, held = {}, {}
        for layout in ("replicated", "zero1"):
            tx = fx.rmsprop(lr=1e-3, **config)
            if layout == "zero1":
                tx = zero1(tx, mesh)
            params = jax.device_put(host, replicated)
            state = tx.init(params) if layout == "zero1" else jax.jit(tx.init)(params)
            held[layout] = max(bytes_per_device(state).values())

            def step(params: Any, grads: Any, state: Any, tx: Any = tx) -> tuple[Any, Any]:
                updates, state = tx.update(grads, state, params)
                return fx.apply_updates(params, updates), state

            runs[layout] = [jax.jit(step, donate_argnums=(0, 2)), params, grads, state]
        seconds = interleaved_step_seconds(runs, args.repeats)
        # Same numbers either way (both ran the same steps): zero1 only moves the state.
        np.testing.assert_array_equal(np.asarray(runs["replicated"][1]["w0"]),
                                      np.asarray(runs["zero1"][1]["w0"]))
        for layout in runs:
            print(f"{name:34} {layout:11} {held[layout] / mib:17.2f} "
                  f"{held[layout] / held['replicated']:6.3f} {seconds[layout] * 1e3:9.2f} "
                  f"{seconds[layout] / seconds['replicated']:6.2f}")


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
