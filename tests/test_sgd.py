"""Tests of ``fx.sgd`` and ``fx.SGD`` that are SGD's own (docs/optimizers.md): the first
step's undampened buffer (after a skipped step too), Nesterov with a traced momentum,
lr and momentum written without recompiling, optax, a bfloat16 buffer, and the
functional face under random and traced inputs.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``
(Nesterov's rule too).
"""

from __future__ import annotations

from typing import Any

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from optimizers_under_test import (
    ROWS,
    RTOL_REF_F32,
    Shape,
    leaves64,
    make_tree,
    shape_trees,
    side_by_side,
    tree_error,
)
from reference import max_rel_error, sgd_reference

import lucid_fx as fx
from lucid_fx._src.stateful.steps import compiled_step
from lucid_fx._src.transforms.sgd import sgd

ROW = ROWS["sgd"]
GRID = ROW.grid
RTOL_ONE_STEP_BF16 = 2**-7  # one rounding to bfloat16 (8 significant bits), relative


# ------------------------------------------------------------------ the first-step rule, state


def test_first_step_takes_the_gradient_undampened() -> None:
    tx = sgd(lr=1.0, momentum=0.5, dampening=0.5)
    params = jnp.zeros(1)
    state = tx.init(params)
    u1, state = tx.update(jnp.array([2.0]), state, params)
    assert state.momentum_buffer.tolist() == [2.0] and u1.tolist() == [-2.0]  # b_1 = g
    u2, state = tx.update(jnp.array([4.0]), state, params)
    assert state.momentum_buffer.tolist() == [3.0] and u2.tolist() == [-3.0]  # 0.5·2 + 0.5·4


def test_writing_lr_and_momentum_does_not_recompile() -> None:
    rng = np.random.default_rng(0)
    params = [fx.Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((3, 2), (4,))]
    opt = fx.SGD(params, lr=0.1, momentum=0.9)

    def step() -> None:
        for p in params:
            p.grad = jnp.asarray(rng.standard_normal(p.shape).astype(np.float32))
        opt.step()

    step()
    before = compiled_step("cpu")._cache_size()
    for lr, momentum in ((0.05, 0.8), (0.01, 0.5)):
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lr, momentum
        step()
    assert compiled_step("cpu")._cache_size() == before


# ------------------------------------------------------------------ optax


OPTAX_LABELS = [label for label, c in GRID.items() if c["dampening"] == 0 and not c["maximize"]]


@pytest.fixture(scope="module")
def optax_finals() -> dict[str, tuple[Any, Any]]:
    """Ours and optax's final parameters for each of OPTAX_LABELS (one compilation)."""
    transforms = []
    for label in OPTAX_LABELS:
        config = GRID[label]
        transforms += [sgd(**config), optax.chain(
            optax.add_decayed_weights(config["weight_decay"]),
            optax.sgd(config["lr"], momentum=config["momentum"] or None,
                      nesterov=config["nesterov"]))]
    finals = side_by_side(transforms)
    return {label: (finals[2 * i], finals[2 * i + 1]) for i, label in enumerate(OPTAX_LABELS)}


@pytest.mark.parametrize("label", OPTAX_LABELS)
def test_agrees_with_optax(label: str, optax_finals: dict[str, tuple[Any, Any]]) -> None:
    """optax's sgd is torch's without dampening: its trace starts at 0, so b_1 = g too.

    Two float32 computations of the same formulas: each within RTOL_REF_F32 of exact.
    """
    ours, theirs = optax_finals[label]
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


# ------------------------------------------------------------------ property test


@given(
    shape_tree=shape_trees,
    lr=st.floats(0.0, 1.0),
    momentum=st.sampled_from([0.0, 0.5, 0.99]),
    dampening=st.sampled_from([0.0, 0.3, -0.5]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, momentum: float, dampening: float, weight_decay: float,
    nesterov: bool, maximize: bool, steps: int, seed: int,
) -> None:
    nesterov = nesterov and momentum > 0 and dampening == 0
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, Shape))

    hyper = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                 "nesterov": nesterov, "maximize": maximize}
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = sgd(**hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = sgd_reference(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    # A few steps of |update| up to lr·(1 + λ|θ|)·(1 + μ)/(1 - μ) ≈ 200·|g|: errors scale
    # with it, so the tolerance is relative to the sizes the reference reaches.
    scale = max([1.0] + [float(np.max(np.abs(x), initial=0)) for x in history[-1]])
    assert tree_error(params, history[-1]) <= RTOL_REF_F32 * scale
    assert tree_error(state.momentum_buffer, ref["momentum_buffer"]) <= RTOL_REF_F32 * scale


# ------------------------------------------------------------------ dtypes


def test_state_dtype_bfloat16_rounds_the_stored_buffer() -> None:
    """b is kept in bfloat16 and the step goes on from the stored (rounded) value."""
    hyper = {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}
    rng = np.random.default_rng(6)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    g1, g2 = make_tree(rng, np.float32), make_tree(rng, np.float32)
    tx = sgd(**hyper, state_dtype=jnp.bfloat16)
    update = jax.jit(tx.update)
    _, state = update(g1, tx.init(params), params)
    updates, state = update(g2, state, params)
    assert {x.dtype for x in jax.tree.leaves(state.momentum_buffer)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}

    def bf16(x: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)

    for u, b, a, c in zip(leaves64(updates), leaves64(state.momentum_buffer), leaves64(g1),
                          leaves64(g2)):
        expected_b = bf16(0.9 * bf16(a) + 0.9 * c)  # b_1 = g1 stored, then μ·b_1 + (1-τ)·g2
        assert np.all(np.abs(b - expected_b) <= RTOL_ONE_STEP_BF16 * np.abs(expected_b))
        assert max_rel_error(u, -0.1 * b) <= 1e-7  # the update uses b as stored


# ------------------------------------------------------------------ non-finite gradients


def test_skip_nonfinite_keeps_the_first_step_rule() -> None:
    """A skipped first step leaves step at 0, so the next finite step still starts b = g."""
    tx = sgd(lr=1.0, momentum=0.5, dampening=0.5, skip_nonfinite=True)
    params = jnp.zeros(1)
    _, state = tx.update(jnp.array([np.nan]), tx.init(params), params)
    _, state = tx.update(jnp.array([2.0]), state, params)
    assert state.momentum_buffer.tolist() == [2.0]


# ------------------------------------------------------------------ traced hyper-parameters


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(9)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def train(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = sgd(**hyper, nesterov=False)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
                   {"lr": 0.02, "momentum": 0.5, "dampening": -0.2, "weight_decay": 0.0}):
        params, state = train({k: jnp.float32(v) for k, v in values.items()}, params0)
        history, ref = sgd_reference([params0["w"]], [[g["w"]] for g in grads], **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32
        assert max_rel_error(state.momentum_buffer["w"], ref["momentum_buffer"][0]) <= RTOL_REF_F32
    assert train._cache_size() == 1


def test_traced_momentum_with_nesterov_is_accepted() -> None:
    tx = sgd(momentum=jnp.float32(0.9), nesterov=True)
    assert tx.init(jnp.ones(2)).momentum_buffer is not None
