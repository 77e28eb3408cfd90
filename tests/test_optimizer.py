"""Tests of the generic stateful ``fx.Optimizer``: groups, steps, state dicts, hooks.

``fx.RMSprop`` is the vehicle for most tests (every optimizer's stateful face is
checked against torch and its functional face in test_family.py); a small SGD subclass
defined here checks that the base wraps any transform factory. Error tests pin their
messages, and every failing call is checked to leave the optimizer exactly as it was.
"""

from __future__ import annotations

import copy
import math
import pickle
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import CompileCounter

import lucid_fx as fx
from lucid_fx._src.core import schema
from lucid_fx._src.core.validation import check_hyperparameter, is_static_zero

# ------------------------------------------------------------------ helpers


def make_params(*shapes: tuple[int, ...], seed: int = 0) -> list[fx.Parameter]:
    rng = np.random.default_rng(seed)
    return [fx.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def set_grads(params: list[fx.Parameter], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad = jnp.asarray(rng.standard_normal(p.shape).astype(np.float32))


def quadratic(tree: Any, target: float = 0.5) -> jax.Array:
    """A smooth loss of every array in ``tree`` (Parameters replaced by arrays)."""
    return sum((jnp.sum(jnp.sin(3.0 * x) + (x - target) ** 2) for x in jax.tree.leaves(tree)),
               start=jnp.float32(0))


def snapshot(opt: fx.Optimizer, params: list[fx.Parameter]) -> dict[str, Any]:
    """Everything observable about ``opt`` and ``params``, as host copies."""
    position = {id(p): i for i, p in enumerate(params)}
    return {
        "values": [np.asarray(p.value).copy() for p in params],
        "grads": [None if p.grad is None else np.asarray(p.grad).copy() for p in params],
        "state": {
            i: {k: np.asarray(v).copy() for k, v in opt.state[p].items()}
            for i, p in enumerate(params)
            if p in opt.state
        },
        "groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [position.get(id(p), -1) for p in g["params"]]}
            for g in opt.param_groups
        ],
    }


def assert_same(a: Any, b: Any) -> None:
    """Deep, bitwise equality of nested dicts/lists of arrays and Python values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, (np.ndarray, jax.Array, np.generic)):
        assert np.asarray(a).dtype == np.asarray(b).dtype, (a, b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        assert a == b or both_nan, (a, b)


# ------------------------------------------------------------------ a second optimizer


@schema.declare(step=schema.step_count(), momentum_buffer=schema.buffer(switch="momentum"))
class SGDState(NamedTuple):
    step: jax.Array
    momentum_buffer: Any | None


@schema.makes(SGDState)
def sgd(lr: float = 0.1, momentum: float = 0.0) -> fx.GradientTransformation:
    """θ ← θ - η·b, b = μ·b + g (b = g without momentum): a minimal second factory."""
    check_hyperparameter("lr", lr)
    check_hyperparameter("momentum", momentum)
    use_momentum = not is_static_zero(momentum)

    def init(params: Any) -> SGDState:
        buffer = jax.tree.map(jnp.zeros_like, params) if use_momentum else None
        return SGDState(jnp.zeros((), jnp.int32), buffer)

    def update(grads: Any, state: SGDState, params: Any = None) -> tuple[Any, SGDState]:
        del params
        b = state.momentum_buffer
        if use_momentum:
            b = jax.tree.map(lambda m, g: momentum * m + g, b, grads)
            direction = b
        else:
            direction = grads
        return jax.tree.map(lambda d: -lr * d, direction), SGDState(state.step + 1, b)

    return fx.GradientTransformation(init, update)


class SGD(fx.Optimizer):
    transform = staticmethod(sgd)


def test_the_base_wraps_any_transform_factory() -> None:
    p, q = make_params((3,), (2,))
    p0, q0 = np.asarray(p.value).copy(), np.asarray(q.value).copy()
    opt = SGD([{"params": [p]}, {"params": [q], "momentum": 0.5}], lr=0.25)
    assert opt.defaults == {"lr": 0.25, "momentum": 0.0}
    g = np.array([1.0, -2.0, 4.0], np.float32)
    h = np.array([2.0, 1.0], np.float32)
    for _ in range(2):
        p.grad, q.grad = jnp.asarray(g), jnp.asarray(h)
        opt.step()
    np.testing.assert_allclose(np.asarray(p.value), p0 - 0.25 * 2 * g, rtol=1e-6)
    # b1 = h, b2 = 0.5·h + h; θ = θ0 - η·(b1 + b2)
    np.testing.assert_allclose(np.asarray(q.value), q0 - 0.25 * 2.5 * h, rtol=1e-6)
    assert set(opt.state[p]) == {"step"} and set(opt.state[q]) == {"step", "momentum_buffer"}
    sd = opt.state_dict()
    assert sd["param_groups"] == [
        {"lr": 0.25, "momentum": 0.0, "params": [0]},
        {"lr": 0.25, "momentum": 0.5, "params": [1]},
    ]
    np.testing.assert_allclose(sd["state"][1]["momentum_buffer"], 1.5 * h)
    with pytest.raises(ValueError, match="Invalid lr value: -1"):
        SGD([p], lr=-1)


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    "wrap", [list, tuple, iter, lambda ps: (p for p in ps)], ids=["list", "tuple", "iter", "generator"]
)
def test_params_may_be_any_ordered_iterable(wrap: Callable[[list[fx.Parameter]], Any]) -> None:
    params = make_params((2,), (3,))
    opt = fx.RMSprop(wrap(params))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == params


def test_group_dicts_take_defaults_for_missing_keys() -> None:
    a, b, c = make_params((2,), (3,), (4,))
    opt = fx.RMSprop(
        [{"params": [a, b], "lr": 0.5}, {"params": [c], "momentum": 0.9, "centered": True}],
        lr=0.1, alpha=0.9,
    )
    g0, g1 = opt.param_groups
    assert g0["params"] == [a, b] and g1["params"] == [c]
    assert (g0["lr"], g0["alpha"], g0["momentum"], g0["centered"]) == (0.5, 0.9, 0, False)
    assert (g1["lr"], g1["alpha"], g1["momentum"], g1["centered"]) == (0.1, 0.9, 0.9, True)
    expected_keys = {"params", "lr", "alpha", "eps", "weight_decay", "momentum", "centered",
                     "maximize"}
    assert expected_keys <= set(g0) and expected_keys <= set(g1)
    assert opt.defaults["lr"] == 0.1 and opt.defaults["alpha"] == 0.9


@pytest.mark.parametrize(
    "build, error, pattern",
    [
        (lambda p: set(p), TypeError, r"not a set"),
        (lambda p: frozenset(p), TypeError, r"not a set"),
        (lambda p: [{"params": set(p)}], TypeError, r"not a set"),
        (lambda p: [], ValueError, r"empty parameter list"),
        (lambda p: iter(()), ValueError, r"empty parameter list"),
        (lambda p: p[0], TypeError, r"not one Parameter"),
        (lambda p: [p[0], jnp.ones(2)], TypeError,
         r"only optimize fx\.Parameter objects, but params\[1\] is a"),
        (lambda p: [np.ones(2)], TypeError, r"params\[0\] is a ndarray"),
        (lambda p: [fx.Parameter(jnp.arange(3))], TypeError,
         r"floating-point Parameters, but params\[0\] has dtype int32"),
        (lambda p: [fx.Parameter(jnp.array([True]))], TypeError,
         r"floating-point Parameters, but params\[0\] has dtype bool"),
        (lambda p: [p[0], p[1], p[0]], ValueError, r"params\[2\] .* appears more than once"),
        (lambda p: [{"params": [p[0]]}, {"params": [p[1], p[0]]}], ValueError,
         r"params\[1\] .* appears more than once"),
        (lambda p: [{"params": [p[0]], "betas": (0.9, 0.99)}], ValueError,
         r"unknown hyper-parameter\(s\) \['betas'\]"),
        (lambda p: [{"lr": 0.1}], ValueError, r"must have a 'params' entry"),
        (lambda p: [{"params": []}], ValueError, r"at least one Parameter"),
    ],
    ids=["set", "frozenset", "group-set", "empty-list", "empty-iterator", "one-parameter",
         "jax-array", "numpy-array", "int-dtype", "bool-dtype", "twice-in-group",
         "twice-across-groups", "unknown-group-key", "group-without-params",
         "group-empty-params"],
)
def test_construction_errors(build: Callable[[list[fx.Parameter]], Any],
                             error: type[Exception], pattern: str) -> None:
    params = make_params((2,), (3,))
    with pytest.raises(error, match=pattern):
        fx.RMSprop(build(params))


def test_a_new_optimizer_takes_over_parameters_of_a_deleted_one() -> None:
    a, b = make_params((2,), (3,))
    old = fx.RMSprop([a, b], lr=0.1)
    set_grads([a, b], 0)
    old.step()
    set_grads([a], 1)
    values, grad = [np.asarray(p.value).copy() for p in (a, b)], np.asarray(a.grad).copy()
    del old
    new = fx.RMSprop([b, a], lr=0.1)
    np.testing.assert_array_equal(np.asarray(a.value), values[0])
    np.testing.assert_array_equal(np.asarray(b.value), values[1])
    np.testing.assert_array_equal(np.asarray(a.grad), grad)
    assert b.grad is not None  # gradients survive the move, as the values do
    new.zero_grad()
    assert a.grad is None and len(new.state) == 0


def test_a_new_optimizer_takes_over_parameters_of_a_live_one() -> None:
    # Re-running `opt = fx.RMSprop(params)` builds the new one while the old is alive.
    a, b = make_params((2,), (3,))
    old = fx.RMSprop([a, b], lr=0.1)
    set_grads([a, b], 0)
    old.step()
    values = [np.asarray(p.value).copy() for p in (a, b)]
    new = fx.RMSprop([a, b], lr=0.1)
    for p, v in zip((a, b), values):
        np.testing.assert_array_equal(np.asarray(p.value), v)
    with pytest.raises(RuntimeError, match="taken over by an optimizer created later"):
        old.step()
    with pytest.raises(RuntimeError, match="taken over by an optimizer created later"):
        old.zero_grad()
    set_grads([a, b], 1)
    new.step()
    assert all(int(new.state[p]["step"]) == 1 for p in (a, b))


def test_failed_construction_does_not_claim_parameters() -> None:
    a, b = make_params((2,), (3,))
    with pytest.raises(ValueError, match="Invalid lr value") as kept_alive:
        fx.RMSprop([{"params": [a]}, {"params": [b], "lr": -1.0}])
    opt = fx.RMSprop([a, b])  # the user fixes the lr and runs the cell again
    assert opt.param_groups[0]["params"] == [a, b] and kept_alive is not None


def test_add_param_group() -> None:
    a, b, c = make_params((2,), (3,), (4,))
    opt = fx.RMSprop([a], lr=0.1, momentum=0.9)
    set_grads([a], 0)
    opt.step()
    opt.add_param_group({"params": [b, c], "lr": 0.5})
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["params"] == [b, c] and group["lr"] == 0.5 and group["momentum"] == 0.9
    b0 = np.asarray(b.value).copy()
    set_grads([a, b, c], 1)
    opt.step()
    assert not np.array_equal(np.asarray(b.value), b0)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert int(sd["state"][0]["step"]) == 2 and int(sd["state"][1]["step"]) == 1
    # Errors leave the groups as they were.
    for bad, error, pattern in [
        ({"params": [a]}, ValueError, "appears more than once"),
        ([fx.Parameter(jnp.ones(2))], TypeError, "param group must be a dict"),
        ({"params": [fx.Parameter(jnp.ones(2))], "lr": -2.0}, ValueError, "Invalid lr value"),
        ({"params": [fx.Parameter(jnp.ones(2))], "nesterov": True}, ValueError, "nesterov"),
    ]:
        with pytest.raises(error, match=pattern):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == 2


def test_repr_shows_each_groups_hyperparameters() -> None:
    a, b, c = make_params((2,), (3,), (4,))
    opt = fx.RMSprop([{"params": [a, b]}, {"params": [c], "lr": 0.5, "centered": True}],
                     momentum=0.25)
    text = repr(opt)
    assert text.startswith("RMSprop (")
    group0, group1 = text.split("Parameter Group 1")
    assert "Parameter Group 0" in group0
    for needle in ("lr: 0.01", "alpha: 0.99", "eps: 1e-08", "weight_decay: 0",
                   "momentum: 0.25", "centered: False", "maximize: False"):
        assert needle in group0, (needle, text)
    for needle in ("lr: 0.5", "centered: True", "momentum: 0.25"):
        assert needle in group1, (needle, text)
    opt.param_groups[1]["lr"] = 0.125
    assert "lr: 0.125" in repr(opt)


# ------------------------------------------------------------------ zero_grad, closure, step


def test_zero_grad_to_none_and_to_zeros() -> None:
    a, b, c = make_params((2,), (3,), (2, 2))
    z = fx.Parameter(jnp.ones(3, jnp.complex64))
    opt = fx.RMSprop([a, b, c, z])
    set_grads([a, b], 0)
    z.grad = jnp.ones(3, jnp.complex64)
    opt.zero_grad(set_to_none=False)
    for p in (a, b, z):
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
        assert not np.any(np.asarray(p.grad))
    assert c.grad is None  # as torch: a missing gradient stays missing
    opt.zero_grad()
    assert all(p.grad is None for p in (a, b, c, z))
    set_grads([a], 1)
    opt.zero_grad(True)
    assert a.grad is None


def test_step_with_closure_calls_it_first_and_returns_its_loss() -> None:
    model = {"w": fx.Parameter(jnp.array([1.0, -1.0, 2.0]))}
    opt = fx.RMSprop(fx.parameters(model), lr=0.1)
    calls: list[np.ndarray] = []

    def closure() -> jax.Array:
        calls.append(np.asarray(model["w"].value).copy())
        opt.zero_grad()
        return fx.backward(quadratic, model)

    before = np.asarray(model["w"].value).copy()
    loss = opt.step(closure)
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0], before)  # evaluated before the update
    np.testing.assert_allclose(float(loss), float(quadratic(before)), rtol=1e-6)
    assert not np.array_equal(np.asarray(model["w"].value), before)  # its gradient was used
    assert opt.step(closure=closure) is not None and len(calls) == 2
    assert opt.step() is None  # no closure: None, even though grads are set


def test_failing_closure_changes_nothing() -> None:
    params = make_params((3,), (2,))
    opt = fx.RMSprop(params, momentum=0.9)
    set_grads(params, 0)
    opt.step()
    set_grads(params, 1)
    before = snapshot(opt, params)

    def closure() -> jax.Array:
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader failed"):
        opt.step(closure)
    assert_same(snapshot(opt, params), before)


def test_parameters_without_gradients_are_untouched() -> None:
    a, b, c = make_params((3,), (4,), (2,))
    opt = fx.RMSprop([{"params": [a, b]}, {"params": [c], "momentum": 0.9}], centered=True)
    b0, c0 = np.asarray(b.value).copy(), np.asarray(c.value).copy()
    assert len(opt.state) == 0  # state is created lazily
    for seed in range(3):
        set_grads([a], seed)
        opt.step()
    assert a in opt.state and b not in opt.state and c not in opt.state
    assert int(opt.state[a]["step"]) == 3
    np.testing.assert_array_equal(np.asarray(b.value), b0)
    np.testing.assert_array_equal(np.asarray(c.value), c0)
    # A first gradient creates the state: its own step count starts at 1 (as torch).
    set_grads([b, c], 7)
    a_before = snapshot(opt, [a])
    a.grad = None
    opt.step()
    assert_same(snapshot(opt, [a])["state"], a_before["state"])
    np.testing.assert_array_equal(np.asarray(a.value), a_before["values"][0])
    assert int(opt.state[b]["step"]) == 1 and int(opt.state[c]["step"]) == 1
    assert set(opt.state[b]) == {"step", "square_avg", "grad_avg"}
    assert set(opt.state[c]) == {"step", "square_avg", "grad_avg", "momentum_buffer"}
    # No gradient anywhere: a step is a no-op.
    opt.zero_grad()
    before = snapshot(opt, [a, b, c])
    assert opt.step() is None
    assert_same(snapshot(opt, [a, b, c]), before)


def test_values_written_between_steps_are_used() -> None:
    a, b = make_params((3,), (2, 2))
    opt = fx.RMSprop([a, b], lr=0.1)
    twin_a, twin_b = fx.Parameter(np.zeros(3, np.float32)), fx.Parameter(np.asarray(b.value))
    twin = fx.RMSprop([twin_a, twin_b], lr=0.1)
    set_grads([a, b], 0)
    opt.step()
    a.value = np.zeros(3, np.float32)  # e.g. a manual re-initialisation
    with pytest.raises(ValueError, match=r"keeps its shape and dtype: expected \(2, 2\) float32"):
        b.value = jnp.zeros((4,))
    set_grads([twin_a, twin_b], 0)
    twin.step()
    twin_a.value = jnp.zeros(3)
    for opt_, params in ((opt, [a, b]), (twin, [twin_a, twin_b])):
        set_grads(params, 1)
        opt_.step()
    np.testing.assert_array_equal(np.asarray(a.value), np.asarray(twin_a.value))
    np.testing.assert_array_equal(np.asarray(b.value), np.asarray(twin_b.value))


def test_large_and_small_parameters_step_alike() -> None:
    """However the optimizer stores its Parameters, each one's update is its own."""
    big, small, tiny = make_params((300, 250), (7,), (), seed=8)
    together = fx.RMSprop([big, small, tiny], momentum=0.9, centered=True)
    alone = [fx.Parameter(np.asarray(p.value)) for p in (big, small, tiny)]
    separate = [fx.RMSprop([p], momentum=0.9, centered=True) for p in alone]
    for seed in range(3):
        set_grads([big, small, tiny], seed)
        set_grads(alone, seed)
        together.step()
        for opt in separate:
            opt.step()
    for p, q in zip((big, small, tiny), alone):
        np.testing.assert_array_equal(np.asarray(p.value), np.asarray(q.value))
        for key in ("square_avg", "grad_avg", "momentum_buffer"):
            np.testing.assert_array_equal(np.asarray(together.state[p][key]),
                                          np.asarray(separate[alone.index(q)].state[q][key]))


def test_zero_gradients_still_step_the_state() -> None:
    # zero_grad(set_to_none=False) gives zeros, which are gradients: step counts advance.
    (a,) = make_params((3,))
    opt = fx.RMSprop([a], momentum=0.9)
    set_grads([a], 0)
    opt.step()
    opt.zero_grad(set_to_none=False)
    opt.step()
    assert int(opt.state[a]["step"]) == 2


@pytest.mark.parametrize(
    "bad_grad, error, pattern",
    [
        (lambda p: jnp.ones((5,)), ValueError, r"gradient of shape \(5,\); expected \(3,\)"),
        (lambda p: jnp.ones((3,), jnp.bfloat16), ValueError, r"gradient of dtype bfloat16"),
        (lambda p: np.ones(3, np.float32), TypeError, r"\.grad of type ndarray"),
    ],
    ids=["shape", "dtype", "numpy"],
)
def test_bad_gradient_raises_and_changes_nothing(bad_grad: Callable[[Any], Any],
                                                 error: type[Exception], pattern: str) -> None:
    a, b = make_params((2,), (3,))
    opt = fx.RMSprop([{"params": [a]}, {"params": [b], "momentum": 0.9}])
    set_grads([a, b], 0)
    opt.step()
    set_grads([a], 1)
    b.grad = bad_grad(b)
    before = snapshot(opt, [a, b])
    with pytest.raises(error, match=pattern):
        opt.step()
    assert_same(snapshot(opt, [a, b]), before)


def test_invalid_hyperparameter_written_into_a_group_fails_the_step_cleanly() -> None:
    a, b = make_params((2,), (3,))
    opt = fx.RMSprop([{"params": [a]}, {"params": [b]}])
    set_grads([a, b], 0)
    opt.step()
    opt.param_groups[1]["alpha"] = 2.0
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match=r"Invalid alpha value: 2\.0"):
        opt.step()
    assert_same(snapshot(opt, [a, b]), before)
    opt.param_groups[1]["alpha"] = 0.5
    opt.step()
    assert int(opt.state[a]["step"]) == 2


def test_donated_buffers_never_corrupt_results() -> None:
    """After a step, an old value is either deleted (donated) or still holds its numbers.

    Donation is a memory optimisation whose details vary by backend, so only its
    observable contract is checked, plus the new values against a twin optimizer
    whose old values nobody holds.
    """
    params = make_params((64,), (8, 8), (3,), seed=4)
    twins = [fx.Parameter(np.asarray(p.value)) for p in params]
    opt = fx.RMSprop(params, lr=0.05, momentum=0.9)
    twin_opt = fx.RMSprop(twins, lr=0.05, momentum=0.9)
    for seed in range(3):
        set_grads(params, seed)
        set_grads(twins, seed)
        old = [p.value for p in params]
        old_host = [np.asarray(x).copy() for x in old]
        opt.step()
        twin_opt.step()
        for x, host in zip(old, old_host):
            assert x.is_deleted() or np.array_equal(np.asarray(x), host)
        for p, twin in zip(params, twins):
            np.testing.assert_array_equal(np.asarray(p.value), np.asarray(twin.value))


@pytest.fixture
def jitted_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls of every module-level jitted function of lucid_fx while the test runs.

    Found by what they are (objects with a jit cache), not by name, so that a
    renamed or added compiled function is counted too.
    """
    calls: dict[str, int] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "lucid_fx" or module_name.startswith("lucid_fx.")):
            continue
        for name, value in list(vars(module).items()):
            if callable(value) and hasattr(value, "_cache_size"):
                key = f"{module_name}.{name}"

                def counted(*args: Any, _f: Any = value, _key: str = key, **kwargs: Any) -> Any:
                    calls[_key] = calls.get(_key, 0) + 1
                    return _f(*args, **kwargs)

                monkeypatch.setattr(module, name, counted)
    assert calls == {}
    return calls


def test_one_compiled_dispatch_per_step(jitted_calls: dict[str, int]) -> None:
    """A step over several groups and parameters is one call of one compiled function."""
    shapes = [(11, 3), (13,), (2, 7, 3), (17,), (5, 5), (1,)]
    params = make_params(*shapes, seed=5)
    opt = fx.RMSprop(
        [{"params": params[:2], "lr": 0.1},
         {"params": params[2:4], "momentum": 0.9, "centered": True},
         {"params": params[4:], "weight_decay": 0.1, "maximize": True}],
    )
    for k in range(4):
        opt.zero_grad()
        fx.backward(quadratic, params, 0.1 * k)
        jitted_calls.clear()
        with CompileCounter() as counter:
            opt.step()
        assert sum(jitted_calls.values()) == 1, jitted_calls
        if k >= 1:  # the first step compiles, with the state it creates
            assert counter.names == [], counter.names


def test_one_program_for_all_groups() -> None:
    """Structural changes in two groups at once compile one program, not one per group.

    Shapes no other test uses make every program the step needs a fresh
    compilation, so the count is the number of distinct programs.
    """
    shapes = [(19, 3), (23,), (3, 7, 2), (29,)]
    params = make_params(*shapes, seed=6)
    opt = fx.RMSprop([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    for k in range(3):
        opt.zero_grad()
        fx.backward(quadratic, params, 0.1 * k)
        opt.step()
    opt.param_groups[0]["centered"] = True
    opt.param_groups[1]["momentum"] = 0.9
    opt.zero_grad()
    fx.backward(quadratic, params, 0.5)
    with CompileCounter() as changed:
        opt.step()
    assert len(changed.names) == 1, changed.names


@pytest.mark.parametrize("grads", ["backward", "by hand"])
@pytest.mark.parametrize("placed", ["uncommitted", "committed"])
def test_compiles_once_whether_initial_values_are_committed_or_not(placed: str, grads: str) -> None:
    """``jnp.zeros`` and ``jax.random`` give uncommitted arrays, ``jax.device_put`` committed
    ones; jax.jit compiles anew when an argument's committedness changes. Every array the
    optimizer and fx.backward make (state, offsets, loaded state) is placed as its
    Parameter is, so nothing compiles after the first step, a load included."""
    def make(shape: tuple[int, ...], key: int) -> jax.Array:
        value = jax.random.normal(jax.random.key(key), shape)
        return jax.device_put(value, jax.devices()[0]) if placed == "committed" else value

    # Shapes no other test uses, so the first step's compilations are this test's own.
    model = {"conv": fx.Parameter(make((3, 2, 5), 0)), "bias": fx.Parameter(make((31,), 1)),
             "head": fx.Parameter(make((5, 31), 2))}
    opt = fx.Adam(fx.parameters(model), lr=0.1)
    x = jnp.ones((4, 5))

    def loss_fn(m: Any, x: jax.Array) -> jax.Array:
        return jnp.sum((x @ m["head"] + m["bias"]) ** 2) + jnp.sum(m["conv"] ** 2)

    for k in range(5):
        if k == 3:
            opt.load_state_dict(opt.state_dict())
        with CompileCounter() as counter:
            opt.zero_grad()
            if grads == "backward":
                fx.backward(loss_fn, model, x)
            else:
                for p in model.values():
                    p.grad = jnp.full(p.shape, 0.1 * (k + 1))
            opt.step()
        if k == 0:
            assert counter.count >= 1
        else:
            assert counter.names == [], (k, counter.names)


# ------------------------------------------------------------------ state dicts


def _trained(seed: int = 0, steps: int = 2) -> tuple[fx.RMSprop, list[fx.Parameter]]:
    """Two groups; params[3] never gets a gradient (so has no state)."""
    params = make_params((4,), (2, 3), (5,), (3,), seed=seed)
    opt = fx.RMSprop(
        [{"params": [params[1], params[0]], "momentum": 0.9},
         {"params": [params[2], params[3]], "lr": 0.05, "centered": True}],
        alpha=0.9,
    )
    for k in range(steps):
        set_grads(params[:3], seed * 100 + k)
        opt.step()
    return opt, params


def test_state_dict_layout() -> None:
    opt, params = _trained()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    # Indices count Parameters in param-group order: group 0 is [params[1], params[0]].
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert list(sd["state"]) == [0, 1, 2]  # params[3] has no gradient yet, so no state
    assert sd["state"][0]["square_avg"].shape == (2, 3)
    assert sd["state"][1]["square_avg"].shape == (4,)
    assert sd["state"][2]["square_avg"].shape == (5,)
    assert set(sd["state"][0]) == {"step", "square_avg", "momentum_buffer"}
    assert set(sd["state"][2]) == {"step", "square_avg", "grad_avg"}
    for entry in sd["state"].values():
        assert int(entry["step"]) == 2
        for value in entry.values():
            assert isinstance(value, (np.ndarray, np.generic)), type(value)
    np.testing.assert_array_equal(sd["state"][0]["square_avg"],
                                  np.asarray(opt.state[params[1]]["square_avg"]))
    group0 = {k: v for k, v in sd["param_groups"][0].items() if k != "params"}
    assert group0 == {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    assert sd["param_groups"][1]["lr"] == 0.05 and sd["param_groups"][1]["centered"] is True
    assert_same(pickle.loads(pickle.dumps(sd)), sd)


def test_state_dict_is_a_copy() -> None:
    opt, params = _trained()
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    sd["param_groups"][0]["lr"] = 123.0
    sd["state"][0]["square_avg"][...] = -1.0
    assert opt.param_groups[0]["lr"] == 0.01
    assert np.all(np.asarray(opt.state[params[1]]["square_avg"]) >= 0)
    # ... and later steps do not write into an earlier state dict.
    set_grads(params, 9)
    opt.step()
    fresh = opt.state_dict()
    assert_same(kept["param_groups"], fresh["param_groups"])
    assert int(kept["state"][1]["step"]) == 2 and int(fresh["state"][1]["step"]) == 3


def _closed_loop(opt: fx.RMSprop, params: list[fx.Parameter], steps: range) -> None:
    for k in steps:
        if k == 3:
            opt.param_groups[1]["lr"] = 0.02  # a mid-run change the state dict must carry
            opt.param_groups[0]["momentum"] = 0.5
        opt.zero_grad()
        fx.backward(quadratic, params[:3], 0.25 * k)
        opt.step()


def test_save_pickle_rebuild_load_resume_is_bit_identical() -> None:
    opt, params = _trained(seed=1, steps=0)
    _closed_loop(opt, params, range(8))
    uninterrupted = snapshot(opt, params)

    opt, params = _trained(seed=1, steps=0)
    _closed_loop(opt, params, range(5))
    blob = pickle.dumps({"values": [np.asarray(p.value) for p in params],
                         "optimizer": opt.state_dict()})
    del opt, params
    saved = pickle.loads(blob)
    params = [fx.Parameter(v) for v in saved["values"]]
    # Rebuilt with other hyper-parameters: the state dict restores the saved ones.
    opt = fx.RMSprop(
        [{"params": [params[1], params[0]], "momentum": 0.9},
         {"params": [params[2], params[3]], "centered": True}],
        lr=1.0, alpha=0.5,
    )
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[1]["lr"] == 0.02 and opt.param_groups[0]["alpha"] == 0.9
    assert params[3] not in opt.state
    _closed_loop(opt, params, range(5, 8))
    assert_same(snapshot(opt, params), uninterrupted)


def test_load_state_dict_into_a_fresh_optimizer_then_state_dict_round_trips() -> None:
    opt, _ = _trained(seed=2)
    sd = opt.state_dict()
    fresh, fresh_params = _trained(seed=3, steps=0)
    fresh.load_state_dict(pickle.loads(pickle.dumps(sd)))
    assert_same(fresh.state_dict(), sd)
    assert fresh.state[fresh_params[1]]["momentum_buffer"].dtype == jnp.float32


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], Any], str]]:
    """(label, how to spoil a good state dict, the message pinned)."""

    def setitem(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
        def spoil(sd: dict[str, Any]) -> None:
            target = sd
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value(target.get(path[-1])) if callable(value) else value
        return spoil

    def delitem(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
        def spoil(sd: dict[str, Any]) -> None:
            target = sd
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return spoil

    return [
        ("group-count", lambda sd: sd["param_groups"].pop(),
         r"state dict has 1 param group\(s\), the optimizer has 2"),
        ("group-size", lambda sd: sd["param_groups"][1]["params"].append(4),
         r"param_groups\[1\] holds 3 parameter\(s\) in the state dict, 2 in the optimizer"),
        ("shape", setitem(("state", 2, "square_avg"), np.zeros(6, np.float32)),
         r"state\[2\]\['square_avg'\] has shape \(6,\), expected \(5,\)"),
        ("momentum-shape", setitem(("state", 1, "momentum_buffer"), np.zeros((2, 2), np.float32)),
         r"state\[1\]\['momentum_buffer'\] has shape \(2, 2\), expected \(4,\)"),
        ("dtype", setitem(("state", 2, "grad_avg"), lambda v: v.astype(np.float64)),
         r"state\[2\]\['grad_avg'\] has dtype float64, expected float32"),
        ("unknown-state-key", setitem(("state", 2, "exp_avg"), np.zeros(5, np.float32)),
         r"state\[2\] has unknown key\(s\) \['exp_avg'\]"),
        ("missing-state-key", delitem(("state", 2, "square_avg")),
         r"state\[2\] is missing key\(s\) \['square_avg'\]"),
        ("unknown-index", setitem(("state", 7), lambda v: {"step": np.int32(1)}),
         r"state\[7\] names no parameter"),
        ("missing-group-key", delitem(("param_groups", 1, "alpha")),
         r"param_groups\[1\] lacks key\(s\) \['alpha'\]"),
        ("invalid-lr", setitem(("param_groups", 1, "lr"), -1.0),
         r"param_groups\[1\]: Invalid lr value: -1\.0"),
        ("invalid-alpha", setitem(("param_groups", 1, "alpha"), 1.5),
         r"param_groups\[1\]: Invalid alpha value: 1\.5"),
        ("invalid-momentum", setitem(("param_groups", 1, "momentum"), float("nan")),
         r"param_groups\[1\]: Invalid momentum value: nan"),
        ("top-level-keys", setitem(("optimizer",), "RMSprop"),
         r"exactly the keys 'state' and 'param_groups'"),
        ("missing-top-level", delitem(("state",)),
         r"exactly the keys 'state' and 'param_groups'"),
    ]


MUTATIONS = _mutations()


@pytest.mark.parametrize("label, spoil, pattern", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_load_state_dict_errors_change_nothing(label: str, spoil: Callable[[dict[str, Any]], Any],
                                               pattern: str) -> None:
    opt, params = _trained(seed=4)
    good = opt.state_dict()
    bad = copy.deepcopy(good)
    # The first group and entry would be applied if validation were interleaved with loading.
    bad["param_groups"][0]["lr"] = 0.125
    bad["state"][0]["square_avg"] = bad["state"][0]["square_avg"] + 1.0
    spoil(bad)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(bad)
    assert_same(snapshot(opt, params), before)
    assert_same(opt.state_dict(), good)


# ------------------------------------------------------------------ hooks


def test_step_hooks_see_the_optimizer_and_arguments() -> None:
    model = [fx.Parameter(jnp.array([1.0, 2.0]))]
    opt = fx.RMSprop(model, lr=0.1)
    events: list[tuple[Any, ...]] = []

    def closure() -> jax.Array:
        events.append(("closure",))
        opt.zero_grad()
        return fx.backward(quadratic, model)

    pre = opt.register_step_pre_hook(
        lambda o, args, kwargs: events.append(("pre", o, tuple(args) + tuple(kwargs.values()),
                                               np.asarray(model[0].value).copy())))
    post = opt.register_step_post_hook(
        lambda o, args, kwargs: events.append(("post", o, tuple(args) + tuple(kwargs.values()),
                                               np.asarray(model[0].value).copy())))
    assert isinstance(pre, fx.RemovableHandle) and isinstance(post, fx.RemovableHandle)
    opt.step(closure)
    assert [e[0] for e in events] == ["pre", "closure", "post"]
    assert events[0][1] is opt and events[0][2] == (closure,)
    assert events[2][1] is opt and events[2][2] == (closure,)
    np.testing.assert_array_equal(events[0][3], [1.0, 2.0])  # before the update
    assert not np.array_equal(events[2][3], [1.0, 2.0])  # after it
    events.clear()
    opt.step()
    assert [(e[0], e[2]) for e in events] == [("pre", ()), ("post", ())]
    pre.remove()
    pre.remove()  # removing twice is harmless
    events.clear()
    opt.step(closure)
    assert [e[0] for e in events] == ["closure", "post"]
    post.remove()
    events.clear()
    opt.step(closure)
    assert [e[0] for e in events] == ["closure"]


def test_step_pre_hook_may_replace_the_arguments() -> None:
    model = [fx.Parameter(jnp.array([1.0, 2.0]))]
    opt = fx.RMSprop(model, lr=0.1)
    called: list[str] = []

    def original() -> float:
        called.append("original")
        return 1.0

    def replacement() -> float:
        called.append("replacement")
        opt.zero_grad()
        fx.backward(quadratic, model)
        return 2.0

    opt.register_step_pre_hook(lambda o, args, kwargs: ((replacement,), {}))
    seen: list[tuple[Any, ...]] = []
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(tuple(args)))
    assert opt.step(original) == 2.0
    assert called == ["replacement"] and seen == [(replacement,)]


def test_hooks_run_in_registration_order() -> None:
    opt = fx.RMSprop(make_params((2,)))
    order: list[int] = []
    handles = [opt.register_step_pre_hook(lambda o, a, k, i=i: order.append(i)) for i in range(3)]
    opt.step()
    handles[1].remove()
    opt.step()
    assert order == [0, 1, 2, 0, 2]


def test_state_dict_hooks() -> None:
    opt, _ = _trained()
    events: list[tuple[Any, ...]] = []
    pre = opt.register_state_dict_pre_hook(lambda o: events.append(("pre", o)))

    def post_hook(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        events.append(("post", o, sorted(sd)))
        return {**sd, "param_groups": [{**g, "note": "saved"} for g in sd["param_groups"]]}

    post = opt.register_state_dict_post_hook(post_hook)
    sd = opt.state_dict()
    assert events == [("pre", opt), ("post", opt, ["param_groups", "state"])]
    assert [g["note"] for g in sd["param_groups"]] == ["saved", "saved"]
    observer: list[int] = []
    opt.register_state_dict_post_hook(lambda o, sd: observer.append(len(sd["state"])))  # -> None
    assert "note" in opt.state_dict()["param_groups"][0] and observer == [3]
    pre.remove()
    post.remove()
    events.clear()
    assert "note" not in opt.state_dict()["param_groups"][0] and events == []


def test_load_state_dict_hooks() -> None:
    opt, _ = _trained(seed=5)
    legacy = opt.state_dict()
    for group in legacy["param_groups"]:
        group["learning_rate"] = group.pop("lr")  # an old key a pre-hook translates
    target, _ = _trained(seed=6, steps=0)
    events: list[tuple[Any, ...]] = []

    def translate(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        events.append(("pre", o))
        groups = [{("lr" if k == "learning_rate" else k): v for k, v in g.items()}
                  for g in sd["param_groups"]]
        return {"state": sd["state"], "param_groups": groups}

    pre = target.register_load_state_dict_pre_hook(translate)
    post = target.register_load_state_dict_post_hook(lambda o: events.append(("post", o)))
    target.load_state_dict(legacy)
    assert events == [("pre", target), ("post", target)]
    assert target.param_groups[1]["lr"] == 0.05
    assert_same(target.state_dict(), opt.state_dict())
    # A failed load runs the pre-hook but not the post-hook.
    events.clear()
    with pytest.raises(ValueError, match="param group"):
        target.load_state_dict({"state": {}, "param_groups": []})
    assert events == [("pre", target)]
    pre.remove()
    post.remove()
    events.clear()
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['lr'\]"):
        target.load_state_dict(legacy)
    assert events == []


# ------------------------------------------------------------------ the transform owns its state


@schema.declare(step=schema.step_count(), power=schema.scalar(), acc=schema.buffer())
class CorrectedState(NamedTuple):
    step: jax.Array
    power: jax.Array  # 0.5 ** step, kept as a per-parameter product (as NAdam's mu_product)
    acc: Any


@schema.makes(CorrectedState)
def corrected(lr: float = 0.1, initial: float = 0.0) -> fx.GradientTransformation:
    """A made-up transform with what Adam and Adagrad need of the base: an
    accumulator that starts at ``initial`` (init owns it) and a bias correction
    that reads each parameter's own count, kept as a per-parameter product
    (as NAdam's mu_product) that starts at 1, not 0, beside the step count."""

    def init(params: Any) -> CorrectedState:
        return CorrectedState(jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32),
                              jax.tree.map(lambda p: jnp.full_like(p, initial), params))

    def update(grads: Any, state: CorrectedState, params: Any = None) -> Any:
        step = state.step + 1
        power = state.power * 0.5
        acc = jax.tree.map(lambda a, g: 0.5 * a + g * g, state.acc, grads)
        # One scalar factor per parameter, formed before it meets the tensor (as
        # torch's addcdiv value), so no reassociation can tell a scalar from a
        # per-element count apart.
        scale = -lr * (1.0 - power)  # 1 - 0.5^t, t this parameter's own step count
        updates = jax.tree.map(lambda g, a: scale * (g / jnp.sqrt(a + 1.0)), grads, acc)
        return updates, CorrectedState(step, power, acc)

    return fx.GradientTransformation(init, update)


class Corrected(fx.Optimizer):
    transform = staticmethod(corrected)


def _functional_run(value: np.ndarray, grads: list[np.ndarray], **hyper: Any) -> Any:
    tx = corrected(**hyper)
    params, state = jnp.asarray(value), tx.init(jnp.asarray(value))
    update = jax.jit(tx.update)  # compiled like the stateful step (eager rounds apart)
    for g in grads:
        updates, state = update(jnp.asarray(g), state, params)
        params = fx.apply_updates(params, updates)
    return np.asarray(params), state


def test_per_parameter_steps_in_one_pack_match_separate_functional_runs() -> None:
    """torch's per-parameter step: a Parameter without a gradient does not advance,
    and one added mid-run starts at 0, even when they share one packed buffer."""
    a, b, c = make_params((5,), (2,), (3,), seed=3)
    values = [np.asarray(p.value) for p in (a, b, c)]
    opt = Corrected([a, b], initial=0.25)
    rng = np.random.default_rng(9)
    history: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    plan = [(0,), (0, 1), (0, 1), "add c", (0, 1, 2), (1, 2)]
    for entry in plan:
        if entry == "add c":
            opt.add_param_group({"params": [c]})
            continue
        opt.zero_grad()
        for i in entry:
            p = (a, b, c)[i]
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad = jnp.asarray(g)
            history[i].append(g)
        opt.step()
    assert a.storage.pack is b.storage.pack  # the case that failed: two parameters, one buffer
    for i, p in enumerate((a, b, c)):
        expected, state = _functional_run(values[i], history[i], initial=0.25)
        # Two groups compile into one XLA computation whose fusion may contract
        # a·b + c into one FMA where the one-leaf run does not: 1 ulp on single
        # elements. A wrong count would be off by far more (1 - 0.5^t moves 25%).
        assert int(opt.state[p]["step"]) == len(history[i]) == int(state.step)
        assert float(opt.state[p]["power"]) == 0.5 ** len(history[i]) == float(state.power)
        for got, want in ((p.value, expected), (opt.state[p]["acc"], state.acc)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2**-23, atol=0,
                                       err_msg=f"param {i}")


def test_new_state_starts_at_the_transforms_init_also_after_a_load() -> None:
    a, b = make_params((4,), (3,), seed=4)
    opt = Corrected([a, b], initial=0.1)
    b.grad = jnp.ones(3)
    opt.step()
    # a never stepped: when it does, its accumulator must start at 0.1, not 0.
    a.grad = jnp.ones(4)
    before = np.asarray(a.value)
    opt.step()
    expected, _ = _functional_run(before, [np.ones(4, np.float32)], initial=0.1)
    np.testing.assert_array_equal(np.asarray(a.value), expected)
    # Loaded into a fresh optimizer: the entries that the dict lacks start at init too.
    c, d = make_params((4,), (3,), seed=4)
    sd = opt.state_dict()
    del sd["state"][0]
    other = Corrected([c, d], initial=0.1)
    other.load_state_dict(sd)
    c.grad = jnp.ones(4)
    other.step()
    expected, _ = _functional_run(np.asarray(make_params((4,), seed=4)[0].value),
                                  [np.ones(4, np.float32)], initial=0.1)
    np.testing.assert_array_equal(np.asarray(c.value), expected)


def test_a_state_without_a_schema_is_refused_with_how_to_declare_one() -> None:
    class Bare(NamedTuple):
        step: jax.Array

    def bare(lr: float = 0.1) -> fx.GradientTransformation:
        return fx.GradientTransformation(lambda params: Bare(jnp.zeros((), jnp.int32)),
                                         lambda g, s, p=None: (g, s))

    class Plain(fx.Optimizer):
        transform = staticmethod(bare)

    (p,) = make_params((2,))
    with pytest.raises(TypeError, match=r"bare does not say which state.*schema.makes"):
        Plain([p])
    with pytest.raises(TypeError, match=r"Bare has no state schema.*schema.declare"):
        schema.makes(Bare)
    with pytest.raises(TypeError, match=r"must list its fields in order"):
        schema.declare(acc=schema.buffer())(Bare)
    assert p.storage is None  # refused before the optimizer took the Parameter
