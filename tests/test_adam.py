"""Tests of ``lucid_fx._src.transforms.adam`` (Adam and AdamW): torch.optim.Adam/AdamW parity over every
flag combination, complex parameters as torch's real pairs, the float64 reference
(tests/reference.py), optax, dtypes, schedules, skipping and errors.

The grids' parity with torch and the reference in both dtypes runs in tests/test_family.py.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import chex
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
    RTOL_TORCH_F32,
    Shape,
    leaves64,
    make_tree,
    one_torch_thread,
    run,
    shape_trees,
    split,
    tree_error,
)
from reference import adam_reference, max_rel_error

import lucid_fx as fx
from lucid_fx._src.transforms.adam import AdamState, adam, adam_kernel, adamw

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

RTOL_ONE_STEP_BF16 = 2**-7  # one rounding to bfloat16 (8 significant bits), relative


def test_grids_cover_every_flag_combination() -> None:
    assert len(ROWS["adam"].grid) == 16 and len(ROWS["adamw"].grid) == 8


# ------------------------------------------------------------------ parity: torch and reference


# The grids against torch and the reference, float32 and float64, real and complex, at a
# constant and a changing lr: tests/test_family.py, from ROWS["adam"] and ROWS["adamw"].
# Here: the eager path.
EAGER_CASES = [("adam", "defaults"), ("adam", "amsgrad=True,weight_decay=0.1,maximize=True"),
               ("adamw", "amsgrad=True,weight_decay=0.1,maximize=True")]


@pytest.mark.parametrize("name, label", EAGER_CASES, ids=[f"{n}:{lb}" for n, lb in EAGER_CASES])
def test_parity_float32_eager(name: str, label: str) -> None:
    row = ROWS[name]
    errors = run(row, row.grid[label], np.float32, jit=False, torch=torch, label=label)
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F32, errors
    assert theirs <= RTOL_TORCH_F32, errors


def test_complex_second_moment_is_per_component() -> None:
    """v holds re(g)² and im(g)² (torch's real pairs), not |g|²."""
    tx = adam(lr=0.1, betas=(0.0, 0.0))
    params = jnp.zeros(1, jnp.complex64)
    _, state = tx.update(jnp.array([3 + 4j], jnp.complex64), tx.init(params), params)
    assert state.exp_avg_sq.dtype == jnp.complex64
    assert state.exp_avg_sq.tolist() == [9 + 16j]  # |g|² would be 25


def test_optax_schedule() -> None:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=3, decay_steps=12)
    rng = np.random.default_rng(0)
    params0 = make_tree(rng, np.float32)
    grads = [make_tree(rng, np.float32) for _ in range(12)]
    tx = adamw(schedule, weight_decay=0.1, amsgrad=True)
    params, update = jax.tree.map(jnp.asarray, params0), jax.jit(tx.update)
    state = tx.init(params)
    for g in grads:
        updates, state = update(g, state, params)
        params = fx.apply_updates(params, updates)
    lrs = [float(jax.jit(schedule)(np.int32(t))) for t in range(12)]
    history, _ = adam_reference(leaves64(params0), [leaves64(g) for g in grads], lr=lrs,
                                weight_decay=0.1, amsgrad=True, decoupled_weight_decay=True)
    assert tree_error(params, history[-1]) <= RTOL_REF_F32


@pytest.mark.parametrize("factory, torch_name", [(adam, "Adam"), (adamw, "AdamW")])
def test_defaults_and_order_are_torchs(factory: Any, torch_name: str) -> None:
    ours = inspect.signature(factory).parameters
    theirs = inspect.signature(getattr(torch.optim, torch_name)).parameters
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD and n != "params"]
    assert positional[0] == ("lr", 1e-3)
    for name in ("maximize", "decoupled_weight_decay"):
        if name in theirs:
            assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert ours[name].default == theirs[name].default


# ------------------------------------------------------------------ kernel and state


def test_kernel_step_broadcasts_per_element() -> None:
    """``step`` may be one count per element (parameters that joined later): each element
    gets its own bias correction, the same as a scalar step would give it."""
    rng = np.random.default_rng(1)
    g, theta = (jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(2))
    m, v = jnp.asarray(rng.standard_normal(4), jnp.float32), jnp.full(4, 0.5, jnp.float32)
    steps = jnp.array([1, 2, 10, 1000], jnp.int32)
    hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    per_element = adam_kernel(g + 0.1 * theta, m, v, v, step=steps, **hyper)
    for i, t in enumerate(steps.tolist()):
        alone = adam_kernel(g[i] + 0.1 * theta[i], m[i], v[i], v[i], step=t, **hyper)
        for a, b in zip(per_element, alone):
            assert max_rel_error(a[i], b) <= 1e-7


def test_bias_correction_is_exact_in_float32() -> None:
    """1 - β₂ formed from the Python β₂: the first step is η·sign(g) to a few ulp.

    From 1 - fl32(0.999) = 0.00099998713 instead, sqrt(1 - β₂) would be 6.4e-6 off,
    and so would the step (6.4e-7 here), which the bound below (2e-6 relative) catches.
    """
    tx = adam(lr=0.1, eps=0.0)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(jnp.array([1e-3, 2.0, -5e4]), tx.init(params), params)
    assert np.abs(np.asarray(updates) - np.array([-0.1, -0.1, 0.1])).max() <= 2e-7


def test_state_layout_follows_the_flags() -> None:
    params = {"w": jnp.ones(3)}
    plain = adam().init(params)
    assert isinstance(plain, AdamState)
    assert plain.max_exp_avg_sq is None and plain.skipped is None
    assert plain.step.dtype == jnp.int32 and int(plain.step) == 0
    full = adamw(amsgrad=True, skip_nonfinite=True).init(params)
    for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert jax.tree.structure(getattr(full, field)) == jax.tree.structure(params)
    assert int(full.skipped) == 0


def test_adamw_is_adam_with_decoupled_weight_decay() -> None:
    rng = np.random.default_rng(2)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = [make_tree(rng, np.float32) for _ in range(3)]
    results = []
    for tx in (adamw(0.01, weight_decay=0.3, amsgrad=True),
               adam(0.01, weight_decay=0.3, amsgrad=True, decoupled_weight_decay=True)):
        p, state, update = params, tx.init(params), jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, p)
            p = fx.apply_updates(p, updates)
        results.append((p, state))
    chex.assert_trees_all_equal(results[0], results[1])


def test_none_leaves_and_empty_trees() -> None:
    tx = adam(lr=0.1, amsgrad=True, weight_decay=0.1, skip_nonfinite=True)
    params = {"w": jnp.array([1.0, -2.0]), "frozen": None}
    updates, state = tx.update({"w": jnp.array([0.5, 3.0]), "frozen": None}, tx.init(params),
                               params)
    assert updates["frozen"] is None and state.exp_avg["frozen"] is None
    for transform, empty in ((tx, {}), (tx, []), (adam(amsgrad=True), None)):
        state = transform.init(empty)
        _, new_state = transform.update(empty, state, empty)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_donated_state_gives_the_same_result() -> None:
    tx = adamw(lr=0.01, amsgrad=True, skip_nonfinite=True)
    rng = np.random.default_rng(3)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = make_tree(rng, np.float32)
    expected = jax.jit(tx.update)(grads, tx.init(params), params)
    donated = tx.init(params)
    # Donation works only if every output buffer matches an input buffer in shape and
    # dtype; a mismatch would warn, and warnings are errors here.
    result = jax.jit(tx.update, donate_argnums=(1,))(grads, donated, params)
    assert all(x.is_deleted() for x in jax.tree.leaves(donated) if x.size)
    chex.assert_trees_all_equal(result, expected)


# ------------------------------------------------------------------ optax


# optax has no maximize, and its amsgrad is another method (below); one run per kind of decay.
OPTAX_LABELS = [("adam", "defaults"), ("adam", "weight_decay=0.1"),
                ("adam", "weight_decay=0.1,decoupled_weight_decay=True"), ("adamw", "defaults")]


@pytest.fixture(scope="module")
def optax_finals() -> dict[tuple[str, str], tuple[Any, Any]]:
    """Final parameters of ours and optax's for each OPTAX_LABELS case (one compilation)."""
    pairs = {}
    for name, label in OPTAX_LABELS:
        config = ROWS[name].grid[label]
        lr, wd = config["lr"], config["weight_decay"]
        if name == "adamw" or config["decoupled_weight_decay"]:
            theirs = optax.adamw(lr, eps_root=0.0, weight_decay=wd)
        else:
            theirs = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, eps_root=0.0))
        pairs[name, label] = (ROWS[name].factory(**config), theirs)
    rng = np.random.default_rng(4)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = [make_tree(rng, np.float32) for _ in range(20)]
    transforms = [tx for pair in pairs.values() for tx in pair]

    @jax.jit
    def update_all(g: Any, states: list[Any], params: list[Any]) -> list[Any]:
        return [tx.update(g, s, p) for tx, s, p in zip(transforms, states, params)]

    params = [params0] * len(transforms)
    states = [tx.init(params0) for tx in transforms]
    for g in grads:
        results = update_all(g, states, params)
        states = [s for _, s in results]
        params = [optax.apply_updates(p, u) for p, (u, _) in zip(params, results)]
    return {key: (params[2 * i], params[2 * i + 1]) for i, key in enumerate(pairs)}


@pytest.mark.parametrize("name, label", OPTAX_LABELS, ids=[f"{n}:{lb}" for n, lb in OPTAX_LABELS])
def test_agrees_with_optax(name: str, label: str, optax_finals: dict[Any, Any]) -> None:
    """optax's adam with eps_root=0 is torch's Adam: m̂/(sqrt(v̂) + ε) with v̂ = v/(1-β₂^t)
    is η/(1-β₁^t)·m/(sqrt(v)/sqrt(1-β₂^t) + ε). Coupled decay is its add_decayed_weights
    first; adamw's decay is -η·λ·θ, ours θ·(1-ηλ) - θ. (optax's amsgrad takes the maximum
    of the bias-corrected v̂, torch's of v: not the same method, so not compared.)

    Two float32 computations of the same formulas: each within RTOL_REF_F32 of exact.
    """
    ours, theirs = optax_finals[name, label]
    chex.assert_trees_all_close(ours, theirs, rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


# ------------------------------------------------------------------ property test


@given(
    shape_tree=shape_trees,
    lr=st.floats(0.0, 0.1),
    beta1=st.sampled_from([0.0, 0.3, 0.9]),
    beta2=st.sampled_from([0.0, 0.5, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3, 0.1]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    decoupled_weight_decay=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    amsgrad: bool, maximize: bool, decoupled_weight_decay: bool, steps: int, seed: int,
) -> None:
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, Shape))

    hyper = {"lr": lr, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
             "maximize": maximize, "decoupled_weight_decay": decoupled_weight_decay}
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = adam(betas=(beta1, beta2), **hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = adam_reference(leaves64(params0), [leaves64(g) for g in grads],
                                  betas=(beta1, beta2), **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    assert tree_error(params, history[-1]) <= RTOL_REF_F32
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert tree_error(getattr(state, key), ref[key]) <= RTOL_REF_F32, key


# ------------------------------------------------------------------ dtypes


def test_state_dtype_bfloat16_rounds_the_stored_buffers() -> None:
    """m and v are kept in bfloat16 and the step uses them as stored (rounded)."""
    rng = np.random.default_rng(6)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = make_tree(rng, np.float32)
    tx = adam(lr=0.1, state_dtype=jnp.bfloat16)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    buffers = (state.exp_avg, state.exp_avg_sq)
    assert {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}

    def bf16(x: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)

    for u, m, v, g in zip(leaves64(updates), leaves64(state.exp_avg),
                          leaves64(state.exp_avg_sq), leaves64(grads)):
        assert np.all(np.abs(m - bf16(0.1 * g)) <= RTOL_ONE_STEP_BF16 * np.abs(0.1 * g))
        assert np.all(np.abs(v - bf16(0.001 * g * g)) <= RTOL_ONE_STEP_BF16 * (0.001 * g * g))
        expected = -(0.1 / 0.1) * m / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)  # from the stored m, v
        assert max_rel_error(u, expected) <= 1e-6


# ------------------------------------------------------------------ traced hyper-parameters


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(9)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def train(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = adam(hyper["lr"], (hyper["beta1"], hyper["beta2"]), hyper["eps"],
                  hyper["weight_decay"], amsgrad=True, decoupled_weight_decay=True)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in ({"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-4, "weight_decay": 0.1},
                   {"lr": 0.02, "beta1": 0.5, "beta2": 0.9, "eps": 1e-2, "weight_decay": 0.0}):
        params, state = train({k: jnp.float32(v) for k, v in values.items()}, params0)
        # The traced β is a float32 number: the reference gets exactly that number.
        betas = (float(np.float32(values.pop("beta1"))), float(np.float32(values.pop("beta2"))))
        history, ref = adam_reference([params0["w"]], [[g["w"]] for g in grads], betas=betas,
                                      amsgrad=True, decoupled_weight_decay=True, **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32
        assert max_rel_error(state.exp_avg_sq["w"], ref["exp_avg_sq"][0]) <= RTOL_REF_F32
    assert train._cache_size() == 1


def test_inject_hyperparams_changes_lr_without_recompiling() -> None:
    rng = np.random.default_rng(10)
    params0 = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.standard_normal(5), jnp.float32)} for _ in range(6)]
    lrs = [0.1, 0.1, 0.01, 0.3, 0.0, 0.05]
    tx = optax.inject_hyperparams(adamw)(lr=0.1, weight_decay=0.1)
    params, state, update = params0, tx.init(params0), jax.jit(tx.update)
    for lr, g in zip(lrs, grads):
        state.hyperparams["lr"] = jnp.asarray(lr, jnp.float32)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1
    history, _ = adam_reference([params0["w"]], [[g["w"]] for g in grads],
                                lr=[float(np.float32(x)) for x in lrs], weight_decay=0.1,
                                decoupled_weight_decay=True)
    assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32


# ------------------------------------------------------------------ errors


HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr<0", {"lr": -0.1}, r"Invalid lr value: -0\.1 \(expected a number >= 0\.0\)"),
    ("eps<0", {"eps": -1e-08}, r"Invalid eps value: -1e-08 \(expected a number >= 0\.0\)"),
    ("weight_decay<0", {"weight_decay": -1e-4},
     r"Invalid weight_decay value: -0\.0001 \(expected a number >= 0\.0\)"),
    ("betas[0]=1", {"betas": (1.0, 0.999)},
     r"Invalid betas\[0\] value: 1\.0 \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas[0]<0", {"betas": (-0.1, 0.999)},
     r"Invalid betas\[0\] value: -0\.1 \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas[1]=1", {"betas": (0.9, 1.0)},
     r"Invalid betas\[1\] value: 1\.0 \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas[1]=nan", {"betas": (0.9, math.nan)},
     r"Invalid betas\[1\] value: nan \(expected a number in \[0\.0, 1\.0\)\)"),
    ("betas=0.9", {"betas": 0.9},
     r"Invalid betas value: 0\.9 \(expected a pair \(beta1, beta2\), each in \[0\.0, 1\.0\)\)"),
    ("betas of 3", {"betas": (0.9, 0.99, 0.999)}, r"Invalid betas value: \(0\.9, 0\.99, 0\.999\)"),
    ("amsgrad=str", {"amsgrad": "yes"}, r"Invalid amsgrad value: 'yes' \(expected True or False\)"),
    ("maximize=1", {"maximize": 1}, r"Invalid maximize value: 1 \(expected True or False\)"),
    ("state_dtype=int8", {"state_dtype": np.int8},
     r"Invalid state_dtype value: .*int8.* \(expected None or a floating-point dtype\)"),
] + [
    (f"{name}=nan", {name: math.nan}, rf"Invalid {name} value: nan \(expected a number")
    for name in ("lr", "eps", "weight_decay")
]


@pytest.mark.parametrize("factory", [adam, adamw])
@pytest.mark.parametrize("kwargs, pattern", [e[1:] for e in HYPER_ERRORS],
                         ids=[e[0] for e in HYPER_ERRORS])
def test_invalid_hyperparameters_raise(factory: Any, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        factory(**kwargs)


def test_invalid_decoupled_flag_raises() -> None:
    with pytest.raises(ValueError, match=r"Invalid decoupled_weight_decay value: 'yes'"):
        adam(decoupled_weight_decay="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999)])
def test_torch_refuses_the_same_betas(betas: tuple[float, float]) -> None:
    with one_torch_thread(torch), pytest.raises(ValueError):
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], betas=betas)


def test_traced_betas_are_accepted() -> None:
    tx = jax.jit(lambda b: adam(betas=(b, b)).init(jnp.ones(2)).exp_avg)
    assert tx(jnp.float32(0.9)).shape == (2,)


def test_non_float_params_raise() -> None:
    with pytest.raises(TypeError, match=r"adamw optimizes floating-point parameters only; "
                                        r"\['n'\] has dtype int32\. Cast it"):
        adamw().init({"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)})


def test_mismatched_gradients_name_the_path() -> None:
    params = {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 2))]}
    tx = adam()
    grads = {"a": jnp.ones(2), "layers": [jnp.ones(3)]}
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['layers'\]\[1\] "
                                         r"is missing from gradients"):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("factory, name", [(lambda: adam(weight_decay=0.1), "adam"),
                                           (adamw, "adamw")])
def test_weight_decay_needs_params(factory: Any, name: str) -> None:
    tx, params = factory(), {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=rf"{name}: weight_decay is non-zero, so update\(\) "
                                         r"needs params: call tx\.update\(grads, state, params\)"):
        tx.update(params, tx.init(params))
    # Without weight decay params are optional.
    updates, _ = adamw(weight_decay=0).update(params, adamw(weight_decay=0).init(params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_state_from_other_flags_is_refused() -> None:
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"adam: the state lacks max_exp_avg_sq, so it was made "
                                         r"by an adam with a different amsgrad"):
        adam(amsgrad=True).update(params, adam().init(params))
    with pytest.raises(ValueError, match=r"the state has max_exp_avg_sq"):
        adam().update(params, adam(amsgrad=True).init(params))
    with pytest.raises(TypeError, match=r"adam: state must be the AdamState made by this "
                                        r"transform's init, got SGDState"):
        from lucid_fx._src.transforms.sgd import sgd

        adam().update(params, sgd().init(params))
