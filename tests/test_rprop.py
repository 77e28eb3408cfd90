"""Tests of ``lucid_fx.rprop`` and ``fx.Rprop``: torch.optim.Rprop parity over every flag
combination and both clamps (float32 and float64, jit, complex as torch's real pairs), the
float64 reference (tests/reference.py), the stateful face over packed Parameters that skip
steps, and every error path.

float64 runs in this process under ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

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
    one_torch_thread,
    run_many,
    split,
)
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx.hyperparameters import as_precise, is_static
from lucid_fx.rprop import RpropState, rprop, rprop_kernel

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["rprop"]
GRID = ROW.grid
RICHEST = "etas=(0.25, 1.5),step_sizes=(0.001, 0.02),maximize=True"
COMPLEX_LABELS = ["defaults", RICHEST]


def test_grid_covers_every_flag_combination() -> None:
    assert len(GRID) == 8 and RICHEST in GRID


# ------------------------------------------------------------------ parity: torch and reference


def jit_report(dtype: Any, complex_dtype: Any) -> dict[str, dict[str, float]]:
    """The grid (one compilation) and the complex cases (one more). Rprop reads lr once,
    in init: there is no schedule to test (see test_a_schedule_for_lr_is_refused)."""
    report = run_many(ROW, GRID, dtype, torch=torch)
    for label, errors in run_many(ROW, {k: GRID[k] for k in COMPLEX_LABELS}, complex_dtype,
                                  torch=torch).items():
        report[f"complex:{label}"] = errors
    return report


@pytest.fixture(scope="module")
def f32() -> dict[str, dict[str, float]]:
    return jit_report(np.float32, np.complex64)


@pytest.fixture(scope="module")
def f64() -> dict[str, dict[str, float]]:
    with jax.enable_x64(True):
        return jit_report(np.float64, np.complex128)


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


def test_state_layout() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones((), jnp.bfloat16)}
    plain = rprop(lr=0.5).init(params)
    assert isinstance(plain, RpropState)
    assert plain._fields == ("step", "prev", "step_size", "skipped")
    assert plain.skipped is None and plain.step.dtype == jnp.int32 and int(plain.step) == 0
    assert plain.step_size["b"].dtype == jnp.bfloat16 and plain.step_size["w"].tolist() == [0.5] * 3
    wide = rprop(skip_nonfinite=True, state_dtype=jnp.float32).init(params)
    assert wide.prev["b"].dtype == wide.step_size["b"].dtype == jnp.float32
    assert int(wide.skipped) == 0


def test_none_leaves_zero_size_leaves_and_empty_trees() -> None:
    tx = rprop(skip_nonfinite=True)
    params = {"w": jnp.array([1.0, -2.0]), "frozen": None, "empty": jnp.zeros((0, 3))}
    grads = {"w": jnp.array([0.5, 3.0]), "frozen": None, "empty": jnp.zeros((0, 3))}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["frozen"] is None and updates["empty"].shape == (0, 3)
    for transform, empty in ((tx, {}), (tx, []), (rprop(), None)):
        state = transform.init(empty)
        _, new_state = transform.update(empty, state, empty)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_defaults_and_order_are_torchs() -> None:
    ours = inspect.signature(rprop).parameters
    theirs = inspect.signature(torch.optim.Rprop).parameters
    no_meaning = {"params", "foreach", "fused", "differentiable", "capturable"}
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD and n not in no_meaning]
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["maximize"].default is theirs["maximize"].default is False
    # The stateful face spells out the factory's signature.
    stateful = inspect.signature(fx.Rprop.__init__).parameters
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


def _lr_written_after_the_first_step(grads: list[list[np.ndarray | None]]) -> list[Any]:
    """Step sizes of both faces after lr is written into param_groups between two steps."""
    params = [fx.Parameter(v) for v in _initial()]
    opt = fx.Rprop(params, lr=0.01)
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in _initial()]
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
    both = [[g for g in _grads(t + 1)] for t in range(3)]  # both parameters step every time
    for ours, theirs in _lr_written_after_the_first_step(both):
        np.testing.assert_array_equal(ours, theirs)
        assert np.all(ours <= 0.01 * 1.2**3)


def test_a_parameter_joining_after_lr_was_written_starts_at_the_new_lr() -> None:
    late = [_grads(0), _grads(1), _grads(2)]  # _grads(0) has no gradient for the second one
    assert late[0][1] is None
    for ours, theirs in _lr_written_after_the_first_step(late):
        np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ errors


HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr<0", {"lr": -0.1}, r"Invalid lr value: -0\.1 \(expected a number >= 0\.0\)"),
    ("lr=nan", {"lr": math.nan}, r"Invalid lr value: nan \(expected a number >= 0\.0\)"),
    ("lr=str", {"lr": "0.1"}, r"Invalid lr value: '0\.1' \(expected a real number\)"),
    ("etas=0.5", {"etas": 0.5},
     (r"Invalid etas value: 0\.5 \(expected a pair \(etaminus, etaplus\), 0 < etaminus < 1 < "
      r"etaplus\)")),
    ("etas of 3", {"etas": (0.5, 1.2, 2.0)}, r"Invalid etas value: \(0\.5, 1\.2, 2\.0\)"),
    ("etas[0]=0", {"etas": (0.0, 1.2)},
     r"Invalid etas\[0\] value: 0\.0 \(expected a number in \(0\.0, 1\.0\)\)"),
    ("etas[0]=1", {"etas": (1.0, 1.2)}, r"Invalid etas\[0\] value: 1\.0 \(expected a number in"),
    ("etas[0]=nan", {"etas": (math.nan, 1.2)},
     r"Invalid etas\[0\] value: nan \(expected a real number\)"),
    ("etas[1]=1", {"etas": (0.5, 1.0)},
     r"Invalid etas\[1\] value: 1\.0 \(expected a number > 1\.0\)"),
    ("etas[1]=str", {"etas": (0.5, "2")},
     r"Invalid etas\[1\] value: '2' \(expected a real number\)"),
    ("step_sizes=1", {"step_sizes": 1.0},
     r"Invalid step_sizes value: 1\.0 \(expected a pair \(min, max\), 0 <= min <= max\)"),
    ("step_sizes[0]<0", {"step_sizes": (-1e-6, 50)},
     r"Invalid step_sizes\[0\] value: -1e-06 \(expected a number >= 0\.0\)"),
    ("step_sizes[1]=nan", {"step_sizes": (1e-6, math.nan)},
     r"Invalid step_sizes\[1\] value: nan \(expected a number >= 0\.0\)"),
    ("step_sizes reversed", {"step_sizes": (1.0, 0.5)},
     r"Invalid step_sizes value: \(1\.0, 0\.5\) \(expected min <= max\)"),
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
        rprop(**kwargs)
    params = [fx.Parameter(jnp.ones(2))]
    with pytest.raises(ValueError, match=pattern):
        fx.Rprop(params, **kwargs)
    assert params[0]._pack is None  # nothing claimed


@pytest.mark.parametrize("etas", [(0.0, 1.2), (1.0, 1.2), (0.5, 1.0)], ids=str)
def test_torch_refuses_the_same_etas(etas: tuple[float, float]) -> None:
    with one_torch_thread(torch), pytest.raises(ValueError):
        torch.optim.Rprop([torch.zeros(1, requires_grad=True)], etas=etas)


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
    with pytest.raises(ValueError, match=r"lr"):
        fx.Rprop([fx.Parameter(jnp.ones(2))], lr=optax.constant_schedule(0.1))


def test_traced_hyperparameters_are_accepted() -> None:
    def run(etas: Any, sizes: Any, lr: Any) -> Any:
        tx = rprop(lr, etas, sizes)
        params = jnp.zeros(2)
        return tx.update(jnp.array([1.0, -1.0]), tx.init(params))

    updates, state = jax.jit(run)((0.5, 1.2), (1e-6, 50.0), 0.25)
    assert updates.tolist() == [-0.25, 0.25] and state.step_size.tolist() == [0.25, 0.25]


def test_update_errors_name_the_problem() -> None:
    params = {"a": jnp.ones(2), "b": [jnp.ones(3)]}
    with pytest.raises(TypeError, match=r"rprop optimizes floating-point parameters only"):
        rprop().init({"n": jnp.ones(2, jnp.int32)})
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['b'\]\[0\] is "
                                         r"missing from gradients"):
        rprop().update({"a": jnp.ones(2), "b": []}, rprop().init(params))
    with pytest.raises(ValueError, match=r"the state lacks skipped, so it was made by an "
                                         r"rprop with a different skip_nonfinite"):
        rprop(skip_nonfinite=True).update(params, rprop().init(params))
    with pytest.raises(TypeError, match=r"rprop: state must be the RpropState"):
        rprop().update(params, fx.adam().init(params))


def test_load_refuses_a_negative_step_size_and_changes_nothing() -> None:
    params = [fx.Parameter(jnp.ones(2))]
    opt = fx.Rprop(params)
    saved = opt.state_dict()
    saved["state"] = {0: {"step": np.int32(1),
                          "prev": np.zeros(2, np.float32),
                          "step_size": np.array([1.0, -1.0], np.float32)}}
    with pytest.raises(ValueError, match=r"state\[0\]\['step_size'\] holds a negative value "
                                         r"\(-1\.0\); a step size is never negative"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == {}
