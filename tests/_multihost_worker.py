"""One process of the two-process training in ``test_multihost.py``.

Run as ``python _multihost_worker.py OUT_DIR PROCESS_ID NUM_PROCESSES PORT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``: it joins the others on
127.0.0.1:PORT, trains a small MLP FSDP-style (parameters, optimizer state and
batch all split over one global mesh axis) with ``fx.rmsprop`` and with
``fx.RMSprop``, then ZeRO-1-style (parameters replicated, ``fx.rmsprop``'s state split
by ``lucid_fx.sharding.zero1``), and writes what the test checks to
``OUT_DIR/process<ID>.npz``.

Imported (not run), it provides the same training on one device: the test's
single-process reference.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lucid_fx as fx

STEPS = 6
HYPER = {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 1e-3}
BATCH, IN, HIDDEN, OUT = 32, 8, 16, 4  # every first dimension divides by 4 devices


def problem() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Initial MLP parameters and the whole batch (the same in every process)."""
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((IN, HIDDEN)).astype(np.float32) / np.sqrt(IN),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": rng.standard_normal((HIDDEN, OUT)).astype(np.float32) / np.sqrt(HIDDEN),
        "b2": np.zeros(OUT, np.float32),
    }
    x = rng.standard_normal((BATCH, IN)).astype(np.float32)
    y = np.sin(x[:, :OUT]).astype(np.float32)
    return params, x, y


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def train_functional(
    params: dict[str, jax.Array], x: jax.Array, y: jax.Array,
    tx: fx.GradientTransformation | None = None,
) -> tuple[Any, Any]:
    """``STEPS`` steps of ``tx`` (default ``fx.rmsprop(**HYPER)``); returns (params, state)."""
    tx = fx.rmsprop(**HYPER) if tx is None else tx

    @jax.jit
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return fx.apply_updates(params, updates), state

    state = jax.jit(tx.init)(params)
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
    return params, state


def train_stateful(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
    """``STEPS`` steps of ``fx.RMSprop``; returns (model of Parameters, optimizer)."""
    model = {k: fx.Parameter(v) for k, v in params.items()}
    optimizer = fx.RMSprop(fx.parameters(model), **HYPER)
    for _ in range(STEPS):
        optimizer.zero_grad()
        fx.backward(loss_fn, model, x, y)
        optimizer.step()
    return model, optimizer


def whole_copies(like: dict[str, jax.Array]) -> list[str]:
    """Live arrays of a parameter's shape that are not split like it: hidden full copies."""
    gc.collect()  # temporaries of earlier steps are not copies anyone keeps
    split = {(p.shape, p.dtype): p.sharding for p in like.values()}
    return [f"{x.shape} {x.sharding}" for x in jax.live_arrays()
            if (x.shape, x.dtype) in split
            and not x.sharding.is_equivalent_to(split[(x.shape, x.dtype)], x.ndim)]


def state_dict_round_trip(model: Any, optimizer: Any, x: jax.Array, y: jax.Array) -> dict[str, Any]:
    """Saves the optimizer on every process, loads it into a fresh one, steps both once."""
    saved = optimizer.state_dict()
    results: dict[str, Any] = {
        f"state_dict/{index}/{key}": np.asarray(value)
        for index, entry in saved["state"].items() for key, value in entry.items()
    }
    restored = {k: fx.Parameter(p.value) for k, p in model.items()}
    fresh = fx.RMSprop(fx.parameters(restored), **HYPER)
    fresh.load_state_dict(saved)
    results["whole_copies/after_load"] = np.asarray(
        whole_copies({k: p.value for k, p in model.items()}), dtype=str)
    for m, opt in ((model, optimizer), (restored, fresh)):
        opt.zero_grad()
        fx.backward(loss_fn, m, x, y)
        opt.step()
    continued = gathered("", {k: p.value for k, p in model.items()})
    resumed = gathered("", {k: p.value for k, p in restored.items()})
    for key in model:
        results[f"resumed_equal/{key}"] = np.asarray(
            np.array_equal(continued[f"/{key}"], resumed[f"/{key}"]))
    return results


def gathered(prefix: str, tree: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """``{prefix/key: the whole array}`` on every process (a collective: all must call it)."""
    from jax.experimental import multihost_utils

    # Copies: a NumPy view would keep the gathered, whole device buffer alive.
    return {f"{prefix}/{key}": np.array(value)
            for key, value in multihost_utils.process_allgather(tree, tiled=True).items()}


def main(out_dir: Path, process_id: int, num_processes: int, port: int) -> None:
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from lucid_fx.sharding import bytes_per_device, zero1

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = f"127.0.0.1:{port}"
    jax.distributed.initialize(
        coordinator_address=address,
        coordinator_bind_address=address,  # loopback only
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=20,
        shutdown_timeout_seconds=20,
    )
    mesh = jax.make_mesh((jax.device_count(),), ("fsdp",), axis_types=(AxisType.Auto,))
    split = NamedSharding(mesh, PartitionSpec("fsdp"))  # first dimension over all devices

    def global_array(host: np.ndarray, sharding: NamedSharding = split) -> jax.Array:
        # Each process supplies only the shards its own devices hold.
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    params0, x, y = problem()
    params = {k: global_array(v) for k, v in params0.items()}
    x, y = global_array(x), global_array(y)
    results: dict[str, Any] = {"devices": np.asarray(jax.device_count())}

    trained, state = train_functional(params, x, y)
    for field in ("square_avg", "grad_avg", "momentum_buffer"):
        for key, buffer in getattr(state, field).items():
            results[f"split_like_param/{field}/{key}"] = np.asarray(
                buffer.sharding.is_equivalent_to(split, buffer.ndim))
    results["whole_copies/functional"] = np.asarray(whole_copies(params), dtype=str)

    model, optimizer = train_stateful(params, x, y)  # .grad is still set: it counts too
    results["whole_copies/stateful"] = np.asarray(whole_copies(params), dtype=str)

    stateful = {k: p.value for k, p in model.items()}
    results.update(gathered("functional", trained))
    results.update(gathered("stateful", stateful))
    try:
        results.update(state_dict_round_trip(model, optimizer, x, y))
    except Exception as error:  # noqa: BLE001 - reported by the test of the round trip
        results["state_dict_error"] = np.asarray(f"{type(error).__name__}: {error}")

    # Last: its replicated parameters are whole copies, which the checks above count.
    replicated = {k: global_array(v, NamedSharding(mesh, PartitionSpec()))
                  for k, v in params0.items()}
    zero1_trained, zero1_state = train_functional(
        replicated, x, y, zero1(fx.rmsprop(**HYPER), mesh, axis="fsdp"))
    results["zero1/state_bytes"] = np.asarray(
        [max(bytes_per_device(zero1_state).values()),
         sum(leaf.nbytes for leaf in jax.tree.leaves(zero1_state))])
    results.update(gathered("zero1", zero1_trained))
    np.savez(out_dir / f"process{process_id}.npz", **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
