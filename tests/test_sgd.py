"""Tests of ``lucid_fx._src.transforms.sgd``: torch.optim.SGD parity over every flag combination, the
float64 reference (tests/reference.py), optax, dtypes, schedules, skipping and errors.

The grid's parity with torch and the reference in both dtypes runs in tests/test_family.py.
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
    run,
    shape_trees,
    split,
    tree_error,
)
from reference import max_rel_error, sgd_reference

import lucid_fx as fx
from lucid_fx._src.transforms.sgd import SGDState, sgd, sgd_kernel

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

ROW = ROWS["sgd"]
GRID = ROW.grid
RTOL_ONE_STEP_BF16 = 2**-7  # one rounding to bfloat16 (8 significant bits), relative


def test_grid_covers_every_valid_flag_combination() -> None:
    # 2^5 combinations, of which Nesterov with momentum 0 or dampening ≠ 0 (12) is invalid.
    assert len(GRID) == 20


# ------------------------------------------------------------------ parity: torch and reference
# The grid against torch and the reference, float32 and float64, real and complex, at a
# constant and a changing lr: tests/test_family.py, from ROWS["sgd"]. Here: the eager path.


@pytest.mark.parametrize("label", ["defaults", "momentum=0.9,nesterov=True,maximize=True",
                                   "momentum=0.9,dampening=0.1,weight_decay=0.1"])
def test_parity_float32_eager(label: str) -> None:
    errors = run(ROW, GRID[label], np.float32, jit=False, torch=torch, label=label)
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F32, errors
    assert theirs <= RTOL_TORCH_F32, errors


def test_optax_schedule() -> None:
    schedule = optax.exponential_decay(0.1, transition_steps=4, decay_rate=0.5)
    rng = np.random.default_rng(0)
    params0 = make_tree(rng, np.float32)
    grads = [make_tree(rng, np.float32) for _ in range(12)]
    tx = sgd(schedule, momentum=0.9, weight_decay=0.01)
    params, state, update = jax.tree.map(jnp.asarray, params0), None, jax.jit(tx.update)
    state = tx.init(params)
    for g in grads:
        updates, state = update(g, state, params)
        params = fx.apply_updates(params, updates)
    lrs = [float(jax.jit(schedule)(np.int32(t))) for t in range(12)]
    history, _ = sgd_reference(leaves64(params0), [leaves64(g) for g in grads], lr=lrs,
                               momentum=0.9, weight_decay=0.01)
    assert tree_error(params, history[-1]) <= RTOL_REF_F32


def test_defaults_and_order_are_torchs() -> None:
    ours = inspect.signature(sgd).parameters
    theirs = inspect.signature(torch.optim.SGD).parameters
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD and n != "params"]
    assert positional[0] == ("lr", 1e-3)
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["maximize"].default is theirs["maximize"].default is False


# ------------------------------------------------------------------ the first-step rule, state


def test_first_step_takes_the_gradient_undampened() -> None:
    tx = sgd(lr=1.0, momentum=0.5, dampening=0.5)
    params = jnp.zeros(1)
    state = tx.init(params)
    u1, state = tx.update(jnp.array([2.0]), state, params)
    assert state.momentum_buffer.tolist() == [2.0] and u1.tolist() == [-2.0]  # b_1 = g
    u2, state = tx.update(jnp.array([4.0]), state, params)
    assert state.momentum_buffer.tolist() == [3.0] and u2.tolist() == [-3.0]  # 0.5·2 + 0.5·4


def test_kernel_first_step_is_per_element() -> None:
    """``step`` broadcasts: elements at their first step start b = g, the others go on."""
    g, b = jnp.array([2.0, 2.0, 2.0]), jnp.array([1.0, 1.0, 1.0])
    delta, new_b = sgd_kernel(g, b, step=jnp.array([1, 2, 7], jnp.int32), lr=1.0,
                              momentum=0.5, dampening=0.25, nesterov=False)
    assert new_b.tolist() == [2.0, 2.0, 2.0]  # [g, 0.5·1 + 0.75·2, same]
    delta, new_b = sgd_kernel(g, b, step=jnp.array([1, 2, 7], jnp.int32), lr=1.0,
                              momentum=0.5, dampening=0.5, nesterov=False)
    assert new_b.tolist() == [2.0, 1.5, 1.5] and delta.tolist() == [-2.0, -1.5, -1.5]


def test_state_layout_follows_the_flags() -> None:
    params = {"w": jnp.ones(3)}
    plain = sgd().init(params)
    assert isinstance(plain, SGDState)
    assert plain.momentum_buffer is None and plain.skipped is None
    assert plain.step.dtype == jnp.int32 and int(plain.step) == 0
    full = sgd(momentum=0.9, skip_nonfinite=True).init(params)
    assert jax.tree.structure(full.momentum_buffer) == jax.tree.structure(params)
    assert int(full.skipped) == 0
    # A jax array, even 0, may change later (traced), so it gets a buffer.
    assert sgd(momentum=jnp.asarray(0.0)).init(params).momentum_buffer is not None


def test_plain_sgd_needs_no_state_tree() -> None:
    tx = sgd(lr=0.5)
    updates, state = tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))
    assert updates["a"].tolist() == [-0.5, -0.5] and int(state.step) == 1


def test_none_leaves_and_empty_trees() -> None:
    tx = sgd(lr=0.1, momentum=0.9, weight_decay=0.1, skip_nonfinite=True)
    params = {"w": jnp.array([1.0, -2.0]), "frozen": None}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([0.5, 3.0]), "frozen": None}, state, params)
    assert updates["frozen"] is None and state.momentum_buffer["frozen"] is None
    for transform, empty in ((tx, {}), (tx, []), (sgd(momentum=0.9, skip_nonfinite=True), None)):
        state = transform.init(empty)
        updates, new_state = transform.update(empty, state, empty)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


# ------------------------------------------------------------------ optax


OPTAX_LABELS = [label for label, c in GRID.items() if c["dampening"] == 0 and not c["maximize"]]


@pytest.mark.parametrize("label", OPTAX_LABELS)
def test_agrees_with_optax(label: str) -> None:
    """optax's sgd is torch's without dampening: its trace starts at 0, so b_1 = g too.

    Two float32 computations of the same formulas: each within RTOL_REF_F32 of exact.
    """
    config = GRID[label]
    theirs = optax.chain(
        optax.add_decayed_weights(config["weight_decay"]),
        optax.sgd(config["lr"], momentum=config["momentum"] or None, nesterov=config["nesterov"]),
    )
    rng = np.random.default_rng(1)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = [make_tree(rng, np.float32) for _ in range(20)]
    finals = []
    for tx in (sgd(**config), theirs):
        params, state, update = params0, tx.init(params0), jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
        finals.append(params)
    chex.assert_trees_all_close(finals[0], finals[1], rtol=2 * RTOL_REF_F32, atol=2 * RTOL_REF_F32)


# ------------------------------------------------------------------ property test


@given(
    shape_tree=shape_trees,
    lr=st.floats(0.0, 1.0),
    momentum=st.sampled_from([0.0, 0.5, 0.99]),
    dampening=st.sampled_from([0.0, 0.3, -0.5]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, momentum: float, dampening: float, weight_decay: float,
    nesterov: bool, maximize: bool, steps: int, seed: int,
) -> None:
    nesterov = nesterov and momentum > 0 and dampening == 0
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, Shape))

    hyper = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                 "nesterov": nesterov, "maximize": maximize}
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = sgd(**hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = sgd_reference(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    # A few steps of |update| up to lr·(1 + λ|θ|)·(1 + μ)/(1 - μ) ≈ 200·|g|: errors scale
    # with it, so the tolerance is relative to the sizes the reference reaches.
    scale = max([1.0] + [float(np.max(np.abs(x), initial=0)) for x in history[-1]])
    assert tree_error(params, history[-1]) <= RTOL_REF_F32 * scale
    assert tree_error(state.momentum_buffer, ref["momentum_buffer"]) <= RTOL_REF_F32 * scale


# ------------------------------------------------------------------ dtypes


def test_state_dtype_bfloat16_rounds_the_stored_buffer() -> None:
    """b is kept in bfloat16 and the step goes on from the stored (rounded) value."""
    hyper = {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}
    rng = np.random.default_rng(6)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    g1, g2 = make_tree(rng, np.float32), make_tree(rng, np.float32)
    tx = sgd(**hyper, state_dtype=jnp.bfloat16)
    update = jax.jit(tx.update)
    _, state = update(g1, tx.init(params), params)
    updates, state = update(g2, state, params)
    assert {x.dtype for x in jax.tree.leaves(state.momentum_buffer)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}

    def bf16(x: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float64)

    for u, b, a, c in zip(leaves64(updates), leaves64(state.momentum_buffer), leaves64(g1),
                          leaves64(g2)):
        expected_b = bf16(0.9 * bf16(a) + 0.9 * c)  # b_1 = g1 stored, then μ·b_1 + (1-τ)·g2
        assert np.all(np.abs(b - expected_b) <= RTOL_ONE_STEP_BF16 * np.abs(expected_b))
        assert max_rel_error(u, -0.1 * b) <= 1e-7  # the update uses b as stored


# ------------------------------------------------------------------ non-finite gradients


def test_skip_nonfinite_keeps_the_first_step_rule() -> None:
    """A skipped first step leaves step at 0, so the next finite step still starts b = g."""
    tx = sgd(lr=1.0, momentum=0.5, dampening=0.5, skip_nonfinite=True)
    params = jnp.zeros(1)
    _, state = tx.update(jnp.array([np.nan]), tx.init(params), params)
    _, state = tx.update(jnp.array([2.0]), state, params)
    assert state.momentum_buffer.tolist() == [2.0]


# ------------------------------------------------------------------ traced hyper-parameters


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(9)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def train(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = sgd(**hyper, nesterov=False)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
                   {"lr": 0.02, "momentum": 0.5, "dampening": -0.2, "weight_decay": 0.0}):
        params, state = train({k: jnp.float32(v) for k, v in values.items()}, params0)
        history, ref = sgd_reference([params0["w"]], [[g["w"]] for g in grads], **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32
        assert max_rel_error(state.momentum_buffer["w"], ref["momentum_buffer"][0]) <= RTOL_REF_F32
    assert train._cache_size() == 1


def test_inject_hyperparams_changes_lr_without_recompiling() -> None:
    rng = np.random.default_rng(10)
    params0 = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.standard_normal(5), jnp.float32)} for _ in range(6)]
    lrs = [0.1, 0.1, 0.01, 0.3, 0.0, 0.05]
    tx = optax.inject_hyperparams(sgd)(lr=0.1, momentum=0.9, dampening=0.2)
    params, state, update = params0, tx.init(params0), jax.jit(tx.update)
    for lr, g in zip(lrs, grads):
        state.hyperparams["lr"] = jnp.asarray(lr, jnp.float32)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1
    history, _ = sgd_reference([params0["w"]], [[g["w"]] for g in grads],
                               lr=[float(np.float32(x)) for x in lrs], momentum=0.9,
                               dampening=0.2)
    assert max_rel_error(params["w"], history[-1][0]) <= RTOL_REF_F32


# ------------------------------------------------------------------ errors


HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr<0", {"lr": -0.1}, r"Invalid lr value: -0\.1 \(expected a number >= 0\.0\)"),
    ("momentum<0", {"momentum": -0.9},
     r"Invalid momentum value: -0\.9 \(expected a number >= 0\.0\)"),
    ("weight_decay<0", {"weight_decay": -1e-4},
     r"Invalid weight_decay value: -0\.0001 \(expected a number >= 0\.0\)"),
    ("dampening=nan", {"dampening": math.nan},
     r"Invalid dampening value: nan \(expected a real number\)"),
    ("dampening=str", {"dampening": "0.1"},
     r"Invalid dampening value: '0\.1' \(expected a real number\)"),
    ("nesterov without momentum", {"nesterov": True},
     (r"Invalid nesterov value: True \(Nesterov momentum needs momentum > 0 and dampening = 0; "
      r"got momentum=0, dampening=0\)")),
    ("nesterov with dampening", {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
     r"Invalid nesterov value: True .*got momentum=0\.9, dampening=0\.1\)"),
    ("nesterov=1", {"nesterov": 1}, r"Invalid nesterov value: 1 \(expected True or False\)"),
    ("maximize=str", {"maximize": "no"},
     r"Invalid maximize value: 'no' \(expected True or False\)"),
    ("state_dtype=int32", {"state_dtype": jnp.int32},
     r"Invalid state_dtype value: .*int32.* \(expected None or a floating-point dtype\)"),
] + [
    (f"{name}=nan", {name: math.nan}, rf"Invalid {name} value: nan \(expected a number")
    for name in ("lr", "momentum", "weight_decay")
]


@pytest.mark.parametrize("kwargs, pattern", [e[1:] for e in HYPER_ERRORS],
                         ids=[e[0] for e in HYPER_ERRORS])
def test_invalid_hyperparameters_raise(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        sgd(**kwargs)


def test_torch_refuses_the_same_nesterov_configurations() -> None:
    param = [torch.zeros(1, requires_grad=True)]
    for kwargs in ({"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}):
        with pytest.raises(ValueError):
            torch.optim.SGD(param, **kwargs)
        with pytest.raises(ValueError):
            sgd(**kwargs)


def test_traced_momentum_with_nesterov_is_accepted() -> None:
    tx = sgd(momentum=jnp.float32(0.9), nesterov=True)
    assert tx.init(jnp.ones(2)).momentum_buffer is not None


def test_non_float_params_raise() -> None:
    with pytest.raises(TypeError, match=r"sgd optimizes floating-point parameters only; "
                                        r"\['n'\] has dtype int32\. Cast it"):
        sgd(momentum=0.9).init({"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)})
    with pytest.raises(TypeError, match=r"sgd optimizes floating-point gradients only"):
        sgd().update({"n": jnp.ones(2, jnp.int32)}, sgd().init(None))


def test_mismatched_gradients_name_the_path() -> None:
    params = {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 2))]}
    tx = sgd(momentum=0.9)
    grads = {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 3))]}
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['layers'\]\[1\] "
                                         r"has shape \(2, 3\), expected \(2, 2\)"):
        tx.update(grads, tx.init(params), params)


def test_weight_decay_needs_matching_params() -> None:
    params = {"a": jnp.ones(2)}
    for tx in (sgd(weight_decay=0.1), sgd(weight_decay=0.1, momentum=0.9)):
        with pytest.raises(ValueError, match=r"sgd: weight_decay is non-zero, so update\(\) "
                                             r"needs params"):
            tx.update(params, tx.init(params))
        with pytest.raises(ValueError, match=r"params do not match the (state|gradients): "
                                             r"\['a'\] has shape \(3,\), expected \(2,\)"):
            tx.update(params, tx.init(params), {"a": jnp.ones(3)})


def test_state_from_other_flags_is_refused() -> None:
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"sgd: the state lacks momentum_buffer, so it was made "
                                         r"by an sgd with a different momentum"):
        sgd(momentum=0.9).update(params, sgd().init(params))
    with pytest.raises(ValueError, match=r"the state has momentum_buffer"):
        sgd().update(params, sgd(momentum=0.9).init(params))
    with pytest.raises(ValueError, match=r"the state lacks skipped"):
        sgd(skip_nonfinite=True).update(params, sgd().init(params))
    with pytest.raises(TypeError, match=r"sgd: state must be the SGDState made by this "
                                        r"transform's init, got RMSpropState"):
        sgd().update(params, fx.rmsprop().init(params))
