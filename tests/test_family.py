"""Generic tests of every optimizer in the table: one body, one row each.

Adding an optimizer to ``optimizers_under_test.ROWS`` runs these for it:

- the non-finite policy (propagate by default, to its own elements only; skip and
  count with ``skip_nonfinite``), the dtype policy (low-precision parameters keep
  their dtype; ``state_dtype`` widens the state; float32 stays float32 under x64), the
  state at init and donated states, on the row's richest configuration (the grid's
  last: every buffer on) against the row's float64 NumPy reference;
- torch's signature and defaults, the stateful class's signature, None and empty
  leaves, and every error: the row's bad inputs in both faces (in a group and in
  add_param_group too) and written into ``param_groups`` (nothing changes), torch
  refusing the same, update's errors;
- parity over the whole grid and the special cases with torch and the reference,
  float32 and float64 (in this process, under ``jax.enable_x64(True)``), real and
  complex (unless ``Row.real_only``), constant and changing lr (against the reference
  only where torch differs on purpose: ``Row.own_parity``, ``Row.torch_complex``);
  eagerly, with lr changed through ``optax.inject_hyperparams``, and with torch's
  StepLR driving both classes (no compilation after the first step);
- the shapes each row takes (``Row.shape``: Muon's matrices), and torch computing as a
  row's configurations ask (``Row.torch_numerics``);
- the stateful face over the whole grid (one optimizer, one compiled step) against
  torch and the functional face, float32 and float64, with Parameters that join late,
  skip steps, never step, and join by add_param_group; and torch's state dicts both
  ways, bit for bit, and runs that go on after an exchange as torch's go on.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import (
    LUCID_ONLY,
    ROWS,
    RTOL_REF_F32,
    RTOL_REF_F64,
    RTOL_TORCH_F32,
    RTOL_TORCH_F64,
    STATEFUL_STEPS,
    Bad,
    CompileCounter,
    Faces,
    Row,
    leaves64,
    make_tree,
    one_torch_thread,
    own_rel_error,
    run,
    run_many,
    split,
    stateful_faces,
    stateful_problem,
    tiered,
    torch_default_dtype,
    tree_error,
    without_lucid_options,
)
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx._src.core import schema
from lucid_fx._src.core.scalars import is_static
from lucid_fx._src.stateful.steps import CPU_COMPILER_OPTIONS, compiled_step


def _torch() -> Any:
    return pytest.importorskip("torch", reason="parity is checked against real torch "
                                               "(pip install 'lucid_fx[test]')")


def _buffers(row: Row, state: Any) -> dict[str, Any]:
    return {k: getattr(state, k) for k in row.buffers if getattr(state, k) is not None}


def _torch_keys(row: Row, state: dict[str, Any]) -> set[str]:
    """The keys of one of our per-Parameter states that torch's state has too."""
    fields = schema.of(row.factory).fields
    return {key for key in state if fields[key].torch_key}


@pytest.mark.parametrize("name", tiered(ROWS))
def test_nonfinite_gradients_propagate_by_default(name: str) -> None:
    """To their own elements only (their own matrix, for a matrix's update), and in the
    stateful face not to the Parameter that shares their packed buffer or stack either."""
    row = ROWS[name]
    config = row.grid[row.richest]
    tx = row.factory(**config)
    ones = jnp.ones(row.shape(2))
    updates, state = tx.update(row.array(jnp.array([1.0, np.nan])), tx.init(ones), ones)
    elementwise = schema.of(row.factory).elementwise
    if not elementwise:  # the update reads the whole array (a norm): NaN reaches all of it
        assert np.isnan(np.asarray(updates)).all()
    else:
        assert np.isnan(np.asarray(updates)).ravel().tolist() == [False, True]
    assert int(state.step) == 1
    p, q = fx.Parameter(ones), fx.Parameter(ones)
    opt = row.stateful([p, q], **config)
    p.grad, q.grad = row.array(jnp.array([np.nan, 1.0])), ones
    opt.step()
    assert np.isnan(np.asarray(p.value)).any()
    assert elementwise or np.isnan(np.asarray(p.value)).all()
    assert not elementwise or np.isnan(np.asarray(p.value)).ravel().tolist() == [True, False]
    assert np.all(np.isfinite(np.asarray(q.value)))


@functools.cache
def _skipping(name: str) -> tuple[Any, Any]:
    """The richest configuration with skip_nonfinite, and its jitted update: one
    compilation for the three kinds of non-finite value."""
    row = ROWS[name]
    tx = row.factory(**row.grid[row.richest], skip_nonfinite=True)
    return tx, jax.jit(tx.update)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", tiered(ROWS))
def test_skip_nonfinite_changes_nothing_and_counts(name: str, bad: float) -> None:
    """A skipped step keeps ``step`` too, so a bias correction after it is still right."""
    row = ROWS[name]
    hyper = row.grid[row.richest]
    rng = np.random.default_rng(8)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32, row))
    g1, g2 = make_tree(rng, np.float32, row), make_tree(rng, np.float32, row)
    broken = jax.tree.map(np.copy, g2)
    broken["dense"]["w"][1, 2] = bad
    tx, update = _skipping(name)
    updates, state1 = update(g1, tx.init(params0), params0)
    params1 = fx.apply_updates(params0, updates)
    zeros, skipped = update(broken, state1, params1)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(zeros))
    chex.assert_trees_all_equal(skipped._replace(skipped=None), state1._replace(skipped=None))
    assert int(skipped.skipped) == 1 and int(skipped.step) == 1
    updates, state2 = update(g2, skipped, params1)
    history, _ = row.reference(leaves64(params0), [leaves64(g1), leaves64(g2)],
                               **without_lucid_options(hyper))
    assert tree_error(fx.apply_updates(params1, updates), history[-1]) <= RTOL_REF_F32
    assert int(state2.skipped) == 1 and int(state2.step) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", tiered(ROWS))
def test_low_precision_params_keep_their_dtype(name: str, dtype: Any) -> None:
    row = ROWS[name]
    rng = np.random.default_rng(7)
    params = jax.tree.map(jnp.asarray, make_tree(rng, dtype, row))
    tx = row.factory(**row.grid[row.richest])
    update, state = jax.jit(tx.update), tx.init(params)
    for _ in range(2):  # the second step from the stored buffers, the same program
        updates, state = update(make_tree(rng, dtype, row), state, params)
        params = fx.apply_updates(params, updates)
    assert update._cache_size() == 1
    leaves = jax.tree.leaves((updates, _buffers(row, state), params))
    assert {x.dtype for x in leaves} == {jnp.dtype(dtype)}


@pytest.mark.parametrize("name", tiered(ROWS))
def test_state_dtype_float32_for_bfloat16_params(name: str) -> None:
    row = ROWS[name]
    # Without weight decay the buffers depend on the (exact) bfloat16 gradients only,
    # so float32 state must reach float32 accuracy against the float64 reference.
    hyper = dict(row.grid[row.richest])
    if "weight_decay" in hyper:
        hyper["weight_decay"] = 0
    rng = np.random.default_rng(5)
    params = jax.tree.map(jnp.asarray, make_tree(rng, jnp.bfloat16, row))
    grads = [make_tree(rng, jnp.bfloat16, row) for _ in range(10)]
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
    _, ref = row.reference(leaves64(params0), [leaves64(g) for g in grads],
                          **without_lucid_options(hyper))
    for key, value in buffers.items():
        # A buffer that follows the parameters (ASGD's average of θ) averages the
        # bfloat16-rounded θ of this run, while the reference's θ is never rounded: the
        # two part by bfloat16's rounding (~1e-2), whatever the state's precision. Its
        # dtype is checked above; its float32 accuracy in the float32 and float64 parity.
        if key not in row.follows_params:
            assert tree_error(value, ref[key]) <= RTOL_REF_F32, key


@pytest.mark.parametrize("name", tiered(ROWS))
def test_float32_stays_float32_under_x64(name: str) -> None:
    """Under x64 Python numbers and schedules are 64-bit: float32 parameters still get
    float32 updates, buffers and per-parameter scalars, an int32 step, and float32
    accuracy."""
    row = ROWS[name]
    config = dict(row.grid[row.richest])
    rng = np.random.default_rng(0)
    params0, grads = make_tree(rng, np.float32, row), make_tree(rng, np.float32, row)
    with jax.enable_x64(True):
        if row.lrs is not None:  # exactly config["lr"] at the first step
            config["lr"] = optax.exponential_decay(config["lr"], 10, 0.5)
        params = jax.tree.map(jnp.asarray, params0)
        tx = row.factory(**config)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        params = fx.apply_updates(params, updates)
    arrays = (updates, _buffers(row, state), [getattr(state, k) for k in row.scalars], params)
    assert {x.dtype for x in jax.tree.leaves(arrays)} == {jnp.dtype(jnp.float32)}
    assert state.step.dtype == jnp.int32
    history, _ = row.reference(leaves64(params0), [leaves64(grads)],
                               **without_lucid_options(row.grid[row.richest]))
    assert tree_error(params, history[-1]) <= RTOL_REF_F32


@pytest.mark.parametrize("name", ROWS)
def test_the_state_at_init(name: str) -> None:
    """step is an int32 0; skipped exists with skip_nonfinite only, an int32 0; each buffer
    is a tree like the parameters'. A number that switches a buffer on (momentum) given
    as a jax array keeps the buffer at 0 too: under jit it may change later."""
    row = ROWS[name]
    params = {"w": jnp.ones(row.shape(3)), "b": [jnp.ones(row.shape())]}
    plain = row.factory(**row.grid["defaults"]).init(params)
    rich = row.factory(**row.grid[row.richest], skip_nonfinite=True).init(params)
    for state in (plain, rich):
        assert (state.step.dtype, int(state.step)) == (jnp.int32, 0)
    assert plain.skipped is None
    assert (rich.skipped.dtype, int(rich.skipped)) == (jnp.int32, 0)
    for key in row.buffers:  # a shape-aware state: its None where a shape has none
        assert jax.tree.structure(getattr(rich, key), is_leaf=lambda x: x is None) == (
            jax.tree.structure(params)), key
    signature = inspect.signature(row.factory).parameters
    for field, switch in schema.of(row.factory).switches.items():
        if not isinstance(signature[switch].default, bool):
            traced_zero = row.factory(**{switch: jnp.asarray(0.0)}).init(params)
            assert getattr(traced_zero, field) is not None, field


@pytest.mark.parametrize("name", tiered(ROWS))
def test_donated_state_gives_the_same_result(name: str) -> None:
    row = ROWS[name]
    tx, update = _skipping(name)
    rng = np.random.default_rng(3)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32, row))
    grads = make_tree(rng, np.float32, row)
    expected = update(grads, tx.init(params), params)
    donated = tx.init(params)
    # Donation works only if every output buffer matches an input buffer in shape and
    # dtype; a mismatch would warn, and warnings are errors here.
    result = jax.jit(tx.update, donate_argnums=(1,))(grads, donated, params)
    assert all(x.is_deleted() for x in jax.tree.leaves(donated) if x.size)
    chex.assert_trees_all_equal(result, expected)


# ------------------------------------------------------------------ signatures, trees, errors

NO_MEANING = {"params", "foreach", "fused", "differentiable", "capturable"}  # torch's own


@pytest.mark.parametrize("name", ROWS)
def test_defaults_and_order_are_torchs(name: str) -> None:
    """The positional arguments are torch's, with torch's defaults (docs/optimizers.md
    gives each optimizer's); ``maximize`` is keyword-only in every factory, also where
    torch takes it by position (ASGD, RMSprop)."""
    row = ROWS[name]
    ours = inspect.signature(row.factory).parameters
    theirs = inspect.signature(getattr(_torch().optim, row.torch_class)).parameters
    positional = [(n, p.default) for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [(n, p.default) for n, p in theirs.items()
                          if p.kind is p.POSITIONAL_OR_KEYWORD
                          and n not in NO_MEANING | {"maximize"}]
    assert ("maximize" in ours) == ("maximize" in theirs)  # Muon has none
    if "maximize" in theirs:
        assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
        assert ours["maximize"].default is theirs["maximize"].default is False


def test_lucid_fx_options_are_the_ones_torch_dicts_leave_out() -> None:
    """The options the tests keep from torch are those the library drops on export."""
    from lucid_fx._src.interop.torch import LUCID_ONLY_OPTIONS

    assert set(LUCID_ONLY) == LUCID_ONLY_OPTIONS


@pytest.mark.parametrize("name", ROWS)
def test_the_class_signature_is_torchs_then_lucid_fxs(name: str) -> None:
    """The fx class takes torch 2.13's whole signature (its implementation options in
    torch's places) and then lucid_fx's keyword-only options; the transform's arguments
    default to the factory's defaults, which live there."""
    row = ROWS[name]
    written = list(inspect.signature(row.stateful.__init__).parameters.values())
    torch_class = getattr(_torch().optim, row.torch_class)
    theirs = list(inspect.signature(torch_class.__init__).parameters.values())
    assert [(p.name, p.kind, p.default) for p in written[:len(theirs)]] == [
        (p.name, p.kind, p.default) for p in theirs]
    # lucid_fx's own, keyword-only, last: skip_nonfinite and state_dtype in every class,
    # then any of the optimizer's own (Muon's ns_dtype), in LUCID_ONLY's order
    ours = [(p.name, p.kind) for p in written[len(theirs):]]
    assert ours == [(n, inspect.Parameter.KEYWORD_ONLY) for n in LUCID_ONLY
                    if n in {"skip_nonfinite", "state_dtype"} or n in dict(ours)]
    factory = inspect.signature(row.factory).parameters
    for p in written[2:]:
        if p.name in factory:
            assert (p.default, type(p.default)) == (
                factory[p.name].default, type(factory[p.name].default)), p.name
        else:
            assert p.name in ("foreach", "fused", "capturable", "differentiable"), p.name
    # A transform argument torch's class does not take is fixed by it (AdamW's
    # decoupled_weight_decay=True), in defaults and every group, as torch keeps it.
    fixed = set(factory) - {p.name for p in written}
    opt = row.stateful([fx.Parameter(jnp.zeros(row.shape(1)))])
    assert {k: opt.defaults[k] for k in fixed} == {k: factory[k].default for k in fixed}
    assert "__init__" in vars(row.stateful)  # written in the class body, where IDEs read it


def _torch_arguments(row: Row) -> tuple[list[Any], dict[str, Any]]:
    """torch's signature filled with values that differ from its defaults where a value
    may (a flag flipped, a number scaled), as (positional, keyword-only) arguments."""
    def changed(name: str, default: Any) -> Any:
        if name == "differentiable":
            return False  # refused when True (tested below)
        if name == "foreach":
            return True
        if isinstance(default, bool) or default is None:
            return default if name in ("nesterov", "fused") else not default if isinstance(
                default, bool) else default
        if isinstance(default, tuple):
            return default
        if isinstance(default, int):  # a count (Muon's ns_steps)
            return max(default - 1, 0)
        if name == "d":  # Adafactor's clipping threshold: at least 1
            return default * 1.5
        return default * 0.5 if default else default
    positional, keyword = [], {}
    torch_class = getattr(_torch().optim, row.torch_class)
    for p in list(inspect.signature(torch_class.__init__).parameters.values())[2:]:
        value = changed(p.name, p.default)
        if p.kind is p.KEYWORD_ONLY:
            keyword[p.name] = value
        else:
            positional.append(value)
    return positional, keyword


@pytest.mark.parametrize("call", ["positional", "keyword"])
@pytest.mark.parametrize("name", tiered(ROWS))
def test_torchs_whole_signature_gives_torchs_defaults_and_groups(name: str, call: str) -> None:
    """torch's full argument list, by position where torch takes it so or all by keyword,
    builds the optimizer torch builds: ``defaults`` and the group hold torch's keys and
    values (and lucid_fx's two options), and ``print`` shows torch's text."""
    row = ROWS[name]
    torch = _torch()
    positional, keyword = _torch_arguments(row)
    names = [p for p in inspect.signature(getattr(torch.optim, row.torch_class).__init__).parameters
             ][2:]
    by_keyword = {**dict(zip(names, positional)), **keyword}
    theirs = getattr(torch.optim, row.torch_class)(
        [torch.nn.Parameter(torch.zeros(row.shape(2)))], **by_keyword)
    weights = [fx.Parameter(jnp.zeros(row.shape(2)))]
    ours = (row.stateful(weights, *positional, **keyword) if call == "positional"
            else row.stateful(weights, **by_keyword))
    signature = inspect.signature(row.stateful.__init__).parameters
    lucid_only = {n: signature[n].default for n in LUCID_ONLY if n in signature}
    assert ours.defaults == {**theirs.defaults, **lucid_only}
    group = {k: v for k, v in ours.param_groups[0].items() if k != "params"}
    assert group == {**{k: v for k, v in theirs.param_groups[0].items() if k != "params"},
                     **lucid_only}
    torch_text = repr(theirs).splitlines()
    assert [line for line in repr(ours).splitlines()
            if not line.strip().startswith(LUCID_ONLY)] == torch_text
    weights[0].grad = jnp.ones(row.shape(2))
    ours.step()  # the options change nothing in the step


@pytest.mark.parametrize("name", tiered(ROWS))
def test_implementation_options_are_checked_as_torch_would(name: str) -> None:
    row = ROWS[name]
    names = inspect.signature(row.stateful.__init__).parameters
    p = fx.Parameter(jnp.zeros(row.shape(2)))
    if "differentiable" in names:
        with pytest.raises(ValueError, match=r"differentiable=True is not supported.*functional"):
            row.stateful([p], differentiable=True)
    if "foreach" in names:
        with pytest.raises(ValueError, match=r"Invalid foreach value: 'yes' \(expected None, "
                                             r"True"):
            row.stateful([p], foreach="yes")
    if "fused" in names:
        with pytest.raises(RuntimeError, match=r"`fused` and `foreach` cannot be `True`"):
            row.stateful([p], fused=True, foreach=True)
    if "capturable" not in names:  # as torch: an argument its class lacks is a TypeError
        with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['capturable'\]"):
            row.stateful([p], capturable=False)
    if "foreach" in names:
        opt = row.stateful([p])
        opt.param_groups[0]["foreach"] = 3  # checked at the step, as every group value
        p.grad = jnp.ones(row.shape(2))
        with pytest.raises(ValueError, match=r"Invalid foreach value: 3"):
            opt.step()
        assert not np.any(np.asarray(p.value))


@pytest.mark.parametrize("name", ROWS)
def test_the_class_takes_a_number_for_lr(name: str) -> None:
    """A schedule goes to the functional face; the class's lr is driven by a scheduler."""
    with pytest.raises(ValueError, match=r"takes a number for lr, not a schedule|rprop uses lr "
                                         r"only as the initial step size, in init: pass a number"):
        ROWS[name].stateful([fx.Parameter(jnp.ones(ROWS[name].shape(2)))],
                            lr=optax.constant_schedule(0.1))


@pytest.mark.parametrize("name", ROWS)
def test_none_leaves_zero_size_leaves_and_empty_trees(name: str) -> None:
    row = ROWS[name]
    tx = row.factory(**row.grid[row.richest], skip_nonfinite=True)
    params = {"w": row.array(jnp.array([1.0, -2.0])), "frozen": None, "empty": jnp.zeros((0, 3))}
    grads = {"w": row.array(jnp.array([0.5, 3.0])), "frozen": None, "empty": jnp.zeros((0, 3))}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["frozen"] is None and updates["empty"].shape == (0, 3)
    plain = row.factory(**{"weight_decay": 0} if "weight_decay" in row.grid["defaults"] else {})
    cases = [(tx, {}), (tx, [])]
    if row.needs_params is None or row.needs_params[0]:  # without params when it can
        cases.append((plain, None))
    for transform, empty in cases:
        state = transform.init(empty)
        _, new_state = transform.update(empty, state, empty)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("name", ROWS)
def test_update_errors_name_the_problem(name: str) -> None:
    row, n = ROWS[name], ROWS[name].name
    config = row.grid[row.richest]
    tx = row.factory(**config)

    def ones(*shape: int, dtype: Any = jnp.float32) -> jax.Array:
        return jnp.ones(row.shape(*shape), dtype)

    params = {"a": ones(2), "b": [ones(3)]}
    four, three = (re.escape(str(row.shape(k))) for k in (4, 3))
    with pytest.raises(TypeError, match=rf"{n} optimizes floating-point parameters only"):
        tx.init({"n": ones(2, dtype=jnp.int32)})
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['b'\]\[0\] is "
                                         r"missing from gradients"):
        tx.update({"a": ones(2), "b": []}, tx.init(params), params)
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['c'\] is "
                                         r"unexpected in gradients"):
        tx.update({**params, "c": ones(1)}, tx.init(params), params)
    with pytest.raises(ValueError, match=rf"gradients do not match the state: \['b'\]\[0\] has "
                                         rf"shape {four}, (expected {three}|but the state's)"):
        tx.update({"a": ones(2), "b": [ones(4)]}, tx.init(params), params)
    with pytest.raises(TypeError, match=rf"{n} optimizes floating-point gradients only; \['a'\] "
                                        r"has dtype int32"):
        tx.update({**params, "a": ones(2, dtype=jnp.int32)}, tx.init(params), params)
    if row.needs_params is not None:
        needy_config, reason = row.needs_params
        needy = row.factory(**needy_config)
        with pytest.raises(ValueError, match=rf"{n}: {reason}, so update\(\) needs params"):
            needy.update(params, needy.init(params))
        with pytest.raises(ValueError, match=r"params do not match the (state|gradients): "
                                             rf"\['b'\]\[0\] has shape {four}, expected "
                                             rf"{three}"):
            needy.update(params, needy.init(params), {"a": ones(2), "b": [ones(4)]})
    if row.needs_params is None or row.needs_params[0]:  # else params are optional
        free = row.factory(**{**config, **dict.fromkeys(row.needs_params[0] if row.needs_params
                                                         else (), 0)})
        updates, _ = free.update(params, free.init(params))
        assert jax.tree.structure(updates) == jax.tree.structure(params)
    with pytest.raises(ValueError, match=rf"the state lacks skipped, so it was made by an {n} "
                                         r"with a different skip_nonfinite"):
        row.factory(**config, skip_nonfinite=True).update(params, tx.init(params), params)
    # A buffer a flag switches on (momentum, amsgrad, centered): a state without it is
    # refused by a transform that has it, and the other way round.
    plain = row.factory(**row.grid["defaults"])
    switched = "|".join(k for k, v in plain.init(params)._asdict().items()
                        if v is None and getattr(tx.init(params), k) is not None and k != "skipped")
    if switched:
        with pytest.raises(ValueError, match=rf"{n}: the state lacks ({switched}), so it was made "
                                             rf"by an {n} with a different"):
            tx.update(params, plain.init(params), params)
        with pytest.raises(ValueError, match=rf"{n}: the state has ({switched}), so it was made "
                                             rf"by an {n} with a different"):
            plain.update(params, tx.init(params), params)
    state_type = type(tx.init(params))
    other = next(r.factory().init(params) for r in ROWS.values()
                 if type(r.factory().init(params)) is not state_type)
    with pytest.raises(TypeError, match=rf"{n}: state must be the {state_type.__name__}"):
        tx.update(params, other, params)


BAD = [(name, bad) for name, row in ROWS.items() for bad in row.bad_inputs]
BAD_IDS = [f"{name}:{bad.label}" for name, bad in BAD]
TORCH_REFUSES = [(name, bad) for name, bad in BAD if bad.torch_refuses]


@pytest.mark.parametrize("name, bad", BAD, ids=BAD_IDS)
def test_invalid_hyperparameters_raise_in_both_faces(name: str, bad: Bad) -> None:
    """The factory, the class's defaults, a group's own value and add_param_group's: the
    same error, and nothing taken over or added."""
    row = ROWS[name]
    with pytest.raises(ValueError, match=bad.pattern):
        row.factory(**bad.kwargs)
    p = fx.Parameter(jnp.ones(row.shape(2)))
    with pytest.raises(ValueError, match=bad.pattern):
        row.stateful([p], **bad.kwargs)
    with pytest.raises(ValueError, match=bad.pattern):
        row.stateful([{"params": [p], **bad.kwargs}])
    assert p.storage is None  # the Parameter was not taken over
    opt = row.stateful([fx.Parameter(jnp.ones(row.shape(2)))])
    with pytest.raises(ValueError, match=bad.pattern):
        opt.add_param_group({"params": [p], **bad.kwargs})
    assert len(opt.param_groups) == 1 and p.storage is None


@pytest.mark.parametrize("name, bad", TORCH_REFUSES,
                         ids=[f"{name}:{bad.label}" for name, bad in TORCH_REFUSES])
def test_torch_refuses_the_same_values(name: str, bad: Bad) -> None:
    torch = _torch()
    with one_torch_thread(torch), pytest.raises(ValueError):
        getattr(torch.optim, ROWS[name].torch_class)(
            [torch.zeros(ROWS[name].shape(1), requires_grad=True)], **bad.kwargs)


# ------------------------------------------------------------------ parity over the grid

WIDE = {np.float32: np.complex64, np.float64: np.complex128}


class Case(NamedTuple):
    config: dict[str, Any]
    complex: bool
    lr_changes: bool


def _parity_cases(row: Row, dtype: Any) -> dict[str, Case]:
    """key -> case. The grid and the special cases at a constant lr in both dtypes, and
    at a changing lr (where lr is not read once: a schedule for ours, param_groups
    written for torch's) in float64, whose rounding-only tolerance sees a constant or a
    schedule's value reach the math in a narrower precision; the plain and the richest
    configuration (and Row.complex_labels) with complex parameters (torch's real pairs),
    in float32 at both lrs, unless the row is ``real_only``. Every case of a dtype runs in
    one compilation."""
    changing = [False] if row.lrs is None else [False, True]
    cases = {}
    for lr_changes in changing if dtype == np.float64 else [False]:
        prefix = "changing-lr:" if lr_changes else ""
        for label, config in row.configs.items():
            cases[prefix + label] = Case(dict(config), False, lr_changes)
    for lr_changes in (changing if dtype == np.float32 else [False]) * (not row.real_only):
        prefix = "changing-lr:" if lr_changes else ""
        for label in dict.fromkeys(("defaults", row.richest, *row.complex_labels)):
            cases[f"complex:{prefix}{label}"] = Case(dict(row.grid[label]), True, lr_changes)
    return cases


def _against_torch(row: Row, case: Case) -> bool:
    """Whether torch computes the case as we do: not where it treats complex numbers
    otherwise (Row.torch_complex), nor where lr changes for a Row.own_parity row."""
    return (row.torch_complex or not case.complex) and not (row.own_parity and case.lr_changes)


@functools.cache
def _parity(name: str, dtype: Any) -> dict[str, dict[str, float]]:
    """One compilation for every case of the row and dtype (real and complex, constant and
    changing lr); float64 under x64, with torch's default dtype float64."""
    torch, row = _torch(), ROWS[name]
    cases = _parity_cases(row, dtype)
    with jax.enable_x64(dtype == np.float64), torch_default_dtype(torch, dtype):
        return run_many(
            row, {key: case.config for key, case in cases.items()},
            {key: WIDE[dtype] if case.complex else dtype for key, case in cases.items()},
            torch=torch, torch_labels={key for key, case in cases.items()
                                       if _against_torch(row, case)},
            lr_per_step={key: row.lrs if case.lr_changes else None
                         for key, case in cases.items()})


# float64 (rounding only: a wrong constant's precision shows) is the slow tier's.
PARITY_CASES = [pytest.param(name, key, dtype, id=f"{np.dtype(dtype).name}-{name}:{key}",
                             marks=[pytest.mark.slow] if dtype == np.float64 else [])
                for dtype in (np.float32, np.float64) for name in ROWS
                for key in _parity_cases(ROWS[name], dtype)]


# float32: each operation rounded in the float32 formulas; float64: rounding only.
TOLERANCES = {np.float32: (RTOL_REF_F32, RTOL_TORCH_F32), np.float64: (RTOL_REF_F64, RTOL_TORCH_F64)}


@pytest.mark.parametrize("name, key, dtype", PARITY_CASES)
def test_parity(name: str, key: str, dtype: Any) -> None:
    errors = _parity(name, dtype)[key]
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= TOLERANCES[dtype][0], errors
    assert theirs <= TOLERANCES[dtype][1], errors
    if _against_torch(ROWS[name], _parity_cases(ROWS[name], dtype)[key]):
        assert any(k.startswith("torch:") for k in errors), errors


@pytest.mark.parametrize("name", tiered(ROWS))
def test_eager_updates_match_like_jitted_ones(name: str) -> None:
    """The richest configuration op by op, without jit (torch where it computes alike)."""
    row = ROWS[name]
    errors = run(row, row.grid[row.richest], np.float32, jit=False, torch=_torch())
    ref, theirs = split(errors)
    assert errors["step"] == 0
    assert ref <= RTOL_REF_F32, errors
    assert theirs <= RTOL_TORCH_F32, errors


@pytest.mark.parametrize("name", tiered([n for n, row in ROWS.items() if row.lrs is not None]))
def test_inject_hyperparams_changes_lr_without_recompiling(name: str) -> None:
    row = ROWS[name]
    rng = np.random.default_rng(10)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32, row))
    grads = [make_tree(rng, np.float32, row) for _ in range(6)]
    lrs = [float(np.float32(lr)) for lr in row.lrs[:len(grads)]]
    config = {**row.grid[row.richest], "lr": lrs[0]}  # init reads it (ASGD's η_0)
    tx = optax.inject_hyperparams(row.factory, static_args=[
        *(k for k, v in config.items() if is_static(v)),
        *schema.static_arguments(row.factory)])(**config)
    params, state, update = params0, tx.init(params0), jax.jit(tx.update)
    for lr, g in zip(lrs, grads):
        state.hyperparams["lr"] = jnp.asarray(lr, jnp.float32)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1
    history, _ = row.reference(leaves64(params0), [leaves64(g) for g in grads],
                               **without_lucid_options({**config, "lr": lrs}))
    assert tree_error(params, history[-1]) <= RTOL_REF_F32


@pytest.mark.parametrize("name", tiered([n for n, row in ROWS.items() if row.lrs is not None]))
def test_a_scheduler_drives_the_class_as_torchs_and_compiles_nothing(name: str) -> None:
    """``fx.lr_scheduler.StepLR`` over the class, against torch's StepLR over torch's: the
    same lr at every step, the same parameters (where the row follows torch when lr
    changes), and no compilation after the first step: the scheduler only writes
    ``param_groups``, which reach the compiled step as data."""
    torch, row = _torch(), ROWS[name]
    config = row.grid[row.richest]
    values, grads = stateful_problem(np.float32, row)  # the first has a gradient each step
    ours, theirs = [fx.Parameter(jnp.asarray(values[0]))], [torch.nn.Parameter(
        torch.tensor(values[0]))]
    opt = row.stateful(ours, **config)
    scheduler = fx.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with one_torch_thread(torch, row):
        their_opt = row.torch_optimizer(torch, theirs, config)
        their_scheduler = torch.optim.lr_scheduler.StepLR(their_opt, step_size=2, gamma=0.5)
        for t, g in enumerate(grads[:6]):
            ours[0].grad, theirs[0].grad = jnp.asarray(g[0]), torch.tensor(g[0])
            with CompileCounter() as counter:
                opt.step()
                scheduler.step()
            assert t == 0 or counter.names == [], counter.names
            their_opt.step()
            their_scheduler.step()
            assert scheduler.get_last_lr() == their_scheduler.get_last_lr()
            if not row.own_parity:
                for p, q in zip(ours, theirs):
                    assert max_rel_error(p.value, q.detach().numpy()) <= RTOL_TORCH_F32


# ------------------------------------------------------------------ the stateful face, every row


def _faces(name: str, dtype: Any) -> Faces:
    with jax.enable_x64(dtype == np.float64):
        return stateful_faces(name, dtype, _torch())


def _stateful_errors(name: str, dtype: Any) -> dict[str, float]:
    """Worst errors of the stateful face against torch (values and every state key torch
    has, scaled by Row.torch_scale; Row.own_scale keys also relative to themselves) and
    against the functional face (values and every state key), over the whole grid; the
    step counts are checked exactly, and the Parameter that never stepped bit for bit."""
    row, run = ROWS[name], _faces(name, dtype)
    # an element-wise row's share one buffer; a shape-aware row's are each whole
    assert run.packed == schema.of(row.factory).elementwise, "a group's first three Parameters"
    # One compiled step for the first group, one for the grid. A shape-aware row keeps each
    # Parameter whole (its own pack, or a stack): which of them have a gradient changes
    # the program, once per pattern (five in this run, whose Parameters skip steps).
    assert run.compiles <= (2 if schema.of(row.factory).elementwise else 5), run.compiles
    errors = {"torch": 0.0, "own": 0.0, "step": 0.0}
    for label, config in row.grid.items():
        for i, face in enumerate(run.faces[label]):
            where = f"{label}, Parameter {i}"
            if face.steps == 0:
                np.testing.assert_array_equal(face.ours, face.initial, err_msg=where)
                assert face.state is None, where
                assert (face.torch_state is not None) == row.torch_state_at_construction, where
                continue
            assert face.state is not None, where
            assert int(face.state["step"]) == face.steps, where
            assert _torch_keys(row, face.state) == set(face.torch_state or {}), where
            errors["torch"] = max(errors["torch"], max_rel_error(face.ours, face.theirs))
            for key, value in (face.torch_state or {}).items():
                if key == "step":
                    errors["step"] = max(errors["step"], abs(float(face.state[key]) - value))
                    continue
                expected = value * row.torch_scale(key, config)
                errors["torch"] = max(errors["torch"], max_rel_error(face.state[key], expected))
                if key in row.own_scale:
                    errors["own"] = max(errors["own"], own_rel_error(face.state[key], expected))
            assert set(face.state) == set(face.functional_state), where
            for key, ours, functional in [("value", face.ours, face.functional), *(
                    (key, face.state[key], value) for key, value in face.functional_state.items())]:
                error = (own_rel_error if key in row.own_scale else max_rel_error)(ours, functional)
                errors[f"functional:{key}"] = max(errors.get(f"functional:{key}", 0.0), error)
    return errors


def _faces_apart(name: str, errors: dict[str, float], dtype: Any) -> dict[str, float]:
    """The functional-face errors over what Row.faces_ulps allows (none: bit for bit);
    Row.own_scale keys are in ulps of their own size."""
    allowed = ROWS[name].faces_ulps
    return {key: error for key, error in errors.items() if key.startswith("functional:")
            and error > allowed.get(key.removeprefix("functional:"), 0) * np.finfo(dtype).eps}


@pytest.mark.parametrize("name", tiered(ROWS))
def test_stateful_face_matches_torch_and_the_functional_face(name: str) -> None:
    """Every flag combination, each a param group of one optimizer (all but the first
    added by add_param_group mid-run), the Parameters of each packed buffer joining late,
    skipping steps and never stepping, and one more joining the first configuration in a
    group of its own: per-parameter counts and scalars differ inside one buffer."""
    errors = _stateful_errors(name, np.float32)
    assert errors["step"] == 0, errors
    assert errors["torch"] <= RTOL_TORCH_F32, errors
    # float32 rounding over the run's steps (acc_delta, relative to itself: measured 4.4e-7).
    assert errors["own"] <= RTOL_TORCH_F32, errors
    # The same math on the same traced scalars, masked alike: bit for bit, but where
    # XLA contracts a multiply-add differently in one program (Row.faces_ulps).
    assert not _faces_apart(name, errors, np.float32), errors


@pytest.mark.slow
@pytest.mark.parametrize("name", ROWS)
def test_stateful_face_matches_torch_in_float64(name: str) -> None:
    errors = _stateful_errors(name, np.float64)
    assert errors["step"] == 0, errors
    assert errors["torch"] <= RTOL_TORCH_F64, errors
    assert errors["own"] <= RTOL_TORCH_F64, errors
    assert not _faces_apart(name, errors, np.float64), errors


def _in_our_layout(torchs: Any, scale: float) -> np.ndarray:
    """A torch buffer in our layout (ours = torch's × Row.torch_scale), rounded once from
    float64, as the conversion is documented (lucid_fx._src.interop.torch)."""
    array = np.asarray(torchs)
    return array if scale == 1.0 else (array.astype(np.float64) * scale).astype(array.dtype)


def _in_torch_layout(ours: Any, scale: float) -> np.ndarray:
    array = np.asarray(ours)
    return array if scale == 1.0 else (array.astype(np.float64) / scale).astype(array.dtype)


@pytest.mark.parametrize("name", tiered(ROWS))
def test_state_dict_round_trip(name: str) -> None:
    """Our state dict loads into an optimizer of the same groups, every entry as it was;
    the Parameter that never stepped has none (torch's indices: one per Parameter)."""
    row, run = ROWS[name], _faces(name, np.float32)
    saved = run.opt.state_dict()
    params = {label: [fx.Parameter(jnp.asarray(p.value)) for p in ps]
              for label, ps in run.params.items()}
    copy = run.same_groups(params, row.stateful)
    copy.load_state_dict(saved)
    order = [(label, i) for label, where in run.groups for i in range(4)[where]]
    stepped = [k for k, (label, i) in enumerate(order) if run.faces[label][i].steps]
    assert sorted(copy.state_dict()["state"]) == sorted(saved["state"]) == stepped
    for label, ps in run.params.items():
        for p, q in zip(ps, params[label]):
            assert (p in run.opt.state) == (q in copy.state)
            if p in run.opt.state:
                assert set(run.opt.state[p]) == set(copy.state[q])
                for key, value in run.opt.state[p].items():
                    np.testing.assert_array_equal(copy.state[q][key], value, err_msg=key)


@pytest.mark.parametrize("name", tiered(ROWS))
def test_torch_state_dicts_load_as_they_are(name: str) -> None:
    """Each configuration's torch state dict (its late group too) loads into ours, every
    per-Parameter entry as torch's (steps as counts here, float tensors there; scaled
    by Row.torch_scale), and only the entries torch has."""
    row, run = ROWS[name], _faces(name, np.float32)
    for label, config in row.grid.items():
        theirs, topt = run.torch_params[label], run.torch_opts[label]
        ours = [fx.Parameter(jnp.asarray(q.detach().numpy())) for q in theirs]
        copy = row.stateful([{"params": ours[:3], **config}])
        if len(ours) > 3:
            copy.add_param_group({"params": ours[3:], **config})
        copy.load_state_dict(topt.state_dict())
        for i, (p, q) in enumerate(zip(ours, theirs)):
            where = f"{label}, Parameter {i}"
            assert (p in copy.state) == bool(topt.state.get(q)), where
            if p in copy.state:
                assert _torch_keys(row, copy.state[p]) == set(topt.state[q]), where
                for key, value in topt.state[q].items():
                    np.testing.assert_array_equal(
                        copy.state[p][key], _in_our_layout(value, row.torch_scale(key, config)),
                        err_msg=f"{where}: {key}")


@pytest.mark.parametrize("name", tiered(ROWS))
def test_torch_loads_our_state_dict_as_it_is(name: str) -> None:
    """torch's class, in the same groups as the run's optimizer, loads its torch state
    dict: every per-Parameter entry as ours, none for the Parameters that never stepped."""
    torch, row, run = _torch(), ROWS[name], _faces(name, np.float32)
    theirs = {label: [torch.nn.Parameter(torch.tensor(np.asarray(p.value))) for p in ps]
              for label, ps in run.params.items()}
    with one_torch_thread(torch, row):
        tcopy = run.same_groups(theirs, lambda groups: row.torch_optimizer(torch, groups, {}))
        tcopy.load_state_dict(run.opt.torch_state_dict())
    for label, config in row.grid.items():
        for i, (p, q) in enumerate(zip(run.params[label], theirs[label])):
            where = f"{label}, Parameter {i}"
            assert (p in run.opt.state) == (q in tcopy.state), where
            if p in run.opt.state:
                ours = run.opt.state[p]
                assert _torch_keys(row, ours) == set(tcopy.state[q]), where
                for key, value in tcopy.state[q].items():
                    np.testing.assert_array_equal(
                        value.numpy(), _in_torch_layout(ours[key], row.torch_scale(key, config)),
                        err_msg=f"{where}: {key}")


@pytest.mark.parametrize("name", tiered(ROWS))
def test_torch_state_dicts_load_and_export_and_the_run_continues_as_torchs(name: str) -> None:
    """torch -> fx: load torch's dict after 4 steps and go on as torch goes on; fx -> torch:
    torch loads our export and goes on as we do. Every buffer is on (the richest config)."""
    torch = _torch()
    row = ROWS[name]
    config = row.grid[row.richest]
    values, grads = stateful_problem(np.float32, row)
    values, grads = values[:3], [g[:3] for g in grads[:STATEFUL_STEPS]]
    first, rest = grads[:4], grads[4:]

    def torch_optimizer() -> tuple[list[Any], Any]:
        params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
        return params, row.torch_optimizer(torch, params, config)

    def torch_steps(params: list[Any], opt: Any, steps: list[list[np.ndarray | None]]) -> None:
        for step_grads in steps:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, step_grads):
                if g is not None:
                    p.grad = torch.tensor(g)
            with one_torch_thread(torch, row):
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
    back = row.torch_optimizer(torch, back_params, config)
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


# torch registers w, then v, then the 0-d s; a dict tree lists them sorted: s, v, w. w and v
# have one shape, so a positional mix-up would load without an error.
TORCH_ORDER = {"w": (3,), "v": (3,), "s": ()}


def _named_runs(row: Row) -> tuple[Any, Any, Any]:
    """torch's Module with TORCH_ORDER's parameters, a torch optimizer over its
    named_parameters (the richest configuration) and our dict model's values."""
    torch = _torch()
    rng = np.random.default_rng(7)
    values = {n: rng.standard_normal(row.shape(*shape)).astype(np.float32)
              for n, shape in TORCH_ORDER.items()}

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for n in TORCH_ORDER:
                self.register_parameter(n, torch.nn.Parameter(torch.tensor(values[n])))

    module = Module()
    assert [n for n, _ in module.named_parameters()] == list(TORCH_ORDER)
    return module, values, rng


def _steps(row: Row, params: dict[str, Any], opt: Any, grads: list[dict[str, np.ndarray]],
           to_array: Any) -> None:
    for step in grads:
        opt.zero_grad()
        for n, g in step.items():
            params[n].grad = to_array(g)
        opt.step()


@pytest.mark.parametrize("name", tiered(ROWS))
def test_a_checkpoint_goes_torch_to_fx_to_torch_by_name(name: str) -> None:
    """torch (named) -> fx -> torch (unnamed, as torch's examples build it): the run goes on
    as one torch run, though the two sides list the parameters in different orders; every
    exported tensor has the shape of torch's own state (a 0-d parameter's is 0-d)."""
    torch, row = _torch(), ROWS[name]
    config = row.grid[row.richest]
    module, _, rng = _named_runs(row)
    grads = [{n: rng.standard_normal(row.shape(*shape)).astype(np.float32)
              for n, shape in TORCH_ORDER.items()} for _ in range(6)]
    with one_torch_thread(torch, row):
        reference, _, _ = _named_runs(row)
        reference_opt = row.torch_optimizer(torch, reference.parameters(), config)
        _steps(row, dict(reference.named_parameters()), reference_opt, grads, torch.tensor)

        their_opt = row.torch_optimizer(torch, module.named_parameters(), config)
        _steps(row, dict(module.named_parameters()), their_opt, grads[:2], torch.tensor)
        model = {n: fx.Parameter(jnp.asarray(p.detach().numpy()))
                 for n, p in module.named_parameters()}
        our_opt = row.stateful(fx.named_parameters(model), **config)
        assert [n for n, _ in fx.named_parameters(model)] == ["s", "v", "w"]
        our_opt.load_state_dict(their_opt.state_dict())  # pairs by name
        _steps(row, model, our_opt, grads[2:4], jnp.asarray)

        exported = our_opt.torch_state_dict(param_names=[n for n, _ in module.named_parameters()])
        back = type(module)()
        back_opt = row.torch_optimizer(torch, back.parameters(), config)  # unnamed: by position
        back_opt.load_state_dict(exported)
        for n, q in back.named_parameters():
            q.data = torch.tensor(np.asarray(model[n].value))
        _steps(row, dict(back.named_parameters()), back_opt, grads[4:], torch.tensor)
    ours_at_4 = {n: np.asarray(p.value) for n, p in model.items()}
    for n, q in back.named_parameters():
        assert max_rel_error(q.detach().numpy(), reference.get_parameter(n).detach().numpy()
                             ) <= RTOL_TORCH_F32, n
        assert ours_at_4[n].shape == row.shape(*TORCH_ORDER[n])
    for index, (n, q) in enumerate(reference.named_parameters()):
        mine, theirs = exported["state"][index], reference_opt.state[q]
        assert set(mine) == set(theirs), n
        for key, tensor in theirs.items():
            assert (mine[key].shape, mine[key].dtype) == (tensor.shape, tensor.dtype), (n, key)


@pytest.mark.parametrize("name", tiered(ROWS))
def test_an_unnamed_dict_into_a_named_optimizer_warns_at_each_load(name: str) -> None:
    torch, row = _torch(), ROWS[name]
    module, _, _ = _named_runs(row)
    # torch's optimizer lists them in our order here, so pairing by position is right; it
    # still warns, as it cannot know.
    their_opt = row.torch_optimizer(torch, [module.get_parameter(n) for n in ("s", "v", "w")], {})
    model = {n: fx.Parameter(jnp.asarray(p.detach().numpy())) for n, p in module.named_parameters()}
    our_opt = row.stateful(fx.named_parameters(model))
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"pairs with this optimizer's parameters by "
                                             r"position.*fx.named_parameters"):
            our_opt.load_state_dict(their_opt.state_dict())
    with pytest.raises(ValueError, match=r"param_names must list this optimizer's parameter "
                                         r"names once each: missing \['s'\], unknown \['x'\]"):
        our_opt.torch_state_dict(param_names=["w", "v", "x"])
    with pytest.raises(ValueError, match=r"repeated \['w'\]"):
        our_opt.torch_state_dict(param_names=["w", "v", "s", "w"])
    unnamed = row.stateful(list(model.values()))
    with pytest.raises(ValueError, match=r"have no names: create it with fx.named_parameters"):
        unnamed.torch_state_dict(param_names=["w", "v", "s"])


@pytest.mark.parametrize("name", tiered(ROWS))
def test_our_state_dict_goes_through_torch_save_and_the_default_torch_load(
    name: str, tmp_path: Any
) -> None:
    """torch.load's default (weights_only=True) refuses every NumPy object; our dicts
    (a bfloat16 Parameter's and a 0-d one's included) come back bit for bit."""
    torch, row = _torch(), ROWS[name]
    config = row.grid[row.richest]
    model = {"w": fx.Parameter(row.array(jnp.linspace(-1, 1, 5))),
             "h": fx.Parameter(jnp.ones(row.shape(3), jnp.bfloat16)),
             "s": fx.Parameter(row.array(jnp.float32(0.5)))}
    opt = row.stateful(fx.named_parameters(model), **config, state_dtype=jnp.float32)
    for t in range(2):
        for p in model.values():
            p.grad = jnp.full(p.shape, 0.1 * (t + 1), p.dtype)
        opt.step()
    saved = opt.state_dict()
    torch.save(saved, tmp_path / "optimizer.pt")
    loaded = torch.load(tmp_path / "optimizer.pt")
    assert loaded["param_groups"] == saved["param_groups"]
    copy = row.stateful(fx.named_parameters(model), **config)
    copy.load_state_dict(loaded)
    again = copy.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    for index, entry in saved["state"].items():
        assert set(again["state"][index]) == set(entry)
        for key, value in entry.items():
            mine = again["state"][index][key]
            assert (mine.shape, mine.dtype, mine.tobytes()) == (
                value.shape, value.dtype, value.tobytes()), (index, key)


COPY_ELEMENTS = 5003  # one Parameter, an odd size: a buffer no other array has


def _donated_copies(name: str, platform: str) -> int:
    """Copies of the parameter-sized buffer in the richest configuration's second step
    (every state buffer exists), compiled as ``compiled_step(platform)`` compiles it,
    for this process's CPU."""
    row = ROWS[name]
    p = fx.Parameter(row.array(jnp.linspace(-1, 1, COPY_ELEMENTS, dtype=jnp.float32)))
    opt = row.stateful([p], **row.grid[row.richest])
    p.grad = row.array(jnp.linspace(1, -0.5, COPY_ELEMENTS, dtype=jnp.float32))
    opt.step()
    p.grad = row.array(jnp.linspace(-0.5, 1, COPY_ELEMENTS, dtype=jnp.float32))
    call = opt._step_call()
    assert call is not None and call[1] == "cpu"
    hlo = compiled_step(platform).lower(*call[2]).compile().as_text()
    dims = ",".join(map(str, p.shape))
    return len(re.findall(rf"= f32\[{dims}\]\{{[\d,]+\}} copy\(", hlo))


@pytest.mark.parametrize("name", tiered(ROWS))
def test_the_cpu_step_copies_no_donated_buffer(name: str) -> None:
    """A copy of a donated buffer costs a pass over it per step (ASGD's step took 3x as
    long with one): XLA:CPU inserts one where an output overwrites a buffer that another
    output's loop reads, unless its region analysis (packed_step.CPU_COMPILER_OPTIONS)
    proves an order without it. Row.cpu_step_copies names the copies that remain."""
    assert _donated_copies(name, "cpu") == ROWS[name].cpu_step_copies


def test_without_the_cpu_options_asgd_copies_its_parameter() -> None:
    # The program other platforms get (XLA's default options), compiled for this CPU:
    # the copy the options remove, so the test above can see one.
    assert _donated_copies("asgd", "gpu") == 1


@pytest.mark.parametrize("name", ["asgd", "rprop"])
def test_the_cpu_options_change_copies_not_numbers(name: str) -> None:
    """The rows whose programs the options change: the same bits with and without them."""
    row = ROWS[name]
    tx = row.factory(**row.grid[row.richest])
    rng = np.random.default_rng(3)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32, row))
    grads = [make_tree(rng, np.float32, row) for _ in range(5)]

    def step(params: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, params)
        return fx.apply_updates(params, updates), state

    finals = []
    for options in (None, CPU_COMPILER_OPTIONS):
        jitted = jax.jit(step, donate_argnums=(0, 1), compiler_options=options)
        params = jax.tree.map(jnp.copy, params0)
        state = tx.init(params)
        for g in grads:
            params, state = jitted(params, state, g)
        finals.append((params, state))
    chex.assert_trees_all_equal(*finals)


NEVER_NEGATIVE = [(name, key, what) for name, row in ROWS.items()
                  for key, what in schema.of(row.factory).never_negative.items()]


@pytest.mark.parametrize("name, key, what", NEVER_NEGATIVE,
                         ids=[f"{name}:{key}" for name, key, _ in NEVER_NEGATIVE])
def test_load_refuses_a_negative_value_and_changes_nothing(name: str, key: str, what: str) -> None:
    row = ROWS[name]
    # A parameter that has the field (Adafactor's row_var: a matrix; variance: a vector)
    shape = next(row.shape(*s) for s in ((2,), (2, 2))
                 if getattr(row.factory().init(jnp.zeros(row.shape(*s))), key) is not None)
    opt = row.stateful([fx.Parameter(jnp.ones(shape))])
    saved = opt.state_dict()
    fields = schema.of(row.factory).fields
    entry = {k: np.array(v) for k, v in row.factory().init(jnp.zeros(shape))._asdict().items()
             if v is not None and fields[k].kind != "whole"}  # a state as init makes it
    entry["step"] = np.int32(1)
    if key == "step":
        entry[key] = np.int32(-1)
    else:
        entry[key] = np.ones_like(entry[key], np.float32)
        entry[key].reshape(-1)[-1] = -1.0
    saved["state"] = {0: entry}
    value = r"-1" if key == "step" else r"-1\.0"
    with pytest.raises(ValueError, match=rf"state\[0\]\['{key}'\] holds a negative value "
                                         rf"\({value}\); {re.escape(what)} is never negative"):
        opt.load_state_dict(saved)
    assert opt.state_dict()["state"] == {}


# Last: these write into the shared run's param_groups (and put everything back). Each row
# needs its whole stateful run (_faces), so the fast tier keeps the FAST_ROWS' cases.
@pytest.mark.parametrize("name, bad", tiered(BAD, ids=BAD_IDS))
def test_a_bad_value_written_into_param_groups_changes_nothing(name: str, bad: Bad) -> None:
    """Checked at step (a scheduler or a user writes param_groups), before anything moves."""
    run = _faces(name, np.float32)
    opt, p = run.opt, run.params[ROWS[name].richest][0]
    value, state = np.array(p.value), {k: np.array(v) for k, v in opt.state[p].items()}
    group = opt.param_groups[list(ROWS[name].grid).index(ROWS[name].richest)]
    kept = {key: group[key] for key in bad.kwargs}
    group.update(bad.kwargs)
    p.grad = jnp.ones_like(p.value)
    try:
        with pytest.raises(ValueError, match=bad.pattern):
            opt.step()
    finally:
        group.update(kept)
        opt.zero_grad()
    np.testing.assert_array_equal(p.value, value)
    assert set(opt.state[p]) == set(state)
    for key, array in opt.state[p].items():
        np.testing.assert_array_equal(array, state[key], err_msg=key)
