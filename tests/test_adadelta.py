"""Tests of ``fx.adadelta`` and ``fx.Adadelta`` that are Adadelta's own (docs/optimizers.md):
complex averages as torch's real pairs, optax, and ρ = 1.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
``acc_delta`` is ~1e-6 there, so the row's ``own_scale`` compares it relative to its own
size too, where an error relative to max(1, |u|) could not see a wrong u.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax
from optimizers_under_test import ROWS, RTOL_REF_F32, side_by_side

from lucid_fx._src.transforms.adadelta import adadelta

ROW = ROWS["adadelta"]


def test_complex_averages_are_per_component() -> None:
    """torch's view_as_real: v holds (1-ρ)·re(g)² and (1-ρ)·im(g)², not (1-ρ)·|g|²."""
    tx = adadelta(rho=0.5, eps=0.0)
    params = jnp.zeros(1, jnp.complex64)
    _, state = tx.update(jnp.array([3 + 4j], jnp.complex64), tx.init(params), params)
    assert state.square_avg.dtype == jnp.complex64
    assert state.square_avg.tolist() == [4.5 + 8j]
    assert state.acc_delta.tolist() == [0j]  # sqrt(u + ε) = 0: no step yet without ε


def test_agrees_with_optax() -> None:
    """optax's adadelta(learning_rate=η) is the same math: two float32 computations of the
    same formulas, each within RTOL_REF_F32 of exact."""
    ours, theirs = side_by_side([adadelta(lr=0.5, rho=0.8, eps=1e-3),
                                 optax.adadelta(0.5, rho=0.8, eps=1e-3)])
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


def test_rho_one_is_accepted_as_in_torch() -> None:
    """ρ = 1 freezes both averages at 0, so Δx = sqrt(ε)/sqrt(ε)·g = g: valid, if odd."""
    tx = adadelta(lr=0.5, rho=1.0)
    params = jnp.zeros(2)
    updates, _ = tx.update(jnp.array([2.0, -1.0]), tx.init(params), params)
    assert updates.tolist() == [-1.0, 0.5]
