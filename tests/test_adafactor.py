"""Tests of Adafactor (``lucid_fx._src.transforms.adafactor``) that a row of the table cannot say.

Shapes (0-d to 4-D, and torch's keepdim shapes of the factors), the cases where each
clamp binds (ε₁ at the dtype's machine epsilon, the relative step size capped by
lr or by 1/sqrt(t), the clipping threshold d), the size of the factored state, and
torch's numbers for each, in float32 and float64, on both faces. The grid's
generic checks (errors, state dicts, schedulers, no recompilation) come from the
table in tests/optimizers_under_test.py; the float64 reference is
tests/reference_shape_aware.py.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import RTOL_F32, RTOL_F64, max_rel_error
from reference_shape_aware import adafactor_reference

import lucid_fx as fx

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

SHAPES = [(), (7,), (5, 3), (2, 4, 3), (2, 1, 3, 2)]
DTYPES = {"float32": (np.float32, RTOL_F32), "float64": (np.float64, RTOL_F64)}


def _runs(config: dict[str, Any], params: list[np.ndarray], grads: list[list[np.ndarray]],
          dtype: Any) -> dict[str, list[np.ndarray]]:
    """The final parameters from torch, the functional face and the stateful face."""
    torch_params = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    torch_opt = torch.optim.Adafactor(torch_params, **config)
    tx = fx.adafactor(**config)
    theta = [jnp.asarray(p) for p in params]
    state = tx.init(theta)
    model = [fx.Parameter(jnp.asarray(p)) for p in params]
    opt = fx.Adafactor(model, **config)
    update = jax.jit(tx.update)
    for g in grads:
        for p, x in zip(torch_params, g):
            p.grad = torch.tensor(x)
        torch_opt.step()
        updates, state = update([jnp.asarray(x) for x in g], state, theta)
        theta = optax.apply_updates(theta, updates)
        for p, x in zip(model, g):
            p.grad = jnp.asarray(x)
        opt.step()
    return {"torch": [p.detach().numpy() for p in torch_params],
            "functional": [np.asarray(x) for x in theta],
            "stateful": [np.asarray(p.value) for p in model]}


CASES = {
    # ρ = lr: the relative step size capped by lr, for every t here.
    "lr caps the step": (dict(lr=1e-2), 1.0),
    # ρ = 1/sqrt(t): lr above 1 never binds, and weight decay λ·η is large.
    "1/sqrt(t) caps the step": (dict(lr=2.0, weight_decay=0.05), 1.0),
    # d binds: the factored U has RMS above 1 on gradients with one large row.
    "d clips": (dict(lr=0.1, d=1.0, eps=(1e-3, 1e-3)), 50.0),
    "d above 1, maximize": (dict(lr=0.1, d=1.5, maximize=True, beta2_decay=-0.5), 50.0),
}


@pytest.mark.parametrize("dtype", [  # float64 (rounding only) is the slow tier's
    pytest.param(d, marks=[pytest.mark.slow] if d == "float64" else []) for d in sorted(DTYPES)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_shape_matches_torch_and_the_reference(case: str, dtype: str) -> None:
    """0-d, 1-D, 2-D, 3-D and 4-D Parameters in one optimizer, eight steps, each case
    making one clamp bind; torch's numbers and the reference's, on both faces."""
    config, row_scale = CASES[case]
    np_dtype, rtol = DTYPES[dtype]
    rng = np.random.default_rng(sorted(CASES).index(case))
    params = [rng.standard_normal(s).astype(np_dtype) for s in SHAPES]
    grads = []
    for _ in range(8):
        g = [rng.standard_normal(s) for s in SHAPES]
        for x in g:
            if x.ndim >= 2:
                x[..., 0, :] *= row_scale  # one row far larger than the rest
        grads.append([x.astype(np_dtype) for x in g])
    with jax.enable_x64(dtype == "float64"):
        runs = _runs(config, params, grads, np_dtype)
    history, _ = adafactor_reference(params, grads, machine_eps=float(np.finfo(np_dtype).eps),
                                     **config)
    for face in ("functional", "stateful"):
        for actual, expected, reference in zip(runs[face], runs["torch"], history[-1]):
            assert actual.shape == expected.shape
            assert max_rel_error(actual, expected) <= rtol, face
            assert max_rel_error(actual, reference) <= rtol, face


@pytest.mark.parametrize("case", ["d clips", "d above 1, maximize"])
def test_the_threshold_binds_in_its_cases(case: str) -> None:
    """The clipping cases clip (else their parity proves less): without the threshold
    the reference takes other steps."""
    config, row_scale = CASES[case]
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 3))
    g[0] *= row_scale
    clipped, _ = adafactor_reference([np.ones((5, 3))], [[g]], **config)
    free, _ = adafactor_reference([np.ones((5, 3))], [[g]], **{**config, "d": np.inf})
    assert max_rel_error(clipped[0][0], free[0][0]) > 1e-3


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_eps1_none_is_the_parameters_machine_epsilon(dtype: str) -> None:
    """With ``eps=(None, ε₂)``, ε₁ is the machine epsilon of θ's dtype, as in torch: a
    gradient so small that sqrt(V̂) falls below it is divided by ε₁ (θ = 0, so the
    step is ε₂·ρ·g/ε₁ and shows which ε₁ was used)."""
    np_dtype, rtol = DTYPES[dtype]
    tiny = 1e-9 if dtype == "float32" else 1e-20  # sqrt(g²) below the dtype's ε
    params = [np.zeros(3, np_dtype), np.zeros((2, 3), np_dtype)]
    grads = [[np.full(3, tiny, np_dtype), np.full((2, 3), tiny, np_dtype)]] * 2
    with jax.enable_x64(dtype == "float64"):
        runs = _runs({"lr": 0.5}, params, grads, np_dtype)
    eps1 = float(np.finfo(np_dtype).eps)
    # Two steps of -ε₂·ρ·g/ε₁ (RMS(θ) < ε₂, ρ = lr, U = g/ε₁ far below d):
    expected = -2 * 1e-3 * 0.5 * float(np_dtype(tiny)) / eps1
    history, _ = adafactor_reference(params, grads, lr=0.5, machine_eps=eps1)
    for leaf in history[-1]:
        np.testing.assert_allclose(leaf, expected, rtol=1e-12)
    for face in ("torch", "functional", "stateful"):
        for actual in runs[face]:
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


def test_factored_state_is_rows_plus_columns() -> None:
    """An m×n matrix keeps m + n numbers (Adam: 2·m·n), with torch's keepdim shapes;
    a batch of matrices (3-D) keeps its factors per matrix; a vector its own V."""
    params = {"w": jnp.zeros((1024, 512)), "stack": jnp.zeros((4, 64, 32)), "b": jnp.zeros(512)}
    state = fx.adafactor().init(params)
    assert state.row_var["w"].shape == (1024, 1) and state.col_var["w"].shape == (1, 512)
    assert state.row_var["stack"].shape == (4, 64, 1)
    assert state.col_var["stack"].shape == (4, 1, 32)
    assert state.variance["b"].shape == (512,) and state.variance["w"] is None
    held = sum(x.size for x in jax.tree_util.tree_leaves((state.row_var, state.col_var,
                                                          state.variance)))
    adam = fx.adam().init(params)
    adam_held = sum(x.size for x in jax.tree_util.tree_leaves((adam.exp_avg, adam.exp_avg_sq)))
    assert held == (1024 + 512) + 4 * (64 + 32) + 512
    assert adam_held == 2 * (1024 * 512 + 4 * 64 * 32 + 512)


def test_update_needs_params() -> None:
    """The step is scaled by θ's RMS: ``update`` without params says so."""
    tx = fx.adafactor()
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="RMS, so update\\(\\) needs params"):
        tx.update(params, tx.init(params))


def test_refuses_complex_parameters_as_torch_does() -> None:
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    param.grad = torch.zeros_like(param)
    with pytest.raises(RuntimeError, match="does not support complex"):
        torch.optim.Adafactor([param]).step()
    with pytest.raises(RuntimeError, match="does not support complex"):
        fx.adafactor().init(jnp.zeros(3, jnp.complex64))
    with pytest.raises(RuntimeError, match="does not support complex"):
        fx.Adafactor([fx.Parameter(jnp.zeros(3, jnp.complex64))]).step()
