"""Tests of ``fx.rmsprop`` and ``fx.RMSprop`` that are RMSprop's own (docs/optimizers.md):
η inside the momentum buffer (where lr changes, torch differs on purpose; hyper-parameters
written into param_groups mid-run; buffers switched on mid-run), complex parameters with
|g|² and a real v, the clamp of the centered variance, the rounding of one low-precision
step, optax, and the functional face under vmap, grad and random inputs.

tests/test_family.py runs the generic ones over the row (tests/optimizers_under_test.py):
torch and reference parity over the grid and the special cases (float32 and float64,
complex against the reference, a changing lr against the reference), the stateful face,
torch's state dicts, signatures and every error in ``bad_inputs``.
tests/test_torch_migration.py converts the momentum buffer by each group's lr.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from optimizers_under_test import (
    ROWS,
    RTOL_REF_F32,
    RTOL_REF_F64,
    RTOL_TORCH_F64,
    CompileCounter,
    Shape,
    leaves64,
    make_tree,
    run,
    run_many,
    shape_trees,
    side_by_side,
    split,
    torch_default_dtype,
    tree_error,
)
from reference import RTOL_F32, RTOL_F64, RMSpropReference, max_rel_error, reference_run

import lucid_fx as fx
from lucid_fx._src.core.scalars import as_precise

ROW = ROWS["rmsprop"]
# Named tolerances beyond reference.RTOL_F32/RTOL_F64 (max_rel_error: |a-b| / max(1, |b|)).
RTOL_GRAD = 1e-3  # jax.grad in float32 vs central differences of the float64 reference
# One step relative to |update|: float32 arithmetic, then one rounding to the dtype (2 ulp).
RTOL_ONE_STEP = {jnp.bfloat16: 2**-7, jnp.float16: 2**-10, jnp.float32: 2**-20}
STEPS = 20


def _torch() -> Any:
    return pytest.importorskip("torch", reason="compared with torch (the test extra)")


# ------------------------------------------------------------------ η inside the buffer


def test_where_lr_changes_torch_differs_by_its_momentum_buffer_only() -> None:
    """The page's b = μ·b + η·g/d keeps the η of earlier steps; torch's b = μ·b + g/d,
    θ -= η·b applies today's η to all of it. With the row's changing lr (float64) both
    equal the reference without momentum; with momentum ours does and torch is far off.
    (At a constant lr torch equals ours: tests/test_family.py.)"""
    torch = _torch()
    configs = {label: ROW.grid[label] for label in ("centered=True", "momentum=0.9,centered=True")}
    with jax.enable_x64(True), torch_default_dtype(torch, np.float64):
        errors = run_many(ROW, configs, np.float64, torch=torch, lr_per_step=ROW.lrs)
    plain, momentum = (split(errors[label]) for label in configs)
    assert plain[0] <= RTOL_REF_F64 and plain[1] <= RTOL_TORCH_F64, errors
    assert momentum[0] <= RTOL_REF_F64, errors
    assert errors["momentum=0.9,centered=True"]["torch:params"] > 1e-3, errors


def test_at_lr_one_the_momentum_buffer_is_torchs() -> None:
    """η = 1: η·b_torch is b_torch, so both buffers are equal (torch_scale 1)."""
    torch = _torch()
    with jax.enable_x64(True), torch_default_dtype(torch, np.float64):
        errors = run(ROW, {"lr": 1.0, "momentum": 0.9}, np.float64, torch=torch)
    ref, theirs = split(errors)
    assert ref <= RTOL_REF_F64 and theirs <= RTOL_TORCH_F64, errors


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


def _changes(dtype: Any) -> dict[str, Any]:
    """Runs the CHANGES schedule (starting with momentum 0.9) with the class and the
    reference; returns the max error per step and the compilations per step."""
    rng = np.random.default_rng(11)
    values = [rng.standard_normal(s).astype(dtype) for s in [(4, 3), (6,)]]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop([{"params": params[:1]}, {"params": params[1:], "centered": True}],
                     momentum=0.9)
    refs = [RMSpropReference([values[0]], momentum=0.9),
            RMSpropReference([values[1]], momentum=0.9, centered=True)]
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
        expected = [ref.update([g])[0] for ref, g in zip(refs, grads)]
        errors.append(max(max_rel_error(p.value, e) for p, e in zip(params, expected)))
    return {"errors": errors, "compiles": compiles}


def test_hyperparameters_written_mid_run_take_effect_without_recompiling() -> None:
    result = _changes(np.float32)
    assert max(result["errors"]) <= RTOL_F32, result["errors"]
    # Steps 0 and 1 may compile while the state is created; then only step 9, where
    # weight decay, compiled out while 0, becomes non-zero (step 16's 0 reuses step 0's).
    steps = [k for k, names in enumerate(result["compiles"]) if k >= 2 and names]
    assert steps == [9], result["compiles"]


def test_hyperparameters_written_mid_run_float64() -> None:
    with jax.enable_x64(True):
        result = _changes(np.float64)
    assert max(result["errors"]) <= RTOL_F64, result["errors"]


@pytest.mark.parametrize("flag", ["momentum", "centered"])
def test_turning_a_buffer_on_mid_run_allocates_zeros(flag: str) -> None:
    """torch raises KeyError here; the class allocates the buffer as zeros."""
    rng = np.random.default_rng(12)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (6,)]]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop(params, lr=0.05)
    ref = RMSpropReference(values, lr=0.05)
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
        for p, e in zip(params, ref.update(grads)):
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
    ref = RMSpropReference([np.asarray(p.value)], lr=0.1)
    for k in range(6):
        if k == 3:
            opt.param_groups[0]["maximize"] = ref.maximize = True
        g = np.array([0.5, 0.25 * k], np.float32)
        p.grad = jnp.asarray(g)
        opt.step()
        assert max_rel_error(p.value, ref.update([g])[0]) <= RTOL_F32


@pytest.mark.parametrize("flag", ["centered", "maximize"])
def test_numpy_bool_flags_work(flag: str) -> None:
    p = fx.Parameter(np.array([1.0, -2.0], np.float32))
    opt = fx.RMSprop([p], lr=0.1, **{flag: np.bool_(True)})
    ref = RMSpropReference([np.asarray(p.value)], lr=0.1, **{flag: True})
    for k in range(3):
        g = np.array([0.5, 0.25 * k], np.float32)
        p.grad = jnp.asarray(g)
        opt.step()
        assert max_rel_error(p.value, ref.update([g])[0]) <= RTOL_F32


def test_each_group_steps_with_its_own_hyperparameters() -> None:
    """lr, α, ε, momentum, centered, weight decay and maximize differ per group; a group
    without α takes the constructor's."""
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
        history, _ = reference_run([values[i]], [[gs[i]] for gs in grads],
                                   **{"alpha": 0.95, **config})
        assert max_rel_error(params[i].value, history[-1][0]) <= RTOL_F32, config


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


# ------------------------------------------------------------------ complex parameters


def test_complex_parameters_step_alike_in_both_faces() -> None:
    """|g|² = g·conj(g) keeps v real: a complex Parameter's real buffer, in the class's
    packs beside a real Parameter, takes the functional face's bits at every step (its
    numbers traced as the class traces them, skip_nonfinite on, every gradient finite),
    and both are the reference's."""
    config = {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (5,), ()]

    def arrays() -> list[np.ndarray]:
        return [(rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(np.complex64)
                for s in shapes] + [rng.standard_normal(3).astype(np.float32)]

    values, grads = arrays(), [arrays() for _ in range(STEPS)]
    params = [fx.Parameter(v) for v in values]
    opt = fx.RMSprop(params, **config, skip_nonfinite=True)
    numbers = {"alpha": 0.99, "eps": 1e-8, **{k: v for k, v in config.items() if k != "centered"}}
    update = jax.jit(lambda g, s, p, h: fx.rmsprop(**h, centered=True, skip_nonfinite=True)
                     .update(g, s, p))
    hyper = {k: as_precise(v) for k, v in numbers.items()}
    functional = [jnp.asarray(v) for v in values]
    state = fx.rmsprop(**config, skip_nonfinite=True).init(values)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = jnp.asarray(g)
        opt.step()
        updates, state = update(step_grads, state, functional, hyper)
        functional = fx.apply_updates(functional, updates)
        for p, f in zip(params, functional):
            np.testing.assert_array_equal(p.value, f)
    for i, p in enumerate(params):
        assert opt.state[p]["square_avg"].dtype == np.float32
        for key in ("square_avg", "grad_avg", "momentum_buffer"):
            np.testing.assert_array_equal(opt.state[p][key], getattr(state, key)[i], err_msg=key)
    history, _ = reference_run(leaves64(values), [leaves64(g) for g in grads], **config)
    assert tree_error([p.value for p in params], history[-1]) <= RTOL_REF_F32


# ------------------------------------------------------------------ the clamp, low precision


def test_centered_variance_is_clamped_at_zero() -> None:
    """Near-constant g with α=0.5: v - ḡ² rounds below 0 in float32; the clamp keeps it finite."""
    alpha, eps, lr, steps = 0.5, 1e-8, 0.01, 40
    rng = np.random.default_rng(7)
    g = rng.uniform(0.5, 2.0, size=256).astype(np.float32)
    # The unclamped formula in float32 NumPy: sqrt of a negative number, NaN.
    v = np.zeros_like(g)
    gbar = np.zeros_like(g)
    a = np.float32(alpha)
    unclamped_nan = False
    for _ in range(steps):
        v = a * v + (1 - a) * g * g
        gbar = a * gbar + (1 - a) * g
        with np.errstate(invalid="ignore"):
            unclamped_nan |= bool(np.isnan(lr * g / (np.sqrt(v - gbar * gbar) + eps)).any())
    assert unclamped_nan, "this input should drive v - ḡ² below zero in float32"
    # optax's centered rmsprop (no clamp) goes NaN on the same input ...
    for tx, expect_finite in (
        (optax.rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=True), False),
        (fx.rmsprop(lr, alpha=alpha, eps=eps, centered=True), True),
    ):
        params, state, update = jnp.zeros_like(g), tx.init(jnp.zeros_like(g)), jax.jit(tx.update)
        finite = True
        for _ in range(steps):
            updates, state = update(jnp.asarray(g), state, params)
            params = optax.apply_updates(params, updates)
            finite &= bool(jnp.all(jnp.isfinite(updates)))
        assert finite == expect_finite
    # ... while lucid_fx's state stays finite too.
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32],
                         ids=lambda d: jnp.dtype(d).name)
def test_one_low_precision_step_is_the_stored_buffers(dtype: Any) -> None:
    # alpha=0.999 rounds to 1.0 in bfloat16: arithmetic must not run in bfloat16.
    hyper = dict(lr=0.01, alpha=0.999, momentum=0.9, centered=True, weight_decay=0.1)
    rng = np.random.default_rng(4)
    params = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    grads = make_tree(rng, dtype)
    tx = fx.rmsprop(**hyper)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    _, ref = reference_run(leaves64(params), [leaves64(grads)], **hyper)

    def stored(x: np.ndarray) -> np.ndarray:
        # Buffers are kept in the parameter's dtype and the step goes on from the
        # stored values (as torch does), so the model rounds v, ḡ and b to it.
        return np.asarray(x).astype(dtype).astype(np.float64)

    for actual, p, g, v, gbar in zip(leaves64(updates), leaves64(params), leaves64(grads),
                                     ref["square_avg"], ref["grad_avg"]):
        denom = np.sqrt(np.maximum(stored(v) - stored(gbar) ** 2, 0)) + 1e-8
        expected = stored(hyper["lr"] * (g + hyper["weight_decay"] * p) / denom)  # b_1 = η·g/d
        # update = -b after one step; relative to |update|, which is about lr/sqrt(1-α).
        assert np.all(np.abs(actual + expected) <= RTOL_ONE_STEP[dtype] * np.abs(expected))


# ------------------------------------------------------------------ optax

# optax has no maximize: each remaining flag, all three, α and ε, a large η and a schedule,
# and complex parameters with all three flags.
OPTAX_CASES = {
    **{label: ROW.configs[label] for label in (
        "defaults", "momentum=0.9", "centered=True", "weight_decay=0.1",
        "momentum=0.9,centered=True,weight_decay=0.1", "alpha=0.5,eps=1e-3")},
    "lr=1,momentum=0.9": {"lr": 1.0, "momentum": 0.9},
    "schedule,momentum=0.5,centered,weight_decay=0.01": {
        "lr": optax.piecewise_constant_schedule(0.05, {5: 0.1, 12: 10.0}), "momentum": 0.5,
        "centered": True, "weight_decay": 0.01},
}
COMPLEX_OPTAX_CASES = ("momentum=0.9,centered=True,weight_decay=0.1",)


@pytest.fixture(scope="module")
def optax_finals() -> dict[str, tuple[Any, Any]]:
    """Ours and optax's final parameters for each case, real and complex, one compilation."""
    transforms = {}
    for label, config in OPTAX_CASES.items():
        full = {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                "centered": False, **config}
        transforms[label] = (fx.rmsprop(**config), optax.chain(
            optax.add_decayed_weights(full["weight_decay"]),
            optax.rmsprop(full["lr"], decay=full["alpha"], eps=full["eps"], eps_in_sqrt=False,
                          centered=full["centered"], momentum=full["momentum"] or None)))
    finals = {}
    for dtype, labels in ((np.float32, list(OPTAX_CASES)), (np.complex64, COMPLEX_OPTAX_CASES)):
        results = side_by_side([tx for label in labels for tx in transforms[label]], dtype=dtype)
        for i, label in enumerate(labels):
            finals[f"{np.dtype(dtype).name}:{label}"] = (results[2 * i], results[2 * i + 1])
    return finals


@pytest.mark.parametrize("case", [*(f"float32:{label}" for label in OPTAX_CASES),
                                  *(f"complex64:{label}" for label in COMPLEX_OPTAX_CASES)])
def test_agrees_with_optax(case: str, optax_finals: dict[str, tuple[Any, Any]]) -> None:
    """optax's rmsprop with eps outside the sqrt, after its coupled weight decay: two
    float32 computations of the same formulas in different operation orders, each
    RTOL_F32 from the exact result, so they agree to 2·RTOL_F32."""
    ours, theirs = optax_finals[case]
    assert tree_error(ours, leaves64(theirs)) <= 2 * RTOL_F32


# ------------------------------------------------------------------ the functional face's range


@given(
    shape_tree=shape_trees,
    lr=st.floats(0.0, 1.0),
    alpha=st.floats(0.1, 1.0),  # α < 0.1 makes v - ḡ² cancel in float32
    eps=st.floats(1e-8, 0.1),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    momentum=st.sampled_from([0.0, 0.5, 0.95]),
    centered=st.booleans(),
    maximize=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, alpha: float, eps: float, weight_decay: float,
    momentum: float, centered: bool, maximize: bool, steps: int, seed: int,
) -> None:
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, Shape))

    hyper = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                 centered=centered, maximize=maximize)
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = fx.rmsprop(**hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = reference_run(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    assert tree_error(params, history[-1]) <= RTOL_F32
    for key in ROW.buffers:
        assert tree_error(getattr(state, key), ref[key]) <= RTOL_F32, key


def test_vmap_over_independent_problems() -> None:
    batch, steps = 3, 6
    hyper = dict(lr=0.05, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9, centered=True)
    rng = np.random.default_rng(1)
    params0 = {"w": rng.standard_normal((batch, 4)).astype(np.float32),
               "b": rng.standard_normal((batch,)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params0)
             for _ in range(steps)]
    tx = fx.rmsprop(**hyper)
    params = params0
    state = jax.vmap(tx.init)(params)
    update = jax.jit(jax.vmap(tx.update))
    for g in grads:
        updates, state = update(g, state, params)
        params = fx.apply_updates(params, updates)

    def take(tree: Any, i: int) -> list[np.ndarray]:
        """Problem i's leaves, in pytree order (b, w)."""
        return [np.asarray(tree["b"][i]), np.asarray(tree["w"][i])]

    for i in range(batch):
        history, ref = reference_run(take(params0, i), [take(g, i) for g in grads], **hyper)
        assert max(max_rel_error(a, e) for a, e in zip(take(params, i), history[-1])) <= RTOL_F32
        assert max(max_rel_error(a, e)
                   for a, e in zip(take(state.square_avg, i), ref["square_avg"])) <= RTOL_F32


def test_grad_through_update_matches_finite_differences() -> None:
    """d/d(θ₀, g₃, η) of Σ c·θ₃ after three steps, against the float64 reference."""
    hyper = dict(alpha=0.8, eps=1e-3, weight_decay=0.3, momentum=0.7, centered=True)
    rng = np.random.default_rng(2)
    theta0 = rng.standard_normal(4)
    g1, g2, g3 = (rng.standard_normal(4) for _ in range(3))
    c = rng.standard_normal(4)
    lr = 0.05

    def objective(theta: jax.Array, last_grad: jax.Array, eta: jax.Array) -> jax.Array:
        tx = fx.rmsprop(lr=eta, **hyper)
        state = tx.init(theta)
        for g in (jnp.asarray(g1, jnp.float32), jnp.asarray(g2, jnp.float32), last_grad):
            updates, state = tx.update(g, state, theta)
            theta = fx.apply_updates(theta, updates)
        return jnp.sum(jnp.asarray(c, jnp.float32) * theta)

    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(
        jnp.asarray(theta0, jnp.float32), jnp.asarray(g3, jnp.float32), jnp.float32(lr))

    def reference(theta: np.ndarray, last_grad: np.ndarray, eta: float) -> float:
        history, _ = reference_run([theta], [[g1], [g2], [last_grad]], lr=eta, **hyper)
        return float(c @ history[-1][0])

    h = 1e-6
    basis = np.eye(4)
    expected = [
        np.array([(reference(theta0 + h * e, g3, lr) - reference(theta0 - h * e, g3, lr)) / (2 * h)
                  for e in basis]),
        np.array([(reference(theta0, g3 + h * e, lr) - reference(theta0, g3 - h * e, lr)) / (2 * h)
                  for e in basis]),
        np.array((reference(theta0, g3, lr + h) - reference(theta0, g3, lr - h)) / (2 * h)),
    ]
    for actual, fd in zip(grads, expected):
        assert max_rel_error(actual, fd) <= RTOL_GRAD, (actual, fd)


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(8)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def train(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = fx.rmsprop(**hyper, centered=True)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in (dict(lr=0.1, alpha=0.9, eps=1e-4, momentum=0.5, weight_decay=0.1),
                   dict(lr=0.02, alpha=0.5, eps=1e-2, momentum=0.0, weight_decay=0.0)):
        params, state = train({k: jnp.float32(v) for k, v in values.items()}, params0)
        history, ref = reference_run([params0["w"]], [[g["w"]] for g in grads],
                                     centered=True, **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_F32
        assert max_rel_error(state.square_avg["w"], ref["square_avg"][0]) <= RTOL_F32
        assert max_rel_error(state.grad_avg["w"], ref["grad_avg"][0]) <= RTOL_F32
    assert train._cache_size() == 1
