"""Every optimizer of the table against torch's, in a whole training loop: each side trains
the same small MLP from the same start on the same batches with its own autodiff
(``fx.backward`` in a closure here, ``loss.backward()`` there), so the stateful loop is
compared, not only the update rule (tests/test_family.py compares that on given
gradients, for every flag combination). The richest configuration (every buffer on),
descending.
float32 in this process, float64 under ``jax.enable_x64(True)``.

Not compared: complex parameters, whose gradient convention tests/test_autodiff.py checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, Row, one_torch_thread, tiered, torch_default_dtype
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx._src.core import schema

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

# As max_rel_error (|a - b| / max(1, |b|)) over every step. float32: two autodiff engines
# round the gradient differently and the closed loop carries the difference on for STEPS
# steps (RMSprop measured <= 1e-5 at 15 steps, through 1/sqrt(v)).
RTOL = {np.float32: 5e-5, np.float64: 1e-12}  # float64: rounding only (measured 1e-14)
STEPS = 15


@dataclasses.dataclass
class Problem:
    """A small regression MLP: initial weights and STEPS batches, as NumPy arrays."""

    weights: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, np.ndarray]]


def make_problem(dtype: Any, row: Row, seed: int = 0) -> Problem:
    """The biases are vectors, or (1, n) rows for an optimizer of matrices (Muon): they
    broadcast alike."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((3, 8)) * 0.5,
        "b1": rng.standard_normal(row.shape(8)) * 0.1,
        "w2": rng.standard_normal((8, 1)) * 0.5,
        "b2": np.zeros(row.shape(1)),
    }
    batches = []
    for _ in range(STEPS):
        x = rng.standard_normal((16, 3))
        batches.append((x, np.sin(x.sum(axis=1, keepdims=True))))
    return Problem({k: np.asarray(v, dtype) for k, v in weights.items()},
                   [(np.asarray(x, dtype), np.asarray(y, dtype)) for x, y in batches])


def mlp_loss(m: dict[str, Any], x: Any, y: Any, tanh: Callable[[Any], Any]) -> Any:
    """The same formula for both libraries; ``tanh`` is jnp's or torch's."""
    return ((tanh(x @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"] - y) ** 2).mean()


def jax_loss(m: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return mlp_loss(m, x, y, jnp.tanh)


def compare(name: str, dtype: Any) -> dict[str, float]:
    """Trains with both libraries; returns the max error per quantity over all steps."""
    row = ROWS[name]
    config = dict(row.grid[row.richest])
    if "maximize" in config:
        config["maximize"] = False  # training: down the loss
    problem = make_problem(dtype, row)
    model = {k: fx.Parameter(v) for k, v in problem.weights.items()}
    names = sorted(model)  # fx.parameters order for a dict: sorted keys
    optimizer = row.stateful(fx.parameters(model), **config)
    errors = {"params": 0.0, "loss": 0.0}
    with one_torch_thread(torch, row), torch_default_dtype(torch, dtype):
        theirs = {k: torch.nn.Parameter(torch.from_numpy(problem.weights[k].copy())) for k in names}
        torch_optimizer = row.torch_optimizer(torch, [theirs[k] for k in names], config)
        for x, y in problem.batches:
            def closure(x: np.ndarray = x, y: np.ndarray = y) -> jax.Array:
                optimizer.zero_grad()
                return fx.backward(jax_loss, model, x, y)

            def torch_closure(x: np.ndarray = x, y: np.ndarray = y) -> Any:
                torch_optimizer.zero_grad()
                torch_loss = mlp_loss(theirs, torch.from_numpy(x), torch.from_numpy(y), torch.tanh)
                torch_loss.backward()
                return torch_loss

            loss, torch_loss = optimizer.step(closure), torch_optimizer.step(torch_closure)
            errors["loss"] = max(errors["loss"], max_rel_error(loss, torch_loss.item()))
            for k in names:
                errors["params"] = max(errors["params"], max_rel_error(
                    model[k].value, theirs[k].detach().numpy()))
    fields = schema.of(row.factory).fields
    for k in names:
        ours, state = optimizer.state[model[k]], torch_optimizer.state[theirs[k]]
        assert {key for key in ours if fields[key].torch_key} == set(state)
        assert int(ours["step"]) == STEPS == int(state.get("step", STEPS))
        for key in set(state) - {"step"}:
            expected = state[key].numpy() * row.torch_scale(key, config)
            errors[key] = max(errors.get(key, 0.0), max_rel_error(ours[key], expected))
    return errors


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("name", tiered(ROWS))
def test_a_training_loop_matches_torchs(name: str, dtype: Any) -> None:
    with jax.enable_x64(dtype == np.float64):
        errors = compare(name, dtype)
    assert max(errors.values()) <= RTOL[dtype], errors
