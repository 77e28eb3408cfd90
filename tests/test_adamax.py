"""Tests of ``lucid_fx.adamax`` and ``fx.Adamax``: torch.optim.Adamax parity over every
flag combination (float32 and float64, jit, complex as torch's real pairs, a schedule),
the float64 reference (tests/reference.py), optax, the stateful face over packed
Parameters that skip steps, and every error path.

float64 runs in this process under ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import (
    ROWS,
    RTOL_REF_F32,
    RTOL_REF_F64,
    RTOL_TORCH_F32,
    RTOL_TORCH_F64,
    make_tree,
    one_torch_thread,
    run_many,
    split,
)
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx.adamax import AdamaxState, adamax, adamax_kernel
from lucid_fx.hyperparameters import as_precise, is_static

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["adamax"]
GRID = ROW.grid
RICHEST = "weight_decay=0.1,maximize=True"
COMPLEX_LABELS = ["defaults", RICHEST]
LRS = [0.01 * 0.8**t if t % 5 else 0.05 for t in range(20)]  # falls, with jumps up


def test_grid_covers_every_flag_combination() -> None:
    assert len(GRID) == 4 and RICHEST in GRID


# ------------------------------------------------------------------ parity: torch and reference


def jit_report(dtype: Any, complex_dtype: Any, *, schedule: bool) -> dict[str, dict[str, float]]:
    """The grid (one compilation) and the complex cases (one more); in float32 these run
    with a schedule for lr (its values are float32 numbers: float64 adds nothing there)."""
    report = run_many(ROW, GRID, dtype, torch=torch)
    for label, errors in run_many(ROW, {k: GRID[k] for k in COMPLEX_LABELS}, complex_dtype,
                                  torch=torch, lr_per_step=LRS if schedule else None).items():
        report[f"complex:{label}"] = errors
    return report


@pytest.fixture(scope="module")
def f32() -> dict[str, dict[str, float]]:
    return jit_report(np.float32, np.complex64, schedule=True)


@pytest.fixture(scope="module")
def f64() -> dict[str, dict[str, float]]:
    with jax.enable_x64(True):
        return jit_report(np.float64, np.complex128, schedule=False)


KEYS = [*GRID, *(f"complex:{k}" for k in COMPLEX_LABELS)]


@pytest.mark.parametrize("key", KEYS)
def test_parity_float32(key: str, f32: dict[str, Any]) -> None:
    errors = f32[key]
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F32, errors
    assert theirs <= RTOL_TORCH_F32, errors


@pytest.mark.parametrize("key", KEYS)
def test_parity_float64(key: str, f64: dict[str, Any]) -> None:
    errors = f64[key]
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F64, errors
    assert theirs <= RTOL_TORCH_F64, errors


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
    hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}
    kernel = jax.jit(lambda *arrays, step: adamax_kernel(*arrays, step=step, **hyper))
    per_element = kernel(g, theta, m, u, step=steps)
    for i, t in enumerate(steps.tolist()):
        alone = kernel(g[i], theta[i], m[i], u[i], step=jnp.int32(t))
        for a, b in zip(per_element, alone):
            assert max_rel_error(a[i], b) <= 1e-7


def test_agrees_with_optax() -> None:
    """optax's adamax is the same math (ε inside the maximum too): two float32
    computations of the same formulas, each within RTOL_REF_F32 of exact."""
    rng = np.random.default_rng(4)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = [make_tree(rng, np.float32) for _ in range(20)]
    transforms = [adamax(lr=0.01, eps=1e-3), optax.adamax(0.01, eps=1e-3)]

    @jax.jit
    def update_all(g: Any, states: list[Any], params: list[Any]) -> list[Any]:
        return [tx.update(g, s, p) for tx, s, p in zip(transforms, states, params)]

    params = [params0] * 2
    states = [tx.init(params0) for tx in transforms]
    for g in grads:
        results = update_all(g, states, params)
        states = [s for _, s in results]
        params = [optax.apply_updates(p, u) for p, (u, _) in zip(params, results)]
    chex.assert_trees_all_close(params[0], params[1], rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


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


def test_none_leaves_zero_size_leaves_and_empty_trees() -> None:
    tx = adamax(weight_decay=0.1, skip_nonfinite=True)
    params = {"w": jnp.array([1.0, -2.0]), "frozen": None, "empty": jnp.zeros((0, 3))}
    grads = {"w": jnp.array([0.5, 3.0]), "frozen": None, "empty": jnp.zeros((0, 3))}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["frozen"] is None and updates["empty"].shape == (0, 3)
    for transform, empty in ((tx, {}), (tx, []), (adamax(), None)):
        state = transform.init(empty)
        _, new_state = transform.update(empty, state, empty)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_defaults_and_order_are_torchs() -> None:
    ours = inspect.signature(adamax).parameters
    theirs = inspect.signature(torch.optim.Adamax).parameters
    no_meaning = {"params", "foreach", "fused", "differentiable", "capturable"}
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD and n not in no_meaning]
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["maximize"].default is theirs["maximize"].default is False
    # The stateful face spells out the factory's signature.
    stateful = inspect.signature(fx.Adamax.__init__).parameters
    assert [(n, p.kind, p.default) for n, p in stateful.items()][2:] == [
        (n, p.kind, p.default) for n, p in ours.items()]


# ------------------------------------------------------------------ the stateful face
#
# tests/test_family.py checks the stateful face over the whole grid against torch (float32
# and float64), the functional face and torch's state dicts. Here: a packed buffer whose
# second Parameter joins late and skips steps, and whose third never steps, bit for bit
# against the functional face and against torch, buffers and counts included.

SHAPES = ((3, 2), (4,), (2,))
STATEFUL_STEPS = 8
STATEFUL_LABELS = ["defaults", RICHEST]


def _grads(t: int) -> list[np.ndarray | None]:
    """The first Parameter steps every time; the second joins at the second step and skips
    every third; the third never has a gradient, so every step has the same structure (one
    compiled program) and the last one must come through untouched."""
    rng = np.random.default_rng(1000 + t)
    grads: list[np.ndarray | None] = [rng.standard_normal(s).astype(np.float32)
                                      for s in SHAPES[:2]]
    if t % 3 == 0:
        grads[1] = None
    return [*grads, None]


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _functional() -> dict[str, list[np.ndarray]]:
    """Each label's first two parameters through the factory, a step applied only where
    there is a gradient; hyper-parameters traced as the stateful face traces them (its
    zeros compiled out too). One compiled program for every label and step."""
    assert ROW.stateful is not None
    compiled_out = ROW.stateful.compiled_out_at_zero
    static = {label: {k: v for k, v in GRID[label].items()
                      if is_static(v) or (k in compiled_out and v == 0)}
              for label in STATEFUL_LABELS}
    hypers = {label: {k: as_precise(v) for k, v in GRID[label].items()
                      if k not in static[label]} for label in STATEFUL_LABELS}

    @jax.jit
    def step(hypers: Any, grads: Any, has_grad: Any, states: Any, params: Any) -> Any:
        out = {}
        for key, g in grads.items():
            tx = ROW.factory(**static[key[0]], **hypers[key[0]])
            updates, state = tx.update(g, states[key], params[key])
            new = (fx.apply_updates(params[key], updates), state)
            out[key] = jax.tree.map(lambda n, o, key=key: jnp.where(has_grad[key], n, o),
                                    new, (params[key], states[key]))
        return out

    keys = [(label, i) for label in STATEFUL_LABELS for i in range(2)]
    params = {key: jnp.asarray(_initial()[key[1]]) for key in keys}
    states = {key: ROW.factory(**static[key[0]], **hypers[key[0]]).init(params[key])
              for key in keys}
    for t in range(STATEFUL_STEPS):
        grads = _grads(t)
        out = step(hypers, {key: jnp.zeros(SHAPES[key[1]]) if grads[key[1]] is None
                            else jnp.asarray(grads[key[1]]) for key in keys},
                   {key: grads[key[1]] is not None for key in keys}, states, params)
        params = {key: p for key, (p, _) in out.items()}
        states = {key: s for key, (_, s) in out.items()}
    assert step._cache_size() == 1
    return {label: [np.asarray(params[label, i]) for i in range(2)] for label in STATEFUL_LABELS}


@pytest.fixture(scope="module")
def faces() -> dict[str, dict[str, Any]]:
    """Each label through one stateful optimizer (a param group each: one compiled step),
    through torch (an optimizer each) and through the functional face."""
    assert ROW.stateful is not None
    ours = {label: [fx.Parameter(v) for v in _initial()] for label in STATEFUL_LABELS}
    opt = ROW.stateful([{"params": ps, **GRID[label]} for label, ps in ours.items()])
    theirs = {label: [torch.nn.Parameter(torch.tensor(v)) for v in _initial()]
              for label in STATEFUL_LABELS}
    torch_class = getattr(torch.optim, ROW.torch_class)
    with one_torch_thread(torch):
        topts = {label: torch_class(ps, foreach=False, **GRID[label])
                 for label, ps in theirs.items()}
        for t in range(STATEFUL_STEPS):
            opt.zero_grad()
            for label in STATEFUL_LABELS:
                topts[label].zero_grad(set_to_none=True)
                for p, q, g in zip(ours[label], theirs[label], _grads(t)):
                    if g is not None:
                        p.grad, q.grad = jnp.asarray(g), torch.tensor(g)
                topts[label].step()
            opt.step()
    functional = _functional()
    return {label: {
        "packed": len({id(p._pack) for p in ours[label]}) == 1,
        "ours": [np.asarray(p.value) for p in ours[label]],
        "state": [dict(opt.state[p]) for p in ours[label][:2]],
        "torch": [q.detach().numpy() for q in theirs[label]],
        "torch_state": [topts[label].state[q] for q in theirs[label][:2]],
        "functional": functional[label],
    } for label in STATEFUL_LABELS}


@pytest.mark.parametrize("label", STATEFUL_LABELS)
def test_stateful_matches_torch_and_the_functional_face(label: str, faces: Any) -> None:
    run = faces[label]
    assert run["packed"]
    for ours, theirs in zip(run["ours"], run["torch"]):
        assert max_rel_error(ours, theirs) <= RTOL_TORCH_F32, label
    np.testing.assert_array_equal(run["ours"][2], _initial()[2])  # never had a gradient
    for state, torch_state in zip(run["state"], run["torch_state"]):
        assert set(state) == {"step", *ROW.buffers}
        assert int(state["step"]) == int(torch_state["step"])
        for key in ROW.buffers:
            assert max_rel_error(state[key], torch_state[key].numpy()) <= RTOL_TORCH_F32, key
    assert [int(s["step"]) for s in run["state"]] == [STATEFUL_STEPS, STATEFUL_STEPS - 3]
    # The same math on the same traced hyper-parameters, masked alike: bit for bit.
    for ours, functional in zip(run["ours"], run["functional"]):
        np.testing.assert_array_equal(ours, functional, err_msg=label)


# ------------------------------------------------------------------ errors


HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    (f"{name}={value}", {name: value},
     rf"Invalid {name} value: {re_value} \(expected a number >= 0\.0\)")
    for name in ("lr", "eps", "weight_decay")
    for value, re_value in ((-0.1, r"-0\.1"), (math.nan, "nan"))
] + [
    (f"betas[{i}]={value}", {"betas": (value, 0.999) if i == 0 else (0.9, value)},
     rf"Invalid betas\[{i}\] value: {re_value} \(expected a number in \[0\.0, 1\.0\)\)")
    for i in (0, 1) for value, re_value in ((1.0, r"1\.0"), (-0.1, r"-0\.1"), (math.nan, "nan"))
] + [
    ("betas=0.9", {"betas": 0.9}, r"Invalid betas value: 0\.9 \(expected a pair \(beta1, beta2\)"),
    ("betas of 3", {"betas": (0.9, 0.99, 0.999)}, r"Invalid betas value: \(0\.9, 0\.99, 0\.999\)"),
    ("lr=str", {"lr": "0.1"}, r"Invalid lr value: '0\.1' \(expected a real number\)"),
    ("maximize=1", {"maximize": 1}, r"Invalid maximize value: 1 \(expected True or False\)"),
    ("skip_nonfinite=str", {"skip_nonfinite": "yes"},
     r"Invalid skip_nonfinite value: 'yes' \(expected True or False\)"),
    ("state_dtype=int8", {"state_dtype": np.int8},
     r"Invalid state_dtype value: .*int8.* \(expected None or a floating-point dtype\)"),
]


@pytest.mark.parametrize("kwargs, pattern", [e[1:] for e in HYPER_ERRORS],
                         ids=[e[0] for e in HYPER_ERRORS])
def test_invalid_hyperparameters_raise_in_both_faces(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        adamax(**kwargs)
    params = [fx.Parameter(jnp.ones(2))]
    with pytest.raises(ValueError, match=pattern):
        fx.Adamax(params, **kwargs)
    assert params[0]._pack is None  # nothing claimed


@pytest.mark.parametrize("kwargs", [{"lr": -0.1}, {"eps": -0.1}, {"weight_decay": -0.1},
                                    {"betas": (1.0, 0.999)}, {"betas": (0.9, 1.0)},
                                    {"betas": (-0.1, 0.999)}], ids=str)
def test_torch_refuses_the_same_values(kwargs: dict[str, Any]) -> None:
    with one_torch_thread(torch), pytest.raises(ValueError):
        torch.optim.Adamax([torch.zeros(1, requires_grad=True)], **kwargs)


def test_update_errors_name_the_problem() -> None:
    params = {"a": jnp.ones(2), "b": [jnp.ones(3)]}
    with pytest.raises(TypeError, match=r"adamax optimizes floating-point parameters only"):
        adamax().init({"n": jnp.ones(2, jnp.int32)})
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['b'\]\[0\] is "
                                         r"missing from gradients"):
        adamax().update({"a": jnp.ones(2), "b": []}, adamax().init(params))
    tx = adamax(weight_decay=0.1)
    with pytest.raises(ValueError, match=r"adamax: weight_decay is non-zero, so update\(\) "
                                         r"needs params"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=r"the state lacks skipped, so it was made by an "
                                         r"adamax with a different skip_nonfinite"):
        adamax(skip_nonfinite=True).update(params, adamax().init(params))
    with pytest.raises(TypeError, match=r"adamax: state must be the AdamaxState"):
        adamax().update(params, fx.adam().init(params))


def test_load_refuses_a_negative_exp_inf_and_changes_nothing() -> None:
    params = [fx.Parameter(jnp.ones(2))]
    opt = fx.Adamax(params)
    saved = opt.state_dict()
    saved["state"] = {0: {"step": np.int32(1),
                          "exp_avg": np.zeros(2, np.float32),
                          "exp_inf": np.array([1.0, -1.0], np.float32)}}
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_inf'\] holds a negative value "
                                         r"\(-1\.0\); a maximum of \|g\| \+ eps is never negative"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == {}
