"""Tests of ``fx.nadam`` and ``fx.NAdam`` that are NAdam's own (docs/optimizers.md): the
state's per-parameter ``mu_product`` and that scalar's dtype, and μ_t's formula.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr, so
μ_t's factors use the current η as torch's do), ``mu_product`` compared with torch's and
the reference's (Row.scalars), the stateful face (``mu_product`` per Parameter in packed
buffers that skip steps), torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from optimizers_under_test import ROWS
from reference import max_rel_error

from lucid_fx._src.transforms.nadam import NAdamState, momentum_cache, nadam

ROW = ROWS["nadam"]


# ------------------------------------------------------------------ state and kernel


def test_state_layout_and_scalar_dtype() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones((), jnp.float32)}
    state = nadam().init(params)
    assert isinstance(state, NAdamState) and state.skipped is None
    assert state.mu_product.shape == () and state.mu_product.dtype == jnp.float32
    assert float(state.mu_product) == 1.0 and int(state.step) == 0
    assert int(nadam(skip_nonfinite=True).init(params).skipped) == 0
    with jax.enable_x64(True):
        wide = nadam().init({"w": jnp.ones(2, jnp.float32), "v": jnp.ones(2, jnp.float64)})
        assert wide.mu_product.dtype == jnp.float64  # the widest leaf's


def test_momentum_cache_is_torchs_formula() -> None:
    """Within 2 ulp of torch's float64 μ_t (three roundings: β₁, the expm1 term, the product;
    1 - ½·0.96^(tψ) formed directly would add the rounding of 0.96^(tψ) ≈ 1)."""
    t = np.arange(1, 2001)
    exact = 0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3))  # μ_t in [0.45, 0.58]: ulp 2^-24 or 2^-25
    assert max_rel_error(momentum_cache(jnp.asarray(t), 0.9, 4e-3, jnp.float32), exact) <= 2**-23
