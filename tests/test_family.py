"""Generic tests of every element-wise optimizer in the table: one body, one row each.

Adding an optimizer to ``optimizers_under_test.ROWS`` runs these for it: the
non-finite policy (propagate by default, skip and count with ``skip_nonfinite``)
and the dtype policy (low-precision parameters keep their dtype; ``state_dtype``
widens the state). Each row's richest configuration (the last of its grid, every
buffer on) is the one tested; the reference is the row's float64 NumPy one.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import (
    ROWS,
    RTOL_REF_F32,
    RTOL_TORCH_F32,
    RTOL_TORCH_F64,
    Row,
    leaves64,
    make_tree,
    tree_error,
)
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx import state_schema as schema
from lucid_fx.hyperparameters import as_precise, is_static

# The stateful face against the functional one in float32: the same operations on the
# same scalars, but XLA may contract a multiply-add into one FMA in the packed step and
# not in the one-array run: <= 1 ulp per step (measured below 2**-22 over 8 steps).
RTOL_FACES_F32 = 2**-21


def _richest(row: Row) -> dict[str, Any]:
    """The grid's last configuration: every flag on, so every buffer exists."""
    return dict(list(row.grid.values())[-1])


def _buffers(row: Row, state: Any) -> dict[str, Any]:
    return {k: getattr(state, k) for k in row.buffers if getattr(state, k) is not None}


@pytest.mark.parametrize("name", ROWS)
def test_nonfinite_gradients_propagate_by_default(name: str) -> None:
    row = ROWS[name]
    tx = row.factory(**_richest(row))
    updates, state = tx.update(jnp.array([1.0, np.nan]), tx.init(jnp.ones(2)), jnp.ones(2))
    assert np.isnan(np.asarray(updates)).tolist() == [False, True]
    assert int(state.step) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ROWS)
def test_skip_nonfinite_changes_nothing_and_counts(name: str, bad: float) -> None:
    """A skipped step keeps ``step`` too, so a bias correction after it is still right."""
    row = ROWS[name]
    hyper = _richest(row)
    rng = np.random.default_rng(8)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    g1, g2 = make_tree(rng, np.float32), make_tree(rng, np.float32)
    broken = jax.tree.map(np.copy, g2)
    broken["dense"]["w"][1, 2] = bad
    tx = row.factory(**hyper, skip_nonfinite=True)
    update = jax.jit(tx.update)
    updates, state1 = update(g1, tx.init(params0), params0)
    params1 = fx.apply_updates(params0, updates)
    zeros, skipped = update(broken, state1, params1)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(zeros))
    chex.assert_trees_all_equal(skipped._replace(skipped=None), state1._replace(skipped=None))
    assert int(skipped.skipped) == 1 and int(skipped.step) == 1
    updates, state2 = update(g2, skipped, params1)
    history, _ = row.reference(leaves64(params0), [leaves64(g1), leaves64(g2)], **hyper)
    assert tree_error(fx.apply_updates(params1, updates), history[-1]) <= RTOL_REF_F32
    assert int(state2.skipped) == 1 and int(state2.step) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", ROWS)
def test_low_precision_params_keep_their_dtype(name: str, dtype: Any) -> None:
    row = ROWS[name]
    rng = np.random.default_rng(7)
    params = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    tx = row.factory(**_richest(row))
    updates, state = jax.jit(tx.update)(make_tree(rng, dtype), tx.init(params), params)
    leaves = jax.tree.leaves((updates, _buffers(row, state), fx.apply_updates(params, updates)))
    assert {x.dtype for x in leaves} == {jnp.dtype(dtype)}


@pytest.mark.parametrize("name", ROWS)
def test_state_dtype_float32_for_bfloat16_params(name: str) -> None:
    row = ROWS[name]
    # Without weight decay the buffers depend on the (exact) bfloat16 gradients only,
    # so float32 state must reach float32 accuracy against the float64 reference.
    hyper = _richest(row)
    if "weight_decay" in hyper:
        hyper["weight_decay"] = 0
    rng = np.random.default_rng(5)
    params = jax.tree.map(jnp.asarray, make_tree(rng, jnp.bfloat16))
    grads = [make_tree(rng, jnp.bfloat16) for _ in range(10)]
    tx = row.factory(**hyper, state_dtype=jnp.float32)
    state, update = tx.init(params), jax.jit(tx.update)
    params0 = params
    for g in grads:
        updates, state = update(g, state, params)
        assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
        params = fx.apply_updates(params, updates)
    assert update._cache_size() == 1
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    buffers = _buffers(row, state)
    assert buffers and {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(jnp.float32)}
    _, ref = row.reference(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    for key, value in buffers.items():
        assert tree_error(value, ref[key]) <= RTOL_REF_F32, key


# ------------------------------------------------------------------ the stateful face, every row

STATEFUL = [name for name, row in ROWS.items() if row.stateful is not None]
SHAPES = ((3, 2), (4,))  # two Parameters: one packed buffer per group
STATEFUL_STEPS = 8


def _stateful_problem(dtype: Any) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """Initial values and per-step gradients; the second Parameter skips every third step
    (torch then advances neither its step count nor any per-parameter scalar)."""
    rng = np.random.default_rng(1000)
    values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads: list[list[np.ndarray | None]] = []
    for t in range(STATEFUL_STEPS):
        step = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        grads.append([step[0], None if t % 3 == 1 else step[1]])
    return values, grads


def _stateful_run(row: Row, dtype: Any) -> tuple[list[Any], dict[str, list[np.ndarray]]]:
    """Every configuration of the grid as one param group of one optimizer: one compiled
    step for the whole grid. Returns (optimizer, group -> final values) and the state."""
    values, grads = _stateful_problem(dtype)
    params = {label: [fx.Parameter(jnp.asarray(v)) for v in values] for label in row.grid}
    groups = [{"params": params[label], **config} for label, config in row.grid.items()]
    assert row.stateful is not None
    opt = row.stateful(groups)
    for step_grads in grads:
        opt.zero_grad()
        for label in row.grid:
            for p, g in zip(params[label], step_grads):
                if g is not None:
                    p.grad = jnp.asarray(g)
        opt.step()
    assert all(ps[0]._pack is ps[1]._pack for ps in params.values())
    return opt, params


def _torch_run(row: Row, config: dict[str, Any], dtype: Any) -> tuple[list[np.ndarray], Any]:
    torch = pytest.importorskip("torch", reason="parity is checked against real torch "
                                                "(pip install 'lucid_fx[test]')")
    values, grads = _stateful_problem(dtype)
    params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    # torch keeps per-parameter scalars (NAdam's mu_product, ASGD's eta) in its default
    # dtype, float32 unless set: a float64 run sets it, as a float64 training script does.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        opt = getattr(torch.optim, row.torch_class)(params, foreach=False, **config)
        for step_grads in grads:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, step_grads):
                if g is not None:
                    p.grad = torch.tensor(g)
            opt.step()
    finally:
        torch.set_default_dtype(default)
    return [p.detach().numpy() for p in params], [opt.state[p] for p in params]


def _functional_runs(row: Row, dtype: Any) -> dict[str, list[np.ndarray]]:
    """Label -> final values of one functional run per Parameter, stepping only when it
    has a gradient, with the numeric hyper-parameters traced as the stateful face traces
    them (a structural zero, momentum 0, stays static there). One jitted function steps
    every configuration: two compilations (with and without the second Parameter)."""
    values, grads = _stateful_problem(dtype)
    zeros = {field.absent_when_zero for field in schema.fields_of(
        type(row.factory().init(jnp.zeros(1)))).values()}
    static, numbers = {}, {}
    for label, config in row.grid.items():
        static[label] = {k: v for k, v in config.items()
                         if is_static(v) or (k in zeros and v == 0)}
        numbers[label] = {k: as_precise(v) for k, v in config.items() if k not in static[label]}

    def update_all(entries: dict[Any, Any], hypers: dict[str, Any]) -> dict[Any, Any]:
        return {(label, i): row.factory(**static[label], **hypers[label]).update(g, s, p)
                for (label, i), (g, s, p) in entries.items()}

    update = jax.jit(update_all)
    params = {(label, i): jnp.asarray(v) for label in row.grid for i, v in enumerate(values)}
    states = {(label, i): row.factory(**row.grid[label]).init(p)
              for (label, i), p in params.items()}
    for step_grads in grads:
        entries = {key: (jnp.asarray(step_grads[key[1]]), states[key], params[key])
                   for key in params if step_grads[key[1]] is not None}
        for key, (updates, state) in update(entries, numbers).items():
            params[key], states[key] = fx.apply_updates(params[key], updates), state
    return {label: [np.asarray(params[label, i]) for i in range(len(values))]
            for label in row.grid}


def _stateful_errors(name: str, dtype: Any) -> dict[str, float]:
    """Worst error of the stateful face against torch (parameters, buffers, step) and
    against the functional face, over the row's whole grid."""
    row = ROWS[name]
    opt, params = _stateful_run(row, dtype)
    functional = _functional_runs(row, dtype)
    errors = {"torch": 0.0, "functional": 0.0, "step": 0.0}
    for label, config in row.grid.items():
        theirs, torch_state = _torch_run(row, dict(config), dtype)
        ours = [np.asarray(p.value) for p in params[label]]
        errors["torch"] = max(errors["torch"], *map(max_rel_error, ours, theirs))
        for p, state in zip(params[label], torch_state):
            for key in row.buffers:
                assert (key in opt.state[p]) == (key in state), (label, key)
                if key in state:
                    expected = state[key].numpy() * row.torch_scale(key, config)
                    errors["torch"] = max(errors["torch"], max_rel_error(opt.state[p][key],
                                                                         expected))
            if "step" in state:
                errors["step"] = max(errors["step"],
                                     abs(float(opt.state[p]["step"]) - float(state["step"])))
        errors["functional"] = max(errors["functional"],
                                   *map(max_rel_error, ours, functional[label]))
    return errors


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_face_matches_torch_and_the_functional_face(name: str) -> None:
    """Every flag combination, with the second Parameter of each packed buffer skipping
    steps, so per-parameter counts (bias corrections) differ inside one buffer."""
    errors = _stateful_errors(name, np.float32)
    assert errors["step"] == 0, errors
    assert errors["torch"] <= RTOL_TORCH_F32, errors
    # The same math on the same traced scalars; where XLA fuses the packed step's
    # multiply-adds differently from the one-array run, 1 ulp per step.
    assert errors["functional"] <= RTOL_FACES_F32, errors


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_face_matches_torch_in_float64(name: str) -> None:
    with jax.enable_x64(True):
        errors = _stateful_errors(name, np.float64)
    assert errors["step"] == 0, errors
    assert errors["torch"] <= RTOL_TORCH_F64, errors
    assert errors["functional"] <= RTOL_TORCH_F64, errors


@pytest.mark.parametrize("name", STATEFUL)
def test_torch_state_dicts_load_and_export_and_the_run_continues_as_torchs(name: str) -> None:
    """torch -> fx: load torch's dict after 4 steps and go on as torch goes on; fx -> torch:
    torch loads our export and goes on as we do. Every buffer is on (the richest config)."""
    torch = pytest.importorskip("torch", reason="state dicts are exchanged with real torch "
                                                "(pip install 'lucid_fx[test]')")
    row = ROWS[name]
    assert row.stateful is not None
    config = _richest(row)
    values, grads = _stateful_problem(np.float32)
    first, rest = grads[:4], grads[4:]

    def torch_optimizer() -> tuple[list[Any], Any]:
        params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
        return params, getattr(torch.optim, row.torch_class)(params, foreach=False, **config)

    def torch_steps(params: list[Any], opt: Any, steps: list[list[np.ndarray | None]]) -> None:
        for step_grads in steps:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, step_grads):
                if g is not None:
                    p.grad = torch.tensor(g)
            opt.step()

    def fx_steps(params: list[fx.Parameter], opt: Any, steps: list[list[np.ndarray | None]]) -> None:
        for step_grads in steps:
            opt.zero_grad()
            for p, g in zip(params, step_grads):
                if g is not None:
                    p.grad = jnp.asarray(g)
            opt.step()

    # torch -> fx
    theirs, their_opt = torch_optimizer()
    torch_steps(theirs, their_opt, first)
    ours = [fx.Parameter(jnp.asarray(p.detach().numpy())) for p in theirs]
    our_opt = row.stateful(ours, **config)
    our_opt.load_state_dict(their_opt.state_dict())
    torch_steps(theirs, their_opt, rest)
    fx_steps(ours, our_opt, rest)
    for p, q in zip(ours, theirs):
        assert max_rel_error(p.value, q.detach().numpy()) <= RTOL_TORCH_F32
    # fx -> torch
    back_params = [torch.nn.Parameter(torch.tensor(np.asarray(p.value))) for p in ours]
    back = getattr(torch.optim, row.torch_class)(back_params, foreach=False, **config)
    back.load_state_dict(our_opt.torch_state_dict())
    torch_steps(back_params, back, first)
    fx_steps(ours, our_opt, first)
    for p, q in zip(ours, back_params):
        assert max_rel_error(p.value, q.detach().numpy()) <= RTOL_TORCH_F32
    for key in row.buffers:
        for p, q in zip(ours, back_params):
            assert (key in our_opt.state[p]) == (key in back.state[q]), key
            if key in back.state[q]:
                expected = back.state[q][key].numpy() * row.torch_scale(key, config)
                assert max_rel_error(our_opt.state[p][key], expected) <= RTOL_TORCH_F32, key
