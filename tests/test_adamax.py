"""Tests of ``fx.adamax`` and ``fx.Adamax`` that are Adamax's own (docs/optimizers.md): the
complex infinity norm as torch's real pairs, and optax.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax
from optimizers_under_test import ROWS, RTOL_REF_F32, side_by_side

from lucid_fx._src.transforms.adamax import adamax

ROW = ROWS["adamax"]


def test_complex_infinity_norm_is_per_component() -> None:
    """torch's view_as_real: u holds |re(g)| + ε and |im(g)| + ε, not |g| + ε."""
    tx = adamax(eps=0.5)
    params = jnp.zeros(1, jnp.complex64)
    _, state = tx.update(jnp.array([3 - 4j], jnp.complex64), tx.init(params), params)
    assert state.exp_inf.dtype == jnp.complex64
    assert state.exp_inf.tolist() == [3.5 + 4.5j]  # |g| + ε would be 5.5


def test_agrees_with_optax() -> None:
    """optax's adamax is the same math (ε inside the maximum too): two float32
    computations of the same formulas, each within RTOL_REF_F32 of exact."""
    ours, theirs = side_by_side([adamax(lr=0.01, eps=1e-3), optax.adamax(0.01, eps=1e-3)])
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)
