"""Exact resume: save at step k, restore in a fresh process, continue — bit for bit.

For every configuration, this process trains to step ``SAVE_AT``, saves, and keeps
going to ``SAVE_AT + CONTINUE`` (the uninterrupted run). One child interpreter then
restores every checkpoint and continues the same number of steps. The stateful API
saves ``optimizer.state_dict()`` with pickle; the functional state is saved through
orbax and through plain ``np.savez`` of its leaves. Every parameter and every buffer
of the continued run must have the same bytes as the uninterrupted one.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from optimizers_under_test import ROWS

import lucid_fx as fx

SAVE_AT, CONTINUE = 3, 4
# RMSprop's flags one by one, the two buffers together, and every buffer with the
# skipped-step counter (its row's grid).
GRID = ROWS["rmsprop"].grid
CONFIGS: dict[str, dict[str, Any]] = {
    **{label: GRID[label] for label in ("defaults", "momentum=0.9", "centered=True",
                                        "momentum=0.9,centered=True", "weight_decay=0.1")},
    "everything+skip_nonfinite": {**GRID["momentum=0.9,centered=True,weight_decay=0.1"],
                                  "skip_nonfinite": True},
}
FORMATS = ("stateful-pickle", "functional-orbax", "functional-npz")


def batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Step t's data: the same in every process."""
    rng = np.random.default_rng(1000 + t)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    return x.astype(np.float32), y.astype(np.float32)


def loss_fn(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.tanh(x @ model["w"] + model["b"]) - y) ** 2)


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}


def bits(tree: Any) -> list[str]:
    """Every leaf as dtype, shape and bytes (hex): equality means bit-identical."""
    return [f"{np.asarray(x).dtype}{np.shape(x)}:{np.asarray(x).tobytes().hex()}"
            for x in jax.tree.leaves(tree)]


# ------------------------------------------------------------------ stateful face


def new_optimizer(config: str, values: dict[str, np.ndarray]) -> tuple[dict[str, Any], fx.RMSprop]:
    model = {name: fx.Parameter(value) for name, value in values.items()}
    optimizer = fx.RMSprop([{"params": [model["w"]]}, {"params": [model["b"]], "lr": 0.005}],
                           **CONFIGS[config])
    return model, optimizer


def stateful_steps(model: dict[str, Any], optimizer: fx.RMSprop, first: int, count: int) -> None:
    for t in range(first, first + count):
        optimizer.zero_grad()
        fx.backward(loss_fn, model, *batch(t))
        optimizer.step()


def stateful_bits(model: dict[str, Any], optimizer: fx.RMSprop) -> list[str]:
    return bits([{k: p.value for k, p in model.items()}, optimizer.state_dict()["state"]])


# ------------------------------------------------------------------ functional face


def functional_problem(config: str) -> tuple[fx.GradientTransformation, Any]:
    tx = fx.rmsprop(**CONFIGS[config])

    @jax.jit
    def train_step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return fx.apply_updates(params, updates), state

    return tx, train_step


def functional_steps(train_step: Any, params: Any, state: Any, first: int, count: int) -> Any:
    for t in range(first, first + count):
        params, state = train_step(params, state, *batch(t))
    return params, state


def _target(config: str) -> Any:
    tx, _ = functional_problem(config)
    params = jax.tree.map(jnp.asarray, initial_params())
    return jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)


def restore(fmt: str, config: str, directory: Path) -> tuple[Any, ...]:
    """The checkpoint of ``fmt`` and ``config``, as (params, state) or (model, optimizer)."""
    if fmt == "stateful-pickle":
        with open(directory / f"{config}.pkl", "rb") as f:
            saved = pickle.load(f)
        model, optimizer = new_optimizer(config, saved["values"])
        optimizer.load_state_dict(saved["optimizer"])
        return model, optimizer
    target = _target(config)
    if fmt == "functional-orbax":
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory / f"{config}-orbax", target)
    else:
        with np.load(directory / f"{config}.npz") as arrays:
            leaves = [jnp.asarray(arrays[f"arr_{i}"]) for i in range(len(arrays.files))]
        restored = jax.tree.unflatten(jax.tree.structure(target), leaves)
    return restored["params"], restored["opt_state"]


def continue_from_checkpoints(directory: str) -> dict[str, Any]:
    """What the child process runs: restore every checkpoint, continue, report bits."""
    out: dict[str, Any] = {}
    for config in CONFIGS:
        for fmt in FORMATS:
            first, second = restore(fmt, config, Path(directory))
            if fmt == "stateful-pickle":
                steps = sorted({int(e["step"]) for e in second.state_dict()["state"].values()})
                stateful_steps(first, second, SAVE_AT, CONTINUE)
                out[f"{fmt}/{config}"] = {
                    "restored_steps": steps, "bits": stateful_bits(first, second)}
            else:
                steps = [int(second.step)]
                _, train_step = functional_problem(config)
                params, state = functional_steps(train_step, first, second, SAVE_AT, CONTINUE)
                out[f"{fmt}/{config}"] = {"restored_steps": steps, "bits": bits([params, state])}
    # A control: the same continuation without the saved optimizer state must differ,
    # or the comparison above could not see a lost buffer.
    model, _ = restore("stateful-pickle", "momentum=0.9,centered=True", Path(directory))
    fresh_model, fresh_optimizer = new_optimizer(
        "momentum=0.9,centered=True", {k: np.asarray(p.value) for k, p in model.items()})
    stateful_steps(fresh_model, fresh_optimizer, SAVE_AT, CONTINUE)
    out["control/no-state"] = bits({k: p.value for k, p in fresh_model.items()})
    return out


_CHILD = """
import json
from test_resume import continue_from_checkpoints
print(json.dumps(continue_from_checkpoints({directory!r})))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, run_python: Any) -> dict[str, Any]:
    """Saves every checkpoint, records the uninterrupted runs, and runs the child once."""
    directory = tmp_path_factory.mktemp("resume")
    uninterrupted: dict[str, Any] = {}
    for config in CONFIGS:
        model, optimizer = new_optimizer(config, initial_params())
        stateful_steps(model, optimizer, 0, SAVE_AT)
        saved = {"values": {k: np.asarray(p.value) for k, p in model.items()},
                 "optimizer": optimizer.state_dict()}
        with open(directory / f"{config}.pkl", "wb") as f:
            pickle.dump(saved, f)
        stateful_steps(model, optimizer, SAVE_AT, CONTINUE)
        uninterrupted[f"stateful-pickle/{config}"] = {
            "saved": saved["optimizer"], "bits": stateful_bits(model, optimizer)}

        tx, train_step = functional_problem(config)
        params = jax.tree.map(jnp.asarray, initial_params())
        params, state = functional_steps(train_step, params, tx.init(params), 0, SAVE_AT)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory / f"{config}-orbax", {"params": params, "opt_state": state})
        np.savez(directory / f"{config}.npz",
                 *[np.asarray(x) for x in jax.tree.leaves({"params": params, "opt_state": state})])
        saved_state = state
        params, state = functional_steps(train_step, params, state, SAVE_AT, CONTINUE)
        for fmt in FORMATS[1:]:
            uninterrupted[f"{fmt}/{config}"] = {"saved": saved_state, "bits": bits([params, state])}
    return {"parent": uninterrupted, "child": run_python(_CHILD.format(directory=str(directory)))}


@pytest.mark.slow  # the checkpoints are read back in a child process
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_resumed_run_is_bit_identical(runs: dict[str, Any], fmt: str, config: str) -> None:
    key = f"{fmt}/{config}"
    parent, child = runs["parent"][key], runs["child"][key]
    assert child["restored_steps"] == [SAVE_AT]
    assert child["bits"] == parent["bits"]


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_checkpoints_hold_the_buffers_of_their_configuration(
    runs: dict[str, Any], config: str
) -> None:
    """What was saved is the whole state: every buffer the configuration uses, none other."""
    hyper = CONFIGS[config]
    expected = {"step", "square_avg"}
    expected |= {"grad_avg"} if hyper.get("centered") else set()
    expected |= {"momentum_buffer"} if hyper.get("momentum") else set()
    expected |= {"skipped"} if hyper.get("skip_nonfinite") else set()
    saved = runs["parent"][f"stateful-pickle/{config}"]["saved"]
    assert [set(entry) for entry in saved["state"].values()] == [expected, expected]
    state = runs["parent"][f"functional-npz/{config}"]["saved"]
    assert {k for k, v in state._asdict().items() if v is not None} == expected


@pytest.mark.slow
def test_control_without_the_saved_state_differs(runs: dict[str, Any]) -> None:
    control = runs["child"]["control/no-state"]
    resumed = runs["child"]["stateful-pickle/momentum=0.9,centered=True"]["bits"]
    assert control != resumed[: len(control)]


def test_state_dict_survives_pickle_unchanged() -> None:
    model, optimizer = new_optimizer("everything+skip_nonfinite", initial_params())
    stateful_steps(model, optimizer, 0, 2)
    sd = optimizer.state_dict()
    again = pickle.loads(pickle.dumps(sd))
    assert json.dumps(bits(again["state"])) == json.dumps(bits(sd["state"]))
    assert again["param_groups"] == sd["param_groups"]
