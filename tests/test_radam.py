"""Tests of ``fx.radam`` and ``fx.RAdam`` that are RAdam's own (docs/optimizers.md): ρ_t's
accuracy in float32, and that the runs take both of the rectification's branches, per
element inside one packed buffer too.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
Over STEPS = 20 steps ρ_t crosses 5 at t = 6 (β₂ = 0.999): every parity run takes both
branches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, STEPS, stateful_faces

from lucid_fx._src.transforms.radam import sma_length

ROW = ROWS["radam"]
BETA2 = 0.999  # the grid's (the default)


def _rectified(t: int) -> bool:
    """Whether step t takes the rectified branch (ρ_t > 5), by torch's float64 formula."""
    rho_inf = 2 / (1 - BETA2) - 1
    return rho_inf - 2 * t * BETA2**t / (1 - BETA2**t) > 5


def test_the_runs_take_both_branches() -> None:
    """The parity runs (STEPS steps) cross ρ_t = 5; in the stateful run one Parameter of a
    packed buffer has crossed it while its neighbour, which skipped steps, has not."""
    assert all(config.get("betas", (0.9, BETA2))[1] == BETA2 for config in ROW.grid.values())
    assert not _rectified(5) and _rectified(6) and STEPS >= 6
    torch = pytest.importorskip("torch", reason="the stateful run is compared with torch")
    run = stateful_faces("radam", np.float32, torch)
    for label, faces in run.faces.items():
        if label != ROW.richest:  # that one runs longer: both of its Parameters cross
            assert _rectified(faces[0].steps) and not _rectified(faces[1].steps), label


# ------------------------------------------------------------------ state and kernel


def test_sma_length_is_accurate_in_float32() -> None:
    """ρ_t to a few ulp of itself where the rectification reads it (ρ_t > 5), against
    torch's formula in float64, for β₂ from 0.9 to 0.9999 and t up to 1e6. The direct
    formula in float32 is 5e-4 off at β₂ = 0.999 (ρ_∞ - 2tβ₂^t/(1-β₂^t) cancels ~2000
    down to ~6), which made float32 RAdam 1e-5 off torch's; see sma_length. Measured
    <= 4 ulp; part of it is 1 - β₂'s own rounding to float32."""
    beta2 = np.array([0.9, 0.99, 0.999, 0.9999])
    t = np.concatenate([np.arange(1, 300), np.geomspace(300, 1e6, 200).round()])[:, None]
    exact = (2 / (1 - beta2) - 1) - 2 * t * beta2**t / (1 - beta2**t)
    ours = jax.jit(sma_length)(jnp.asarray(t, jnp.float32), jnp.asarray(1 - beta2, jnp.float32))
    used = exact > 5
    assert used[:, -1].any() and used[:, 0].any()
    assert np.max(np.abs(np.asarray(ours, np.float64) - exact)[used] / exact[used]) <= 8 * 2**-24
