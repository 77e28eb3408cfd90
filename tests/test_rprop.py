"""Tests of ``fx.rprop`` and ``fx.Rprop`` that are Rprop's own (docs/optimizers.md): complex
parts as torch's real pairs, a sign that underflows, lr as the initial step size only
(written later, or as a schedule), the step sizes' checks torch does not make, and traced
hyper-parameters.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid and both clamps (float32 and float64, complex),
the stateful face, torch's state dicts, signatures and every error in ``bad_inputs``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import ROWS, one_torch_thread, stateful_problem

import lucid_fx as fx
from lucid_fx._src.transforms.rprop import rprop, rprop_kernel

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["rprop"]


def test_complex_parts_have_their_own_signs_and_step_sizes() -> None:
    """torch's view_as_real: both parts start at lr; here the real part keeps its sign
    (grows by η₊) while the imaginary part flips (shrinks by η₋, its history cleared)."""
    tx = rprop(lr=0.125, etas=(0.5, 2.0))
    params = jnp.zeros(1, jnp.complex64)
    state = tx.init(params)
    assert state.step_size.dtype == jnp.complex64 and state.step_size.tolist() == [0.125 + 0.125j]
    _, state = tx.update(jnp.array([1 + 1j], jnp.complex64), state)
    updates, state = tx.update(jnp.array([3 - 1j], jnp.complex64), state)
    assert state.step_size.tolist() == [0.25 + 0.0625j]
    assert state.prev.tolist() == [3 + 0j] and updates.tolist() == [-0.25 + 0j]


def test_an_underflowing_product_counts_as_no_sign_as_in_torch() -> None:
    """The sign is that of g·g_prev as computed: 1e-30·1e-30 is 0 in float32, so the step
    size stays and the gradient is kept (sign(g)·sign(g_prev) would grow it)."""
    g = np.array([1e-30, -1e-30, 1.0], np.float32)
    ours = rprop_kernel(jnp.asarray(g), jnp.asarray(g), jnp.full(3, 0.01, jnp.float32),
                        etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0)
    with one_torch_thread(torch):
        q = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.Rprop([q], lr=0.01, foreach=False)
        for _ in range(2):
            q.grad = torch.tensor(g)
            opt.step()
    np.testing.assert_array_equal(np.asarray(ours[2]), opt.state[q]["step_size"].numpy())
    np.testing.assert_array_equal(np.asarray(ours[1]), opt.state[q]["prev"].numpy())
    assert np.asarray(ours[2]).tolist() == pytest.approx([0.01, 0.01, 0.012])


def _lr_written_after_the_first_step(grads: list[list[np.ndarray | None]]) -> list[Any]:
    """Step sizes of both faces after lr is written into param_groups between two steps."""
    values, _ = stateful_problem(np.float32)
    params = [fx.Parameter(v) for v in values[:3]]
    opt = fx.Rprop(params, lr=0.01)
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in values[:3]]
    with one_torch_thread(torch):
        topt = torch.optim.Rprop(theirs, lr=0.01, foreach=False)
        for t, step_grads in enumerate(grads):
            if t == 1:
                opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = 0.5
            opt.zero_grad()
            topt.zero_grad(set_to_none=True)
            for p, q, g in zip(params, theirs, step_grads):
                if g is not None:
                    p.grad, q.grad = jnp.asarray(g), torch.tensor(g)
            opt.step()
            topt.step()
    return [(np.asarray(opt.state[p]["step_size"]), topt.state[q]["step_size"].numpy())
            for p, q in zip(params[:2], theirs[:2])]


def test_lr_written_later_leaves_step_sizes_under_way_alone() -> None:
    """As in torch, lr is only where each step size starts."""
    _, grads = stateful_problem(np.float32)
    both = [grads[t][:3] for t in (1, 2, 4)]  # both parameters step every time
    assert all(g[0] is not None and g[1] is not None for g in both)
    for ours, theirs in _lr_written_after_the_first_step(both):
        np.testing.assert_array_equal(ours, theirs)
        assert np.all(ours <= 0.01 * 1.2**3)


def test_a_parameter_joining_after_lr_was_written_starts_at_the_new_lr() -> None:
    _, grads = stateful_problem(np.float32)
    late = [g[:3] for g in grads[:3]]  # no gradient for the second one at the first step
    assert late[0][1] is None
    for ours, theirs in _lr_written_after_the_first_step(late):
        np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ errors Rprop alone has


def test_step_sizes_are_checked_where_torch_does_not() -> None:
    """torch takes a reversed pair and then clamps every step size to Γ_max: refused here."""
    with one_torch_thread(torch):
        q = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.Rprop([q], lr=0.01, step_sizes=(1.0, 0.5), foreach=False)
        q.grad = torch.ones(2)
        opt.step()
        assert opt.state[q]["step_size"].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"expected min <= max"):
        rprop(step_sizes=(1.0, 0.5))


def test_a_schedule_for_lr_is_refused() -> None:
    """lr is the initial step size, read by init: a schedule would mean nothing."""
    with pytest.raises(ValueError, match=r"Invalid lr value: .* \(rprop uses lr only as the "
                                         r"initial step size, in init: pass a number"):
        rprop(lr=optax.constant_schedule(0.1))


def test_traced_hyperparameters_are_accepted() -> None:
    def run(etas: Any, sizes: Any, lr: Any) -> Any:
        tx = rprop(lr, etas, sizes)
        params = jnp.zeros(2)
        return tx.update(jnp.array([1.0, -1.0]), tx.init(params))

    updates, state = jax.jit(run)((0.5, 1.2), (1e-6, 50.0), 0.25)
    assert updates.tolist() == [-0.25, 0.25] and state.step_size.tolist() == [0.25, 0.25]
