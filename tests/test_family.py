"""Generic tests of every element-wise optimizer in the table: one body, one row each.

Adding an optimizer to ``optimizers_under_test.ROWS`` runs these for it: the
non-finite policy (propagate by default, skip and count with ``skip_nonfinite``)
and the dtype policy (low-precision parameters keep their dtype; ``state_dtype``
widens the state). Each row's richest configuration (the last of its grid, every
buffer on) is the one tested; the reference is the row's float64 NumPy one.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, RTOL_REF_F32, Row, leaves64, make_tree, tree_error

import lucid_fx as fx


def _richest(row: Row) -> dict[str, Any]:
    """The grid's last configuration: every flag on, so every buffer exists."""
    return dict(list(row.grid.values())[-1])


def _buffers(row: Row, state: Any) -> dict[str, Any]:
    return {k: getattr(state, k) for k in row.buffers if getattr(state, k) is not None}


@pytest.mark.parametrize("name", ROWS)
def test_nonfinite_gradients_propagate_by_default(name: str) -> None:
    row = ROWS[name]
    tx = row.factory(**_richest(row))
    updates, state = tx.update(jnp.array([1.0, np.nan]), tx.init(jnp.ones(2)), jnp.ones(2))
    assert np.isnan(np.asarray(updates)).tolist() == [False, True]
    assert int(state.step) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ROWS)
def test_skip_nonfinite_changes_nothing_and_counts(name: str, bad: float) -> None:
    """A skipped step keeps ``step`` too, so a bias correction after it is still right."""
    row = ROWS[name]
    hyper = _richest(row)
    rng = np.random.default_rng(8)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    g1, g2 = make_tree(rng, np.float32), make_tree(rng, np.float32)
    broken = jax.tree.map(np.copy, g2)
    broken["dense"]["w"][1, 2] = bad
    tx = row.factory(**hyper, skip_nonfinite=True)
    update = jax.jit(tx.update)
    updates, state1 = update(g1, tx.init(params0), params0)
    params1 = fx.apply_updates(params0, updates)
    zeros, skipped = update(broken, state1, params1)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(zeros))
    chex.assert_trees_all_equal(skipped._replace(skipped=None), state1._replace(skipped=None))
    assert int(skipped.skipped) == 1 and int(skipped.step) == 1
    updates, state2 = update(g2, skipped, params1)
    history, _ = row.reference(leaves64(params0), [leaves64(g1), leaves64(g2)], **hyper)
    assert tree_error(fx.apply_updates(params1, updates), history[-1]) <= RTOL_REF_F32
    assert int(state2.skipped) == 1 and int(state2.step) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", ROWS)
def test_low_precision_params_keep_their_dtype(name: str, dtype: Any) -> None:
    row = ROWS[name]
    rng = np.random.default_rng(7)
    params = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    tx = row.factory(**_richest(row))
    updates, state = jax.jit(tx.update)(make_tree(rng, dtype), tx.init(params), params)
    leaves = jax.tree.leaves((updates, _buffers(row, state), fx.apply_updates(params, updates)))
    assert {x.dtype for x in leaves} == {jnp.dtype(dtype)}


@pytest.mark.parametrize("name", ROWS)
def test_state_dtype_float32_for_bfloat16_params(name: str) -> None:
    row = ROWS[name]
    # Without weight decay the buffers depend on the (exact) bfloat16 gradients only,
    # so float32 state must reach float32 accuracy against the float64 reference.
    hyper = {**_richest(row), "weight_decay": 0}
    rng = np.random.default_rng(5)
    params = jax.tree.map(jnp.asarray, make_tree(rng, jnp.bfloat16))
    grads = [make_tree(rng, jnp.bfloat16) for _ in range(10)]
    tx = row.factory(**hyper, state_dtype=jnp.float32)
    state, update = tx.init(params), jax.jit(tx.update)
    params0 = params
    for g in grads:
        updates, state = update(g, state, params)
        assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
        params = fx.apply_updates(params, updates)
    assert update._cache_size() == 1
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    buffers = _buffers(row, state)
    assert buffers and {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(jnp.float32)}
    _, ref = row.reference(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    for key, value in buffers.items():
        assert tree_error(value, ref[key]) <= RTOL_REF_F32, key
