"""One training script for one device, N devices or N hosts: lucid_fx on a mesh.

An MLP learns a random teacher MLP with ``fx.rmsprop``. Every array lives on a
``jax.sharding.Mesh`` over all devices of all processes; the batch is split over
its ``data`` axis. Two layouts:

- ``--layout fsdp`` (default): parameters split too, and the optimizer state
  follows them: each device holds 1/N of both; XLA gathers weights as needed.
- ``--layout zero1``: parameters replicated (plain data parallelism); only the
  optimizer state is split, by ``lucid_fx.sharding.zero1``.

Run it (the same command on every host, only ``--process-id`` differs)::

    python examples/distributed.py                                   # one device
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/distributed.py
    # two processes with two CPU devices each, here on one machine; on real hosts
    # use host 0's address, and leave XLA_FLAGS out on GPUs and TPUs:
    export XLA_FLAGS=--xla_force_host_platform_device_count=2
    python examples/distributed.py --coordinator 127.0.0.1:29500 --num-processes 2 --process-id 0 &
    python examples/distributed.py --coordinator 127.0.0.1:29500 --num-processes 2 --process-id 1

Process 0 prints the device count, the optimizer state each device holds and
the loss; the numbers are the same for every device count, up to rounding.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import lucid_fx as fx
from lucid_fx.sharding import bytes_per_device, split_sharding, zero1

WIDTHS = (32, 128, 128, 8)  # every dimension splits over 1, 2, 4, 8 or 16 devices
EXAMPLES = 2048


def init_mlp(rng: np.random.Generator, widths: tuple[int, ...]) -> dict[str, np.ndarray]:
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        params[f"w{i}"] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    return params


def mlp(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    layers = len(params) // 2
    for i in range(layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        x = jnp.tanh(x) if i < layers - 1 else x
    return x


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((mlp(params, x) - y) ** 2)


def main(argv: list[str] | None = None) -> float:
    """Trains as the command line ``argv`` says; returns the final loss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=["fsdp", "zero1"], default="fsdp")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="30 steps, for tests")
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-host runs)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))

    # Every process makes the same data and initial weights from the same seed, and
    # hands JAX the slices its own devices hold. (With real data, each process would
    # load only its part: jax.make_array_from_process_local_data.)
    rng = np.random.default_rng(0)
    teacher = init_mlp(rng, WIDTHS)
    x = rng.standard_normal((EXAMPLES, WIDTHS[0])).astype(np.float32)
    y = np.asarray(mlp(teacher, x))
    host_params = init_mlp(rng, WIDTHS)

    def place(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    batch = NamedSharding(mesh, PartitionSpec("data"))
    x, y = place(x, batch), place(y, batch)
    tx = fx.rmsprop(lr=1e-3)
    if args.layout == "fsdp":
        layout = split_sharding(host_params, mesh)  # each weight split over the devices
    else:
        layout = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), host_params)
        tx = zero1(tx, mesh)
    params = {k: place(v, layout[k]) for k, v in host_params.items()}
    state = tx.init(params)  # the state follows the parameters (fsdp) or is split (zero1)

    # Bounded dispatch: at most two steps queued ahead of this loop. Unbounded, a
    # long run queues hundreds of steps that hold collectives and can deadlock
    # the devices' threads (docs: "Scaling out", the in-flight rule).
    @fx.limit_in_flight
    @jax.jit
    def train_step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return fx.apply_updates(params, updates), state, loss

    steps = 30 if args.smoke else args.steps
    losses = []
    for _ in range(steps):
        params, state, loss = train_step(params, state, x, y)
        losses.append(loss)  # a replicated scalar: every process can read it

    if jax.process_index() == 0:
        held = max(bytes_per_device(state).values())
        total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        print(f"devices: {jax.device_count()} in {jax.process_count()} process(es), "
              f"layout: {args.layout}")
        print(f"optimizer state per device: {held} bytes of {total}")
        print(f"final loss: {float(losses[-1]):.6f} (from {float(losses[0]):.6f})")
    if args.coordinator:
        jax.distributed.shutdown()
    return float(losses[-1])


if __name__ == "__main__":
    main()
