"""Tests of ``fx.asgd`` and ``fx.ASGD`` that are ASGD's own (docs/optimizers.md): the
state's per-parameter ``eta`` and ``mu`` and their dtype, and where the averaging starts
in the stateful run.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr: η_t
is formed from the lr of update t and used by update t + 1, as torch's is), ``eta`` and
``mu`` compared with torch's and the reference's (Row.scalars), the stateful face (both per
Parameter in packed buffers that skip steps), torch's state dicts, signatures and every
error in ``bad_inputs``.

The grid's t0 = 5 starts the averaging (μ < 1) within the run; t0 = 1e6 keeps ax = θ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, stateful_faces

from lucid_fx._src.transforms.asgd import ASGDState, asgd

ROW = ROWS["asgd"]


# ------------------------------------------------------------------ state and kernel


def test_state_layout_and_scalar_dtype() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones((), jnp.float32)}
    state = asgd(lr=0.25).init(params)
    assert isinstance(state, ASGDState) and state.skipped is None
    assert state.eta.shape == state.mu.shape == () and state.eta.dtype == jnp.float32
    assert (float(state.eta), float(state.mu), int(state.step)) == (0.25, 1.0, 0)
    assert float(asgd(lr=lambda count: 0.5 / (count + 1)).init(params).eta) == 0.5
    assert int(asgd(skip_nonfinite=True).init(params).skipped) == 0
    with jax.enable_x64(True):
        wide = asgd().init({"w": jnp.ones(2, jnp.float32), "v": jnp.ones(2, jnp.float64)})
        assert wide.eta.dtype == wide.mu.dtype == jnp.float64  # the widest leaf's


def test_average_is_the_parameter_until_t0() -> None:
    """In the stateful run (tests/optimizers_under_test.py): with t0 = 1e6, μ = 1 and ax is θ
    itself (torch copies it) for every Parameter; with t0 = 5 the first Parameter's
    average has left θ (μ < 1), while its neighbour that skipped steps may not have."""
    torch = pytest.importorskip("torch", reason="the stateful run is compared with torch")
    run = stateful_faces("asgd", np.float32, torch)
    for label, config in ROW.grid.items():
        stepped = [face for face in run.faces[label] if face.steps]
        if config["t0"] == 1e6:
            for face in stepped:
                assert face.state is not None and float(face.state["mu"]) == 1, label
                np.testing.assert_array_equal(face.state["ax"], face.ours, err_msg=label)
        else:
            first = stepped[0].state
            assert first is not None and float(first["mu"]) < 1, label
            assert not np.array_equal(first["ax"], stepped[0].ours), label
