"""Tests of ``fx.adagrad`` and ``fx.Adagrad`` that are Adagrad's own (docs/optimizers.md):
complex sums as torch's real pairs, and each group's own initial_accumulator_value.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, one_torch_thread

import lucid_fx as fx
from lucid_fx._src.transforms.adagrad import adagrad

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["adagrad"]


def test_complex_sum_is_per_component_and_starts_at_the_value_in_both() -> None:
    """torch's view_as_real: s holds re(g)² and im(g)², both parts start at s_0."""
    tx = adagrad(initial_accumulator_value=0.5)
    params = jnp.zeros(1, jnp.complex64)
    state = tx.init(params)
    assert state.sum.dtype == jnp.complex64 and state.sum.tolist() == [0.5 + 0.5j]
    _, state = tx.update(jnp.array([3 + 4j], jnp.complex64), state, params)
    assert state.sum.tolist() == [9.5 + 16.5j]  # |g|² would be 25


def test_each_group_starts_its_sums_at_its_own_value() -> None:
    """Where torch starts every group at the constructor's initial_accumulator_value."""
    g = np.array([2.0, -1.0], np.float32)
    ours = [fx.Parameter(jnp.zeros(2)) for _ in range(2)]
    opt = fx.Adagrad([{"params": ours[:1]},
                      {"params": ours[1:], "initial_accumulator_value": 0.5}])
    for p in ours:
        p.grad = jnp.asarray(g)
    opt.step()
    assert [opt.state[p]["sum"].tolist() for p in ours] == [[4.0, 1.0], [4.5, 1.5]]
    with one_torch_thread(torch):
        theirs = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
        topt = torch.optim.Adagrad([{"params": theirs[:1]},
                                    {"params": theirs[1:], "initial_accumulator_value": 0.5}])
        for q in theirs:
            q.grad = torch.tensor(g)
        topt.step()
    assert [topt.state[q]["sum"].tolist() for q in theirs] == [[4.0, 1.0], [4.0, 1.0]]
