"""Tests of ``lucid_fx._src.transforms.adagrad`` and ``fx.Adagrad`` that are Adagrad's own: the grid, complex
sums as torch's real pairs, the per-element step of the kernel, the state's layout, each
group's own initial_accumulator_value, and a sum that cannot be negative.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid (float32 and float64, complex, a changing lr),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, one_torch_thread
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx._src.transforms.adagrad import AdagradState, adagrad, adagrad_kernel

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["adagrad"]


def test_grid_covers_every_flag_combination() -> None:
    assert len(ROW.grid) == 16
    assert ROW.richest == "lr_decay=0.05,weight_decay=0.1,initial_accumulator_value=0.1,maximize=True"


def test_complex_sum_is_per_component_and_starts_at_the_value_in_both() -> None:
    """torch's view_as_real: s holds re(g)² and im(g)², both parts start at s_0."""
    tx = adagrad(initial_accumulator_value=0.5)
    params = jnp.zeros(1, jnp.complex64)
    state = tx.init(params)
    assert state.sum.dtype == jnp.complex64 and state.sum.tolist() == [0.5 + 0.5j]
    _, state = tx.update(jnp.array([3 + 4j], jnp.complex64), state, params)
    assert state.sum.tolist() == [9.5 + 16.5j]  # |g|² would be 25


def test_kernel_step_broadcasts_per_element() -> None:
    """One count per element (parameters that joined later): each gets its own lr decay."""
    rng = np.random.default_rng(1)
    g, theta = (jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(2))
    s = jnp.full(4, 0.5, jnp.float32)
    steps = jnp.array([1, 2, 10, 1000], jnp.int32)
    hyper = {"lr": 0.1, "lr_decay": 0.3, "eps": 1e-10}
    kernel = jax.jit(lambda *arrays, step: adagrad_kernel(*arrays, step=step, **hyper))
    per_element = kernel(g + 0.1 * theta, s, step=steps)
    for i, t in enumerate(steps.tolist()):
        alone = kernel(g[i] + 0.1 * theta[i], s[i], step=jnp.int32(t))
        for a, b in zip(per_element, alone):
            assert max_rel_error(a[i], b) <= 1e-7


def test_state_layout() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones((), jnp.bfloat16)}
    plain = adagrad().init(params)
    assert isinstance(plain, AdagradState) and plain._fields == ("step", "sum", "skipped")
    assert plain.skipped is None and plain.step.dtype == jnp.int32 and int(plain.step) == 0
    assert plain.sum["b"].dtype == jnp.bfloat16 and not np.any(np.asarray(plain.sum["w"]))
    wide = adagrad(skip_nonfinite=True, state_dtype=jnp.float32).init(params)
    assert wide.sum["b"].dtype == jnp.float32 and int(wide.skipped) == 0


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
