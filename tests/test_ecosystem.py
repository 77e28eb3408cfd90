"""lucid_fx inside the JAX ecosystem: optax combinators, Flax NNX, Equinox, vmap, orbax.

Each test runs a real training loop through the other library and checks the
parameters against the float64 NumPy reference (``tests/reference.py``), or, where
the other library does the bookkeeping, against the same run done by hand.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from reference import RMSpropReference, max_rel_error, reference_run

import lucid_fx as fx

# float32 code against the float64 reference, over a handful of steps.
TOL_F32 = 1e-5
# Two float32 runs of the same math that differ in bookkeeping only (e.g. a running
# mean of accumulated gradients instead of a plain mean).
TOL_F32_ACCUMULATED = 1e-5


def _problem(seed: int = 0, steps: int = 4) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """Float32 parameters and a fixed sequence of gradients (norm > 1, so clipping bites)."""
    rng = np.random.default_rng(seed)
    params = {
        "b": rng.normal(size=(4,)).astype(np.float32),
        "w": rng.normal(size=(3, 4)).astype(np.float32),
    }
    grads = [
        {"b": rng.normal(size=(4,)).astype(np.float32), "w": rng.normal(size=(3, 4)).astype(np.float32)}
        for _ in range(steps)
    ]
    return params, grads


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _run(tx: Any, params: Any, grads_seq: list[Any]) -> tuple[list[Any], Any]:
    """Applies ``tx`` to ``grads_seq`` in a jitted step; returns (params after each step, state)."""

    @jax.jit
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    p, state = params, tx.init(params)
    history = []
    for g in grads_seq:
        p, state = step(p, state, g)
        history.append(p)
    return history, state


def _assert_close_to_reference(actual: Any, expected: list[np.ndarray], tol: float = TOL_F32) -> None:
    actual_leaves = _leaves(actual)
    assert len(actual_leaves) == len(expected)
    for a, e in zip(actual_leaves, expected):
        assert max_rel_error(a, e) < tol


# --- optax combinators around lucid_fx, and optax transforms inside lucid_fx ---


def test_fx_rmsprop_inside_optax_chain_matches_reference_on_clipped_gradients() -> None:
    params, grads = _problem()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), fx.rmsprop(lr=0.05, momentum=0.9, centered=True)
    )
    history, _ = _run(tx, params, grads)

    def clipped(g: dict[str, np.ndarray]) -> list[np.ndarray]:
        leaves = [x.astype(np.float64) for x in jax.tree.leaves(g)]
        norm = np.sqrt(sum(np.sum(x**2) for x in leaves))
        assert norm > 1.0  # the clip is exercised
        return [x / norm for x in leaves]

    expected, _ = reference_run(
        jax.tree.leaves(params), [clipped(g) for g in grads], lr=0.05, momentum=0.9, centered=True
    )
    for got, want in zip(history, expected):
        _assert_close_to_reference(got, want)


def test_optax_weight_decay_inside_fx_chain_equals_coupled_weight_decay() -> None:
    params, grads = _problem(seed=1)
    tx = fx.chain(optax.add_decayed_weights(0.1), fx.rmsprop(lr=0.05))
    history, _ = _run(tx, params, grads)
    expected, _ = reference_run(
        jax.tree.leaves(params), [jax.tree.leaves(g) for g in grads], lr=0.05, weight_decay=0.1
    )
    for got, want in zip(history, expected):
        _assert_close_to_reference(got, want)


def test_optax_masked_applies_rmsprop_to_masked_leaves_only() -> None:
    params, grads = _problem(seed=2)
    tx = optax.masked(fx.rmsprop(lr=0.05, momentum=0.5), {"b": False, "w": True})
    history, state = _run(tx, params, grads)
    expected_w, _ = reference_run([params["w"]], [[g["w"]] for g in grads], lr=0.05, momentum=0.5)
    for got, want in zip(history, expected_w):
        assert max_rel_error(got["w"], want[0]) < TOL_F32
    # optax.masked passes unmasked updates through untransformed: b moves by the raw sum.
    np.testing.assert_allclose(
        history[-1]["b"], params["b"] + sum(g["b"] for g in grads), rtol=TOL_F32
    )
    assert isinstance(state.inner_state.square_avg["b"], optax.MaskedNode)
    assert state.inner_state.square_avg["w"].shape == (3, 4)


def test_optax_multisteps_applies_rmsprop_to_mean_of_each_k_gradients() -> None:
    k = 3
    params, grads = _problem(seed=3, steps=2 * k)
    tx = optax.MultiSteps(fx.rmsprop(lr=0.05, centered=True), every_k_schedule=k)
    history, state = _run(tx, params, grads)
    mean_grads = [
        [np.mean([jax.tree.leaves(g)[i] for g in grads[j : j + k]], axis=0) for i in range(2)]
        for j in range(0, 2 * k, k)
    ]
    expected, _ = reference_run(jax.tree.leaves(params), mean_grads, lr=0.05, centered=True)
    for mini in (0, 1):  # accumulating: parameters untouched
        np.testing.assert_array_equal(history[mini]["w"], params["w"])
    _assert_close_to_reference(history[k - 1], expected[0], TOL_F32_ACCUMULATED)
    np.testing.assert_array_equal(history[k]["w"], history[k - 1]["w"])
    _assert_close_to_reference(history[-1], expected[1], TOL_F32_ACCUMULATED)
    assert int(state.gradient_step) == 2
    assert int(state.inner_opt_state.step) == 2


def test_optax_apply_if_finite_skips_a_nan_step_and_keeps_rmsprop_state() -> None:
    params, grads = _problem(seed=4, steps=4)
    bad = {"b": grads[1]["b"].copy(), "w": grads[1]["w"]}
    bad["b"][0] = np.nan
    tx = optax.apply_if_finite(fx.rmsprop(lr=0.05, momentum=0.9), max_consecutive_errors=3)
    history, state = _run(tx, params, [grads[0], bad, grads[2], grads[3]])

    for leaf in ("b", "w"):
        np.testing.assert_array_equal(history[1][leaf], history[0][leaf])
    kept = [grads[0], grads[2], grads[3]]
    expected, _ = reference_run(
        jax.tree.leaves(params), [jax.tree.leaves(g) for g in kept], lr=0.05, momentum=0.9
    )
    _assert_close_to_reference(history[-1], expected[-1])
    assert int(state.inner_state.step) == 3  # the NaN step never reached rmsprop
    assert int(state.total_notfinite) == 1
    assert int(state.notfinite_count) == 0


def test_optax_inject_hyperparams_changes_lr_between_steps_without_recompiling() -> None:
    params, grads = _problem(seed=5, steps=4)
    lrs = [0.1, 0.05, 0.01, 0.2]
    tx = optax.inject_hyperparams(fx.rmsprop)(lr=lrs[0], momentum=0.9)
    traces = 0

    @jax.jit
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        nonlocal traces
        traces += 1
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    p, state = params, tx.init(params)
    for lr, g in zip(lrs, grads):
        state.hyperparams["lr"] = jnp.asarray(lr, state.hyperparams["lr"].dtype)
        p, state = step(p, state, g)

    assert traces == 1
    # η sits inside the momentum buffer, so the reference takes one lr per step.
    expected, _ = reference_run(
        jax.tree.leaves(params), [jax.tree.leaves(g) for g in grads], lr=lrs, momentum=0.9
    )
    _assert_close_to_reference(p, expected[-1])


# --- Flax NNX and Equinox ---


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def _regression_data(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.sin(x.sum(1, keepdims=True)))


def test_flax_nnx_optimizer_matches_a_plain_functional_loop_step_for_step() -> None:
    x, y = _regression_data()
    model = _Net(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(jnp.copy, params)  # the functional run's own copy
    tx = fx.rmsprop(lr=0.005, momentum=0.9, centered=True)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model: _Net, optimizer: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    def functional_loss(p: Any) -> jax.Array:
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

    @jax.jit
    def functional_step(p: Any, s: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(functional_loss)(p)
        updates, s = tx.update(grads, s, p)
        return fx.apply_updates(p, updates), s, loss

    state = tx.init(params)
    losses = []
    for _ in range(5):
        loss = nnx_step(model, optimizer)
        params, state, functional = functional_step(params, state)
        assert float(loss) == float(functional)
        for a, b in zip(_leaves(nnx.state(model, nnx.Param)), _leaves(params)):
            np.testing.assert_array_equal(a, b)
        losses.append(float(loss))
    assert int(optimizer.opt_state.step[...]) == 5
    assert losses[-1] < losses[0]


def test_equinox_filter_jit_loop_matches_reference() -> None:
    x, y = _regression_data(seed=1)
    model = eqx.nn.MLP(3, 1, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    tx = fx.rmsprop(lr=0.02, momentum=0.5)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    def loss_fn(m: eqx.nn.MLP) -> jax.Array:
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    @eqx.filter_jit
    def step(model: eqx.nn.MLP, opt_state: Any) -> tuple[eqx.nn.MLP, Any, Any]:
        grads = eqx.filter_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, grads

    reference = RMSpropReference(_leaves(eqx.filter(model, eqx.is_array)), lr=0.02, momentum=0.5)
    for _ in range(5):
        model, opt_state, grads = step(model, opt_state)
        expected = reference.update(_leaves(grads))
    _assert_close_to_reference(eqx.filter(model, eqx.is_array), expected)
    assert callable(model.activation)  # non-array leaves survive the loop


def test_vmap_over_independent_problems_each_matches_its_own_reference() -> None:
    problems = [_problem(seed=10 + i) for i in range(3)]
    lrs = np.array([0.01, 0.05, 0.1], np.float32)
    def stack(trees: list[Any]) -> Any:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    params = stack([p for p, _ in problems])
    grads = stack([stack(g) for _, g in problems])  # (problem, step, ...)

    def train(lr: jax.Array, p: Any, gs: Any) -> Any:
        tx = fx.rmsprop(lr=lr, momentum=0.9, centered=True)

        def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], None]:
            p, s = carry
            updates, s = tx.update(g, s, p)
            return (fx.apply_updates(p, updates), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), gs)
        return p

    final = jax.jit(jax.vmap(train))(jnp.asarray(lrs), params, grads)
    for i, (p0, gs) in enumerate(problems):
        expected, _ = reference_run(
            jax.tree.leaves(p0), [jax.tree.leaves(g) for g in gs],
            lr=float(lrs[i]), momentum=0.9, centered=True,
        )
        own = jax.tree.map(operator.itemgetter(i), final)
        _assert_close_to_reference(own, expected[-1])


# --- orbax: save, restore in a fresh process, continue bit-identically ---


def _checkpoint_problem() -> tuple[fx.GradientTransformation, Any, Any]:
    """(tx, params, jitted train step) shared by this process and the restoring child."""
    x, y = _regression_data(seed=2)
    rng = np.random.default_rng(7)
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 1)).astype(np.float32)),
        "b": jnp.zeros((1,), jnp.float32),
    }
    tx = fx.rmsprop(lr=0.01, alpha=0.9, weight_decay=1e-3, momentum=0.9, centered=True)

    @jax.jit
    def train_step(p: Any, s: Any) -> tuple[Any, Any]:
        grads = jax.grad(lambda p: jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2))(p)
        updates, s = tx.update(grads, s, p)
        return fx.apply_updates(p, updates), s

    return tx, params, train_step


def _bits(tree: Any) -> list[list[str]]:
    """Every leaf as a list of exact hex floats (so JSON carries the bits)."""
    return [[float(v).hex() for v in np.asarray(x).ravel()] for x in jax.tree.leaves(tree)]


_RESTORE_AND_CONTINUE = """
import json, sys
import jax
import orbax.checkpoint as ocp
from test_ecosystem import _bits, _checkpoint_problem
import lucid_fx as fx

tx, params, train_step = _checkpoint_problem()
target = jax.eval_shape(lambda: {{"params": params, "opt_state": tx.init(params)}})
with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore({path!r}, target)
params, state = restored["params"], restored["opt_state"]
assert isinstance(state, fx.RMSpropState), type(state)
restored_step = int(state.step)
for _ in range({steps}):
    params, state = train_step(params, state)
print(json.dumps({{"restored_step": restored_step, "params": _bits(params), "state": _bits(state)}}))
"""


@pytest.mark.slow  # a child process
def test_orbax_checkpoint_restored_in_fresh_process_continues_bit_identically(
    tmp_path: Path, run_python: Any
) -> None:
    tx, params, train_step = _checkpoint_problem()
    state = tx.init(params)
    assert state.grad_avg is not None and state.momentum_buffer is not None  # all buffers saved
    for _ in range(4):
        params, state = train_step(params, state)
    path = tmp_path / "checkpoint"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {"params": params, "opt_state": state})
    for _ in range(5):  # the uninterrupted run
        params, state = train_step(params, state)

    child = run_python(_RESTORE_AND_CONTINUE.format(path=str(path), steps=5))

    assert child["restored_step"] == 4
    assert child["params"] == _bits(params)
    assert child["state"] == _bits(state)
