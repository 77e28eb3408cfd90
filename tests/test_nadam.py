"""Tests of ``lucid_fx.nadam`` and ``fx.NAdam``: torch.optim.NAdam parity over every flag
combination, functional and stateful, float32 and float64 (in-process x64), complex
parameters as torch's real pairs, the float64 reference (tests/reference.py), a changing
lr, the per-parameter ``mu_product`` in packed buffers, and every error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import (
    ROWS,
    RTOL_REF_F32,
    RTOL_REF_F64,
    RTOL_TORCH_F32,
    RTOL_TORCH_F64,
    STEPS,
    Row,
    one_torch_thread,
    run_many,
    split,
)
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx.hyperparameters import as_precise
from lucid_fx.nadam import NAdamState, momentum_cache, nadam

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["nadam"]
SCALARS = ("mu_product",)  # per-parameter scalars, compared here (test_family reads buffers)
# Complex parameters: the richest configuration, every path of the kernel at once.
COMPLEX_LABELS = ["weight_decay=0.1,decoupled_weight_decay=True,maximize=True"]
KEYS = list(ROW.grid) + [f"complex:{label}" for label in COMPLEX_LABELS]
LRS = [0.01 * 0.8**t if t % 5 else 0.05 for t in range(STEPS)]  # for the float64 run


def test_grid_covers_every_flag_combination() -> None:
    assert len(ROW.grid) == 8


# ------------------------------------------------------------------ parity: torch and reference


def with_scalars(row: Row, keys: tuple[str, ...]) -> Row:
    """``row`` that also compares the shared 0-d ``keys`` (the reference's floats, torch's
    first parameter's: every parameter of a run takes every step, so all agree)."""

    def reference(*args: Any, **kwargs: Any) -> Any:
        history, state = row.reference(*args, **kwargs)
        return history, {**state, **{k: [np.asarray(state[k])] for k in keys}}

    return dataclasses.replace(row, reference=reference, buffers=row.buffers + keys)


@contextlib.contextmanager
def torch_default_dtype(dtype: Any) -> Iterator[None]:
    """torch keeps per-parameter scalars (mu_product) in its default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def f32() -> dict[str, dict[str, float]]:
    """The grid in one jit, the complex cases (complex64) in another."""
    row = with_scalars(ROW, SCALARS)
    errors = run_many(row, row.grid, np.float32, torch=torch)
    configs = {label: row.grid[label] for label in COMPLEX_LABELS}
    for label, e in run_many(row, configs, np.complex64, torch=torch).items():
        errors[f"complex:{label}"] = e
    return errors


@pytest.fixture(scope="module")
def f64() -> dict[str, dict[str, float]]:
    """The grid in float64, in this process, under a changing lr: a schedule for ours,
    ``param_groups[0]["lr"]`` set before each step for torch's. (Complex is the same code
    as above; a constant lr is the float32 run's.)"""
    with jax.enable_x64(True), torch_default_dtype(torch.float64):
        return run_many(with_scalars(ROW, SCALARS), ROW.grid, np.float64, torch=torch,
                        lr_per_step=LRS)


@pytest.mark.parametrize("key", KEYS)
def test_parity_float32(key: str, f32: dict[str, Any]) -> None:
    errors = f32[key]
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F32, errors
    assert theirs <= RTOL_TORCH_F32, errors


@pytest.mark.parametrize("key", list(ROW.grid))
def test_parity_float64_with_changing_lr(key: str, f64: dict[str, Any]) -> None:
    """μ_t's factors use the current η, as torch's do."""
    errors = f64[key]
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F64, errors
    assert theirs <= RTOL_TORCH_F64, errors


def test_defaults_and_order_are_torchs() -> None:
    ours = inspect.signature(nadam).parameters
    theirs = inspect.signature(torch.optim.NAdam).parameters
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD and n != "params"]
    assert positional[0] == ("lr", 2e-3)
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["maximize"].default == theirs["maximize"].default


def test_the_class_signature_is_the_factorys() -> None:
    """fx.NAdam spells its signature out for IDEs; the defaults live in fx.nadam."""
    written = list(inspect.signature(fx.NAdam.__init__).parameters.values())
    assert [p.name for p in written[:2]] == ["self", "params"]
    assert [(p.name, p.kind, p.default) for p in written[2:]] == [
        (p.name, p.kind, p.default) for p in inspect.signature(nadam).parameters.values()]


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


# ------------------------------------------------------------------ the stateful face

# One pack of three Parameters under the richest configuration: the first steps every
# time, the second skips steps (torch then advances neither its step nor its mu_product),
# the third never has a gradient (no state, as in torch; and every step of the pack is
# a masked one, so it compiles once). A fourth joins by add_param_group, with defaults.
SHAPES = ((3, 2), (4,), (2,), (5,))
GROUPS = ["weight_decay=0.1,decoupled_weight_decay=True,maximize=True", "defaults"]
STATEFUL_STEPS = 10
JOIN = 4  # the fourth Parameter's group is added before this step
STEPPED = (0, 1, 3)  # the Parameters that take steps
# XLA contracts some multiply-adds (θ·(1-ηλ) + u) into FMAs differently in the packed
# trace and in the per-array one: an ulp apart now and then, as test_sgd_optimizer allows.
RTOL_FACES, ATOL_FACES = 2**-22, 1e-7


def _config(i: int) -> dict[str, Any]:
    return dict(ROW.grid[GROUPS[1 if i == 3 else 0]])


def _grads(t: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng([t, 7])
    grads: list[np.ndarray | None] = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    if t % 3 == 1:
        grads[1] = None
    grads[2] = None
    if t < JOIN:
        grads[3] = None
    return grads


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


@pytest.fixture(scope="module")
def stateful() -> dict[str, Any]:
    """fx.NAdam and torch's NAdam side by side; and the functional face on each Parameter,
    stepping only with a gradient, with hyper-parameters as the stateful face passes them."""
    ours = [fx.Parameter(jnp.asarray(v)) for v in _initial()]
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in _initial()]
    opt = fx.NAdam([{"params": ours[:3], **_config(0)}])
    with one_torch_thread(torch):
        topt = torch.optim.NAdam([{"params": theirs[:3], **_config(0)}], foreach=False)
        for t in range(STATEFUL_STEPS):
            if t == JOIN:
                opt.add_param_group({"params": [ours[3]], **_config(3)})
                topt.add_param_group({"params": [theirs[3]], **_config(3)})
            opt.zero_grad()
            topt.zero_grad(set_to_none=True)
            for p, q, g in zip(ours, theirs, _grads(t)):
                if g is not None:
                    p.grad, q.grad = jnp.asarray(g), torch.tensor(g)
            opt.step()
            topt.step()
    assert len({id(p._pack) for p in ours[:3]}) == 1, "not packed together"
    return {"opt": opt, "topt": topt, "ours": ours, "theirs": theirs,
            "functional": _functional()}


def _functional() -> dict[int, Any]:
    """Each Parameter alone through fx.nadam; a step without its gradient keeps it as it is."""
    txs = {i: nadam(**{k: v if isinstance(v, bool) else as_precise(v)
                       for k, v in _config(i).items()}) for i in STEPPED}

    @jax.jit
    def step(grads: Any, states: Any, params: Any, active: Any) -> Any:
        out = {}
        for i, tx in txs.items():
            updates, state = tx.update(grads[i], states[i], params[i])
            keep = lambda new, old, i=i: jnp.where(active[i], new, old)
            out[i] = (keep(fx.apply_updates(params[i], updates), params[i]),
                      jax.tree.map(keep, state, states[i]))
        return out

    params = {i: jnp.asarray(_initial()[i]) for i in STEPPED}
    states = {i: txs[i].init(params[i]) for i in STEPPED}
    for t in range(STATEFUL_STEPS):
        grads = {i: _grads(t)[i] for i in STEPPED}
        zeros = {i: np.zeros_like(params[i]) if g is None else g for i, g in grads.items()}
        results = step(zeros, states, params, {i: g is not None for i, g in grads.items()})
        params = {i: results[i][0] for i in STEPPED}
        states = {i: results[i][1] for i in STEPPED}
    assert step._cache_size() == 1
    return {i: (params[i], states[i]) for i in STEPPED}


@pytest.mark.parametrize("i", STEPPED)
def test_stateful_matches_torch_per_parameter(i: int, stateful: dict[str, Any]) -> None:
    """Each Parameter's value and every state key (step and mu_product included) is torch's:
    for the one that skips steps and the late one too."""
    opt, topt = stateful["opt"], stateful["topt"]
    p, q = stateful["ours"][i], stateful["theirs"][i]
    errors = {"param": max_rel_error(p.value, q.detach().numpy())}
    assert set(opt.state[p]) == set(topt.state[q])
    for key, value in topt.state[q].items():
        errors[key] = max_rel_error(opt.state[p][key], value.numpy())
    assert max(errors.values()) <= RTOL_TORCH_F32, errors
    expected_steps = {0: STATEFUL_STEPS, 1: STATEFUL_STEPS - 3, 3: STATEFUL_STEPS - JOIN}
    assert int(opt.state[p]["step"]) == expected_steps[i]


def test_a_parameter_without_gradients_has_no_state(stateful: dict[str, Any]) -> None:
    never = stateful["ours"][2]
    assert never not in stateful["opt"].state and stateful["theirs"][2] not in stateful["topt"].state
    np.testing.assert_array_equal(never.value, _initial()[2])


@pytest.mark.parametrize("i", STEPPED)
def test_stateful_equals_functional(i: int, stateful: dict[str, Any]) -> None:
    """The stateful face is the functional one on packed buffers."""
    value, state = stateful["functional"][i]
    p = stateful["ours"][i]
    np.testing.assert_allclose(p.value, value, rtol=RTOL_FACES, atol=ATOL_FACES)
    for name, array in stateful["opt"].state[p].items():
        np.testing.assert_allclose(array, getattr(state, name), rtol=RTOL_FACES,
                                   atol=ATOL_FACES, err_msg=name)


def test_state_dict_round_trip(stateful: dict[str, Any]) -> None:
    """Per-parameter scalars travel one per Parameter, as torch's state dict holds them."""
    opt = stateful["opt"]
    saved = opt.state_dict()
    params = [fx.Parameter(jnp.asarray(p.value)) for p in stateful["ours"]]
    copy = fx.NAdam([{"params": params[:3], **_config(0)}])
    copy.add_param_group({"params": [params[3]], **_config(3)})
    copy.load_state_dict(saved)
    assert sorted(copy.state_dict()["state"]) == sorted(saved["state"]) == [0, 1, 3]
    for p, q in zip(stateful["ours"], params):
        assert set(opt.state.get(p, {})) == set(copy.state.get(q, {}))
        for key, value in opt.state.get(p, {}).items():
            np.testing.assert_array_equal(copy.state[q][key], value, err_msg=key)


def test_torch_state_dicts_both_ways(stateful: dict[str, Any]) -> None:
    """torch's state dict loads into fx.NAdam, and fx.NAdam's exports into torch's, every
    per-parameter entry as it was (steps as counts here, float tensors there)."""
    opt, topt = stateful["opt"], stateful["topt"]
    ours = [fx.Parameter(jnp.asarray(p.value)) for p in stateful["ours"]]
    copy = fx.NAdam([{"params": ours[:3], **_config(0)}])
    copy.add_param_group({"params": [ours[3]], **_config(3)})
    copy.load_state_dict(topt.state_dict())
    theirs = [torch.nn.Parameter(q.detach().clone()) for q in stateful["theirs"]]
    tcopy = torch.optim.NAdam([{"params": theirs[:3], **_config(0)}], foreach=False)
    tcopy.add_param_group({"params": [theirs[3]], **_config(3)})
    tcopy.load_state_dict(opt.torch_state_dict())
    for i in STEPPED:
        p, q = stateful["ours"][i], stateful["theirs"][i]
        assert set(copy.state[ours[i]]) == set(topt.state[q]) == set(tcopy.state[theirs[i]])
        for key, value in topt.state[q].items():
            np.testing.assert_array_equal(copy.state[ours[i]][key], value.numpy(), err_msg=key)
            np.testing.assert_array_equal(tcopy.state[theirs[i]][key].numpy(), opt.state[p][key],
                                          err_msg=key)
    assert stateful["ours"][2] not in copy.state and theirs[2] not in tcopy.state


def test_bad_value_in_param_groups_changes_nothing(stateful: dict[str, Any]) -> None:
    opt = stateful["opt"]
    p = stateful["ours"][0]
    before, state = np.asarray(p.value), {k: np.asarray(v) for k, v in opt.state[p].items()}
    opt.param_groups[0]["momentum_decay"] = -1.0
    p.grad = jnp.ones_like(p.value)
    try:
        with pytest.raises(ValueError, match=r"Invalid momentum_decay value: -1\.0"):
            opt.step()
    finally:
        opt.param_groups[0]["momentum_decay"] = 4e-3
    np.testing.assert_array_equal(p.value, before)
    for k, v in opt.state[p].items():
        np.testing.assert_array_equal(v, state[k])


# ------------------------------------------------------------------ errors


HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr<0", {"lr": -0.1}, r"Invalid lr value: -0\.1 \(expected a number >= 0\.0\)"),
    ("eps<0", {"eps": -1e-08}, r"Invalid eps value: -1e-08 \(expected a number >= 0\.0\)"),
    ("weight_decay<0", {"weight_decay": -1e-4},
     r"Invalid weight_decay value: -0\.0001 \(expected a number >= 0\.0\)"),
    ("momentum_decay<0", {"momentum_decay": -4e-3},
     r"Invalid momentum_decay value: -0\.004 \(expected a number >= 0\.0\)"),
    ("betas[0]=1", {"betas": (1.0, 0.999)},
     r"Invalid betas\[0\] value: 1\.0 \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas[1]<0", {"betas": (0.9, -0.1)},
     r"Invalid betas\[1\] value: -0\.1 \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas=0.9", {"betas": 0.9}, r"Invalid betas value: 0\.9 \(expected a pair"),
    ("decoupled=str", {"decoupled_weight_decay": "yes"},
     r"Invalid decoupled_weight_decay value: 'yes' \(expected True or False\)"),
    ("maximize=1", {"maximize": 1}, r"Invalid maximize value: 1 \(expected True or False\)"),
    ("skip_nonfinite=None", {"skip_nonfinite": None},
     r"Invalid skip_nonfinite value: None \(expected True or False\)"),
    ("state_dtype=int8", {"state_dtype": np.int8},
     r"Invalid state_dtype value: .*int8.* \(expected None or a floating-point dtype\)"),
] + [
    (f"{name}=nan", {name: math.nan}, rf"Invalid {name} value: nan \(expected a number")
    for name in ("lr", "eps", "weight_decay", "momentum_decay")
]


@pytest.mark.parametrize("kwargs, pattern", [e[1:] for e in HYPER_ERRORS],
                         ids=[e[0] for e in HYPER_ERRORS])
def test_invalid_hyperparameters_raise_in_both_faces(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        nadam(**kwargs)
    p = fx.Parameter(jnp.ones(2))
    with pytest.raises(ValueError, match=pattern):
        fx.NAdam([p], **kwargs)
    assert p._pack is None  # the Parameter was not taken over


def test_update_errors_name_the_problem() -> None:
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"nadam: weight_decay is non-zero, so update\(\) "
                                         r"needs params"):
        nadam(weight_decay=0.1).update(params, nadam(weight_decay=0.1).init(params))
    with pytest.raises(ValueError, match=r"the state lacks skipped, so it was made by an nadam "
                                         r"with a different skip_nonfinite"):
        nadam(skip_nonfinite=True).update(params, nadam().init(params))
    with pytest.raises(TypeError, match=r"nadam: state must be the NAdamState"):
        nadam().update(params, fx.adam().init(params))
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['b'\] is "
                                         r"unexpected in gradients"):
        nadam().update({"a": jnp.ones(2), "b": jnp.ones(1)}, nadam().init(params))
    with pytest.raises(TypeError, match=r"nadam optimizes floating-point parameters only"):
        nadam().init({"n": jnp.arange(2)})
