"""Tests of ``fx.RMSprop``, Lucid's stateful RMSprop (docs/optimizers.md) over ``fx.rmsprop``.

One table of labelled configurations drives three comparisons, step for step:
the adapter against the functional transform in a hand-written jitted loop
(bitwise), against the float64 NumPy reference of tests/reference.py (float32 here,
float64 under ``jax.enable_x64(True)``), and for hyper-parameters changed mid-run
against the reference fed the same changes, counting backend compilations.
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import CompileCounter
from reference import RMSpropReference, max_rel_error, reference_run

import lucid_fx as fx
from lucid_fx._src.core.scalars import as_precise

# Named tolerances, as max_rel_error (|a - b| / max(1, |b|)).
RTOL_F32 = 5e-6  # float32 vs the float64 reference over STEPS steps (measured <= 1.1e-6)
RTOL_F64 = 1e-13  # float64 vs the float64 reference: rounding only (measured <= 1e-15)
# The adapter feeds hyper-parameters as arrays; a loop that bakes Python floats into
# its trace lets XLA fold them as constants, which rounds differently by a few ulps
# per step (measured <= 8.4e-7 over STEPS steps).
RTOL_CONSTANT_HYPERS = 4e-6
STEPS = 20

PAGE_DEFAULTS = {"lr": 0.01, "alpha": 0.99, "eps": 1e-08, "weight_decay": 0,
                 "momentum": 0, "centered": False}


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled configuration of ``fx.RMSprop`` (keyword arguments) and a dtype kind."""

    label: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_complex: bool = False

    def reference_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k != "skip_nonfinite"}


CASES = [
    Case("defaults"),
    Case("momentum", dict(momentum=0.9)),
    Case("centered", dict(centered=True)),
    Case("weight_decay", dict(weight_decay=0.1)),
    Case("maximize", dict(maximize=True)),
    Case("momentum+centered+weight_decay+maximize",
         dict(momentum=0.9, centered=True, weight_decay=0.1, maximize=True)),
    Case("lr=0.1,alpha=0.9,momentum=0.5", dict(lr=0.1, alpha=0.9, momentum=0.5)),
    Case("alpha=0.5,eps=1e-3", dict(alpha=0.5, eps=1e-3)),
    Case("alpha=0,momentum", dict(alpha=0.0, momentum=0.5)),
    Case("alpha=1,eps=0.1", dict(alpha=1.0, eps=0.1)),
    Case("skip_nonfinite,finite", dict(skip_nonfinite=True, momentum=0.9)),
    Case("complex", is_complex=True),
    Case("complex+momentum+centered+weight_decay",
         dict(momentum=0.9, centered=True, weight_decay=0.1), is_complex=True),
]
assert len({c.label for c in CASES}) == len(CASES), "case labels must be unique"

SHAPES = [(3, 4), (5,), (), (2, 0)]


def _arrays(rng: np.random.Generator, dtype: Any) -> list[np.ndarray]:
    def leaf(shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal(shape)
        if np.issubdtype(dtype, np.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return np.asarray(x).astype(dtype)

    return [leaf(s) for s in SHAPES]


def problem(case: Case, dtype: Any) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Initial values and STEPS gradient lists, seeded by the case label."""
    rng = np.random.default_rng(zlib.crc32(case.label.encode()))
    return _arrays(rng, dtype), [_arrays(rng, dtype) for _ in range(STEPS)]


def run_adapter(case: Case, values: list[np.ndarray], grads: list[list[np.ndarray]]
                ) -> tuple[list[list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """Values after each step and the final state (per field, per parameter)."""
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop(params, **case.kwargs)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = jnp.asarray(g)
        opt.step()
        history.append([np.asarray(p.value) for p in params])
    state = {k: [np.asarray(opt.state[p][k]) for p in params] for k in opt.state[params[0]]}
    return history, state


def _functional(case: Case, hyper: dict[str, Any]) -> fx.GradientTransformation:
    kwargs = {**case.kwargs, **hyper}
    # A plain 0 keeps momentum's buffer out, as the adapter does while momentum is 0.
    if case.kwargs.get("momentum", 0) == 0:
        kwargs["momentum"] = 0
    return fx.rmsprop(**kwargs)


def run_functional(case: Case, values: list[np.ndarray], grads: list[list[np.ndarray]],
                   *, traced_hypers: bool) -> tuple[list[list[np.ndarray]], Any]:
    """A hand-written jitted loop over ``fx.rmsprop`` on the list of arrays."""
    numbers = {k: v for k, v in {**PAGE_DEFAULTS, **case.kwargs}.items()
               if k in ("lr", "alpha", "eps", "weight_decay", "momentum")}
    if traced_hypers:
        # Traced as the stateful face traces them: double precision, as a pair of floats.
        hyper = {k: as_precise(v) for k, v in numbers.items()}
        update = jax.jit(lambda g, s, p, h: _functional(case, h).update(g, s, p))
    else:
        hyper = {}
        tx = _functional(case, numbers)
        update = jax.jit(lambda g, s, p, h: tx.update(g, s, p))
    params = [jnp.asarray(v) for v in values]
    state = _functional(case, hyper or numbers).init(params)
    history = []
    for step_grads in grads:
        updates, state = update([jnp.asarray(g) for g in step_grads], state, params, hyper)
        params = fx.apply_updates(params, updates)
        history.append([np.asarray(p) for p in params])
    return history, state


def widen(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def reference_errors(case: Case, dtype: Any) -> dict[str, float]:
    """Max error of the adapter against the reference, per quantity, over every step."""
    values, grads = problem(case, dtype)
    history, state = run_adapter(case, values, grads)
    ref_history, ref_state = reference_run([widen(v) for v in values],
                                           [[widen(g) for g in gs] for gs in grads],
                                           **case.reference_kwargs())
    errors = {"params": max(max_rel_error(a, e) for step_a, step_e in zip(history, ref_history)
                            for a, e in zip(step_a, step_e))}
    for key in ("square_avg", "grad_avg", "momentum_buffer"):
        if ref_state[key] is None:
            assert key not in state, f"{key} exists but the reference has none"
        else:
            errors[key] = max(max_rel_error(a, e) for a, e in zip(state[key], ref_state[key]))
    errors["step"] = float(max(abs(int(s) - STEPS) for s in state["step"]))
    return errors


# ------------------------------------------------------------------ the documented signature


def test_defaults_and_signature_are_the_pages() -> None:
    signature = inspect.signature(fx.RMSprop)
    names = list(signature.parameters)
    assert names[:7] == ["params", *PAGE_DEFAULTS]
    for name, default in PAGE_DEFAULTS.items():
        parameter = signature.parameters[name]
        assert parameter.default == default and type(parameter.default) is type(default), name
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    opt = fx.RMSprop([fx.Parameter(jnp.zeros(2))])
    assert {k: opt.defaults[k] for k in PAGE_DEFAULTS} == PAGE_DEFAULTS
    assert opt.defaults["maximize"] is False
    # Positional arguments in the documented order (Lucid's and torch's), and torch's
    # four more after them (test_family checks the whole signature against torch's).
    opt = fx.RMSprop([fx.Parameter(jnp.zeros(2))], 0.1, 0.9, 1e-6, 0.01, 0.5, True)
    group = opt.param_groups[0]
    assert [group[k] for k in PAGE_DEFAULTS] == [0.1, 0.9, 1e-6, 0.01, 0.5, True]
    opt = fx.RMSprop([fx.Parameter(jnp.zeros(2))], 0.1, 0.9, 1e-6, 0.01, 0.5, True, False,
                     None, True)
    assert opt.param_groups[0]["maximize"] is True


def test_the_pages_example_loop_converges() -> None:
    rng = np.random.default_rng(0)
    true_w = rng.uniform(-0.3, 0.3, (4, 2)).astype(np.float32)
    true_b = np.array([0.2, -0.1], np.float32)
    x_all = rng.standard_normal((256, 4)).astype(np.float32)
    y_all = x_all @ true_w + true_b + 0.01 * rng.standard_normal((256, 2)).astype(np.float32)
    batches = [(x_all[i:i + 32], y_all[i:i + 32]) for i in range(0, 256, 32)]

    model = {"w": fx.Parameter(jnp.zeros((4, 2))), "b": fx.Parameter(jnp.zeros(2))}

    def loss_fn(m: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((x @ m["w"] + m["b"] - y) ** 2)

    def full_loss() -> float:
        return float(loss_fn({"w": model["w"].value, "b": model["b"].value}, x_all, y_all))

    initial = full_loss()
    optimizer = fx.RMSprop(fx.parameters(model), lr=1e-3, alpha=0.99)
    for _ in range(40):  # epochs
        for x, y in batches:
            optimizer.zero_grad()
            loss = fx.backward(loss_fn, model, x, y)
            optimizer.step()
    assert np.isfinite(float(loss))
    assert full_loss() < initial / 20, (initial, full_loss())


def test_a_schedule_for_lr_is_refused() -> None:
    with pytest.raises(ValueError, match=r"takes a number for lr, not a schedule"):
        fx.RMSprop([fx.Parameter(jnp.zeros(2))], lr=optax.constant_schedule(0.1))


# ------------------------------------------------------------------ adapter vs functional vs reference


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_adapter_equals_functional_transform_bitwise(case: Case) -> None:
    """The adapter runs ``fx.rmsprop``'s math, not a copy of it: identical bits every step.

    The hand-written loop passes the numeric hyper-parameters traced, as any loop
    whose hyper-parameters may change must, in the form the adapter passes them
    (``PreciseScalar``); see the next test for constants.
    """
    dtype = np.complex64 if case.is_complex else np.float32
    values, grads = problem(case, dtype)
    adapter, adapter_state = run_adapter(case, values, grads)
    functional, state = run_functional(case, values, grads, traced_hypers=True)
    for t, (a_step, f_step) in enumerate(zip(adapter, functional)):
        for i, (a, f) in enumerate(zip(a_step, f_step)):
            assert a.dtype == f.dtype == dtype
            np.testing.assert_array_equal(a, f, err_msg=f"step {t + 1}, parameter {i}")
    for key in ("square_avg", "grad_avg", "momentum_buffer"):
        expected = getattr(state, key)
        if expected is None:
            assert key not in adapter_state
        else:
            for a, f in zip(adapter_state[key], expected):
                np.testing.assert_array_equal(a, np.asarray(f), err_msg=key)
    assert [int(s) for s in adapter_state["step"]] == [int(state.step)] * len(SHAPES)


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: c.label)
def test_adapter_close_to_functional_with_constant_hyperparameters(case: Case) -> None:
    values, grads = problem(case, np.float32)
    adapter, _ = run_adapter(case, values, grads)
    functional, _ = run_functional(case, values, grads, traced_hypers=False)
    error = max(max_rel_error(a, f) for a_step, f_step in zip(adapter, functional)
                for a, f in zip(a_step, f_step))
    assert error <= RTOL_CONSTANT_HYPERS


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_adapter_matches_reference_float32(case: Case) -> None:
    errors = reference_errors(case, np.complex64 if case.is_complex else np.float32)
    assert errors.pop("step") == 0
    assert max(errors.values()) <= RTOL_F32, errors


def x64_report() -> dict[str, Any]:
    """The float64 comparisons; called under ``jax.enable_x64(True)``."""
    assert jax.config.jax_enable_x64, "call under jax.enable_x64(True)"
    return {
        "reference": {c.label: reference_errors(c, np.complex128 if c.is_complex else np.float64)
                      for c in CASES},
        "mid_run": changes_errors(np.float64),
    }


@pytest.fixture(scope="module")
def x64() -> dict[str, Any]:
    with jax.enable_x64(True):
        return x64_report()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_adapter_matches_reference_float64(case: Case, x64: dict[str, Any]) -> None:
    errors = dict(x64["reference"][case.label])
    assert errors.pop("step") == 0
    assert max(errors.values()) <= RTOL_F64, errors


# ------------------------------------------------------------------ groups and changes mid-run


def test_per_group_hyperparameters() -> None:
    configs = [dict(lr=0.05, momentum=0.9), dict(centered=True, alpha=0.9, weight_decay=0.1),
               dict(lr=0.02, maximize=True, eps=1e-4)]
    rng = np.random.default_rng(7)
    values = [rng.standard_normal((3, 2)).astype(np.float32) for _ in configs]
    grads = [[rng.standard_normal((3, 2)).astype(np.float32) for _ in configs]
             for _ in range(STEPS)]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop([{"params": [p], **c} for p, c in zip(params, configs)], alpha=0.95)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = jnp.asarray(g)
        opt.step()
    for i, config in enumerate(configs):
        history, _ = reference_run([widen(values[i])], [[widen(gs[i])] for gs in grads],
                                   **{"alpha": 0.95, **config})
        assert max_rel_error(params[i].value, history[-1][0]) <= RTOL_F32, config


# Changes written into param_groups before step k (0-based), applied to the reference too.
CHANGES: dict[int, dict[str, Any]] = {
    3: {"lr": 0.05},
    5: {"alpha": 0.5},
    7: {"eps": 1e-3},
    9: {"weight_decay": 0.1},  # from 0, compiled out until now: the one recompilation
    11: {"momentum": 0.5},
    13: {"momentum": 0.0},  # the buffer stays (decays to nothing), no recompilation
    14: {"lr": jnp.float32(0.2), "alpha": np.float64(0.9)},  # array-valued numbers
    16: {"momentum": 0.9, "weight_decay": 0.0, "eps": 1e-8, "lr": 0.01, "alpha": 0.99},
}


def changes_errors(dtype: Any) -> dict[str, Any]:
    """Runs the CHANGES schedule (starting with momentum 0.9) with the adapter and the
    reference; returns the max error per step and the compilations per step."""
    rng = np.random.default_rng(11)
    values = [rng.standard_normal(s).astype(dtype) for s in [(4, 3), (6,)]]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop([{"params": params[:1]}, {"params": params[1:], "centered": True}],
                     momentum=0.9)
    refs = [RMSpropReference([widen(values[0])], momentum=0.9),
            RMSpropReference([widen(values[1])], momentum=0.9, centered=True)]
    errors, compiles = [], []
    for k in range(STEPS):
        for key, value in CHANGES.get(k, {}).items():
            for group, ref in zip(opt.param_groups, refs):
                group[key] = value
                setattr(ref, key, float(value))
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = jnp.asarray(g)
        with CompileCounter() as counter:
            opt.step()
        compiles.append(counter.names)
        expected = [ref.update([widen(g)])[0] for ref, g in zip(refs, grads)]
        errors.append(max(max_rel_error(p.value, e) for p, e in zip(params, expected)))
    return {"errors": errors, "compiles": compiles}


def test_numeric_hyperparameters_changed_mid_run_take_effect_without_recompiling() -> None:
    result = changes_errors(np.float32)
    assert max(result["errors"]) <= RTOL_F32, result["errors"]
    # Steps 0 and 1 may compile while the state is created; then only step 9, where
    # weight decay, compiled out while 0, becomes non-zero (step 16's 0 reuses step 0's).
    steps = [k for k, names in enumerate(result["compiles"]) if k >= 2 and names]
    assert steps == [9], result["compiles"]


def test_mid_run_changes_float64(x64: dict[str, Any]) -> None:
    assert max(x64["mid_run"]["errors"]) <= RTOL_F64, x64["mid_run"]["errors"]


@pytest.mark.parametrize("flag", ["momentum", "centered"])
def test_turning_a_buffer_on_mid_run_allocates_zeros(flag: str) -> None:
    """torch raises KeyError here; the adapter allocates the buffer as zeros."""
    rng = np.random.default_rng(12)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (6,)]]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop(params, lr=0.05)
    ref = RMSpropReference([widen(v) for v in values], lr=0.05)
    field = {"momentum": "momentum_buffer", "centered": "grad_avg"}[flag]
    for k in range(8):
        if k == 4:
            opt.param_groups[0][flag] = 0.9 if flag == "momentum" else True
            if flag == "momentum":
                ref.momentum, ref.momentum_buffer = 0.9, [np.zeros_like(v) for v in ref.params]
            else:
                ref.centered, ref.grad_avg = True, [np.zeros_like(v) for v in ref.params]
            assert all(field not in opt.state[p] for p in params)
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        for p, g in zip(params, grads):
            p.grad = jnp.asarray(g)
        opt.step()
        expected = ref.update([widen(g) for g in grads])
        for p, e in zip(params, expected):
            assert max_rel_error(p.value, e) <= RTOL_F32, k
    for p, e in zip(params, getattr(ref, field)):
        assert max_rel_error(opt.state[p][field], e) <= RTOL_F32


@pytest.mark.parametrize("flag", ["momentum", "centered"])
def test_turning_a_buffer_on_mid_run_compiles_at_most_once(flag: str) -> None:
    # Shapes unique to this test, so that its compilations are its own.
    shapes = {"momentum": [(41, 3), (43,)], "centered": [(47, 3), (53,)]}[flag]
    params = [fx.Parameter(np.ones(s, np.float32)) for s in shapes]
    opt = fx.RMSprop(params)
    grads = [jnp.full(s, 0.5, jnp.float32) for s in shapes]

    def step() -> list[str]:
        for p, g in zip(params, grads):
            p.grad = g
        with CompileCounter() as counter:
            opt.step()
        return counter.names

    for _ in range(3):
        step()
    opt.param_groups[0][flag] = 0.9 if flag == "momentum" else True
    compiled = [name for _ in range(3) for name in step()]
    assert len(compiled) <= 1, compiled


def test_maximize_toggled_mid_run_takes_effect() -> None:
    p = fx.Parameter(np.array([1.0, -2.0], np.float32))
    opt = fx.RMSprop([p], lr=0.1)
    ref = RMSpropReference([widen(p.value)], lr=0.1)
    for k in range(6):
        if k == 3:
            opt.param_groups[0]["maximize"] = ref.maximize = True
        g = np.array([0.5, 0.25 * k], np.float32)
        p.grad = jnp.asarray(g)
        opt.step()
        assert max_rel_error(p.value, ref.update([widen(g)])[0]) <= RTOL_F32


@pytest.mark.parametrize("flag", ["centered", "maximize"])
def test_numpy_bool_flags_work(flag: str) -> None:
    p = fx.Parameter(np.array([1.0, -2.0], np.float32))
    opt = fx.RMSprop([p], lr=0.1, **{flag: np.bool_(True)})
    ref = RMSpropReference([widen(p.value)], lr=0.1, **{flag: True})
    for k in range(3):
        g = np.array([0.5, 0.25 * k], np.float32)
        p.grad = jnp.asarray(g)
        opt.step()
        assert max_rel_error(p.value, ref.update([widen(g)])[0]) <= RTOL_F32


# ------------------------------------------------------------------ skipping non-finite steps


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_skip_nonfinite_skips_the_whole_step(bad: float) -> None:
    rng = np.random.default_rng(13)
    shapes = [(3, 2), (4,), (5,)]
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop([{"params": params[:2], "momentum": 0.9}, {"params": params[2:],
                      "centered": True}], skip_nonfinite=True, lr=0.05)
    refs = [RMSpropReference([widen(values[0]), widen(values[1])], lr=0.05, momentum=0.9),
            RMSpropReference([widen(values[2])], lr=0.05, centered=True)]

    def grads_for(step: int) -> list[np.ndarray]:
        return [np.random.default_rng(100 + step).standard_normal(s).astype(np.float32)
                for s in shapes]

    for k in range(3):
        for p, g in zip(params, grads_for(k)):
            p.grad = jnp.asarray(g)
        opt.step()
        refs[0].update([widen(g) for g in grads_for(k)[:2]])
        refs[1].update([widen(grads_for(k)[2])])
    before_values = [np.asarray(p.value).copy() for p in params]
    before_state = {i: {k: np.asarray(v).copy() for k, v in opt.state[p].items()}
                    for i, p in enumerate(params)}
    poisoned = grads_for(99)
    poisoned[2][1] = bad  # one element of one parameter, in the second group
    for p, g in zip(params, poisoned):
        p.grad = jnp.asarray(g)
    opt.step()
    for i, p in enumerate(params):
        np.testing.assert_array_equal(np.asarray(p.value), before_values[i])
        state = {k: np.asarray(v) for k, v in opt.state[p].items()}
        assert int(state.pop("skipped")) == int(before_state[i].pop("skipped")) + 1
        for key, value in before_state[i].items():
            np.testing.assert_array_equal(state[key], value, err_msg=f"param {i} {key}")
    # The run continues as if the bad step had not happened.
    for k in range(3, 6):
        for p, g in zip(params, grads_for(k)):
            p.grad = jnp.asarray(g)
        opt.step()
        expected = refs[0].update([widen(g) for g in grads_for(k)[:2]])
        expected += refs[1].update([widen(grads_for(k)[2])])
        for p, e in zip(params, expected):
            assert max_rel_error(p.value, e) <= RTOL_F32
    assert all(int(opt.state[p]["step"]) == 6 for p in params)  # the skipped step not counted


def test_without_skip_nonfinite_a_nan_propagates() -> None:
    p, q = fx.Parameter(jnp.ones(2)), fx.Parameter(jnp.ones(2))
    opt = fx.RMSprop([p, q])
    p.grad, q.grad = jnp.array([np.nan, 1.0]), jnp.ones(2)
    opt.step()
    assert np.isnan(np.asarray(p.value)[0]) and np.all(np.isfinite(np.asarray(q.value)))
