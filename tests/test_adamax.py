"""Tests of ``lucid_fx._src.transforms.adamax`` and ``fx.Adamax`` that are Adamax's own: the grid, the
complex infinity norm as torch's real pairs, the per-element step of the kernel, optax,
the state's layout, and an infinity norm that cannot be negative.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optimizers_under_test import ROWS, RTOL_REF_F32, side_by_side
from reference import max_rel_error

from lucid_fx._src.transforms.adamax import AdamaxState, adamax, adamax_kernel

ROW = ROWS["adamax"]


def test_grid_covers_every_flag_combination() -> None:
    assert len(ROW.grid) == 4 and ROW.richest == "weight_decay=0.1,maximize=True"


def test_complex_infinity_norm_is_per_component() -> None:
    """torch's view_as_real: u holds |re(g)| + ε and |im(g)| + ε, not |g| + ε."""
    tx = adamax(eps=0.5)
    params = jnp.zeros(1, jnp.complex64)
    _, state = tx.update(jnp.array([3 - 4j], jnp.complex64), tx.init(params), params)
    assert state.exp_inf.dtype == jnp.complex64
    assert state.exp_inf.tolist() == [3.5 + 4.5j]  # |g| + ε would be 5.5


def test_kernel_step_broadcasts_per_element() -> None:
    """One count per element (parameters that joined later): each gets its own bias
    correction, the same as a scalar step would give it."""
    rng = np.random.default_rng(1)
    g, theta, m = (jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(3))
    u = jnp.full(4, 0.5, jnp.float32)
    steps = jnp.array([1, 2, 10, 1000], jnp.int32)
    hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    kernel = jax.jit(lambda *arrays, step: adamax_kernel(*arrays, step=step, **hyper))
    per_element = kernel(g + 0.1 * theta, m, u, step=steps)
    for i, t in enumerate(steps.tolist()):
        alone = kernel(g[i] + 0.1 * theta[i], m[i], u[i], step=jnp.int32(t))
        for a, b in zip(per_element, alone):
            assert max_rel_error(a[i], b) <= 1e-7


def test_agrees_with_optax() -> None:
    """optax's adamax is the same math (ε inside the maximum too): two float32
    computations of the same formulas, each within RTOL_REF_F32 of exact."""
    ours, theirs = side_by_side([adamax(lr=0.01, eps=1e-3), optax.adamax(0.01, eps=1e-3)])
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


def test_state_layout() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones((), jnp.bfloat16)}
    plain = adamax().init(params)
    assert isinstance(plain, AdamaxState)
    assert plain._fields == ("step", "exp_avg", "exp_inf", "skipped")
    assert plain.skipped is None and plain.step.dtype == jnp.int32 and int(plain.step) == 0
    assert plain.exp_inf["b"].dtype == jnp.bfloat16
    wide = adamax(skip_nonfinite=True, state_dtype=jnp.float32).init(params)
    assert wide.exp_avg["b"].dtype == wide.exp_inf["b"].dtype == jnp.float32
    assert int(wide.skipped) == 0
