"""Tests of ``fx.adam`` and ``fx.adamw`` (and their classes) that are Adam's own
(docs/optimizers.md): complex moments as torch's real pairs, the first step's exact bias
correction, AdamW as Adam with decoupled weight decay, optax, bfloat16 buffers, and the
functional face under random and traced inputs (traced betas too).

tests/test_family.py runs the generic ones over the two rows (tests/optimizers_under_test.py):
torch and reference parity over the grids (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
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
from reference import adam_reference, max_rel_error

import lucid_fx as fx
from lucid_fx._src.transforms.adam import adam, adamw

RTOL_ONE_STEP_BF16 = 2**-7  # one rounding to bfloat16 (8 significant bits), relative


def test_complex_second_moment_is_per_component() -> None:
    """v holds re(g)² and im(g)² (torch's real pairs), not |g|²."""
    tx = adam(lr=0.1, betas=(0.0, 0.0))
    params = jnp.zeros(1, jnp.complex64)
    _, state = tx.update(jnp.array([3 + 4j], jnp.complex64), tx.init(params), params)
    assert state.exp_avg_sq.dtype == jnp.complex64
    assert state.exp_avg_sq.tolist() == [9 + 16j]  # |g|² would be 25


def test_bias_correction_is_exact_in_float32() -> None:
    """1 - β₂ formed from the Python β₂: the first step is η·sign(g) to a few ulp.

    From 1 - fl32(0.999) = 0.00099998713 instead, sqrt(1 - β₂) would be 6.4e-6 off,
    and so would the step (6.4e-7 here), which the bound below (2e-6 relative) catches.
    """
    tx = adam(lr=0.1, eps=0.0)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(jnp.array([1e-3, 2.0, -5e4]), tx.init(params), params)
    assert np.abs(np.asarray(updates) - np.array([-0.1, -0.1, 0.1])).max() <= 2e-7


def test_adamw_is_adam_with_decoupled_weight_decay() -> None:
    rng = np.random.default_rng(2)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = [make_tree(rng, np.float32) for _ in range(3)]
    results = []
    for tx in (adamw(0.01, weight_decay=0.3, amsgrad=True),
               adam(0.01, weight_decay=0.3, amsgrad=True, decoupled_weight_decay=True)):
        p, state, update = params, tx.init(params), jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, p)
            p = fx.apply_updates(p, updates)
        results.append((p, state))
    chex.assert_trees_all_equal(results[0], results[1])


# ------------------------------------------------------------------ optax


# optax has no maximize, and its amsgrad is another method (below); one run per kind of decay.
OPTAX_LABELS = [("adam", "defaults"), ("adam", "weight_decay=0.1"),
                ("adam", "weight_decay=0.1,decoupled_weight_decay=True"), ("adamw", "defaults")]


@pytest.fixture(scope="module")
def optax_finals() -> dict[tuple[str, str], tuple[Any, Any]]:
    """Final parameters of ours and optax's for each OPTAX_LABELS case (one compilation)."""
    pairs = {}
    for name, label in OPTAX_LABELS:
        config = ROWS[name].grid[label]
        lr, wd = config["lr"], config["weight_decay"]
        if name == "adamw" or config["decoupled_weight_decay"]:
            theirs = optax.adamw(lr, eps_root=0.0, weight_decay=wd)
        else:
            theirs = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, eps_root=0.0))
        pairs[name, label] = (ROWS[name].factory(**config), theirs)
    finals = side_by_side([tx for pair in pairs.values() for tx in pair])
    return {key: (finals[2 * i], finals[2 * i + 1]) for i, key in enumerate(pairs)}


@pytest.mark.parametrize("name, label", OPTAX_LABELS, ids=[f"{n}:{lb}" for n, lb in OPTAX_LABELS])
def test_agrees_with_optax(name: str, label: str, optax_finals: dict[Any, Any]) -> None:
    """optax's adam with eps_root=0 is torch's Adam: m̂/(sqrt(v̂) + ε) with v̂ = v/(1-β₂^t)
    is η/(1-β₁^t)·m/(sqrt(v)/sqrt(1-β₂^t) + ε). Coupled decay is its add_decayed_weights
    first; adamw's decay is -η·λ·θ, ours θ·(1-ηλ) - θ. (optax's amsgrad takes the maximum
    of the bias-corrected v̂, torch's of v: not the same method, so not compared.)

    Two float32 computations of the same formulas: each within RTOL_REF_F32 of exact.
    """
    ours, theirs = optax_finals[name, label]
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


# ------------------------------------------------------------------ property test


@given(
    shape_tree=shape_trees,
    lr=st.floats(0.0, 0.1),
    beta1=st.sampled_from([0.0, 0.3, 0.9]),
    beta2=st.sampled_from([0.0, 0.5, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3, 0.1]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    decoupled_weight_decay=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, steps: int, seed: int,
) -> None:
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, Shape))

    hyper = {"lr": lr, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
             "maximize": maximize, "decoupled_weight_decay": decoupled_weight_decay}
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = adam(betas=(beta1, beta2), **hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = adam_reference(leaves64(params0), [leaves64(g) for g in grads],
                                  betas=(beta1, beta2), **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    assert tree_error(params, history[-1]) <= RTOL_REF_F32
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert tree_error(getattr(state, key), ref[key]) <= RTOL_REF_F32, key


# ------------------------------------------------------------------ dtypes


def test_state_dtype_bfloat16_rounds_the_stored_buffers() -> None:
    """m and v are kept in bfloat16 and the step uses them as stored (rounded)."""
    rng = np.random.default_rng(6)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = make_tree(rng, np.float32)
    tx = adam(lr=0.1, state_dtype=jnp.bfloat16)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    buffers = (state.exp_avg, state.exp_avg_sq)
    assert {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}

    def bf16(x: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)

    for u, m, v, g in zip(leaves64(updates), leaves64(state.exp_avg),
                          leaves64(state.exp_avg_sq), leaves64(grads)):
        assert np.all(np.abs(m - bf16(0.1 * g)) <= RTOL_ONE_STEP_BF16 * np.abs(0.1 * g))
        assert np.all(np.abs(v - bf16(0.001 * g * g)) <= RTOL_ONE_STEP_BF16 * (0.001 * g * g))
        expected = -(0.1 / 0.1) * m / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)  # from the stored m, v
        assert max_rel_error(u, expected) <= 1e-6


# ------------------------------------------------------------------ traced hyper-parameters


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(9)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def train(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = adam(hyper["lr"], (hyper["beta1"], hyper["beta2"]), hyper["eps"],
                  hyper["weight_decay"], amsgrad=True, decoupled_weight_decay=True)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in ({"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-4, "weight_decay": 0.1},
                   {"lr": 0.02, "beta1": 0.5, "beta2": 0.9, "eps": 1e-2, "weight_decay": 0.0}):
        params, state = train({k: jnp.float32(v) for k, v in values.items()}, params0)
        # The traced β is a float32 number: the reference gets exactly that number.
        betas = (float(np.float32(values.pop("beta1"))), float(np.float32(values.pop("beta2"))))
        history, ref = adam_reference([params0["w"]], [[g["w"]] for g in grads], betas=betas,
                                      amsgrad=True, decoupled_weight_decay=True, **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32
        assert max_rel_error(state.exp_avg_sq["w"], ref["exp_avg_sq"][0]) <= RTOL_REF_F32
    assert train._cache_size() == 1


def test_traced_betas_are_accepted() -> None:
    tx = jax.jit(lambda b: adam(betas=(b, b)).init(jnp.ones(2)).exp_avg)
    assert tx(jnp.float32(0.9)).shape == (2,)
