"""Tests of the autodiff bridge: ``fx.Parameter``, ``fx.parameters`` and ``fx.backward``.

Gradients are checked against ``jax.grad`` of the same function written on plain
arrays (and, for complex parameters, against the analytic torch-convention gradient
and torch's autograd), so these tests do not depend on how ``backward`` routes values
internally.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import CompileCounter, one_torch_thread
from reference import max_rel_error

import lucid_fx as fx

# float32 gradients from the same jax.grad math routed differently: a few ulps.
RTOL_GRAD_F32 = 1e-6
# float32 gradients of torch's autograd and jax's: two engines' roundings of the same sums.
RTOL_TORCH_F32 = 5e-5


def mse(m: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    """The issue's example loss; ``m`` holds plain arrays."""
    return jnp.mean((x @ m["w"] + m["b"] - y) ** 2)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((4, 2)).astype(np.float32),
        rng.standard_normal(2).astype(np.float32),
        rng.standard_normal((8, 4)).astype(np.float32),
        rng.standard_normal((8, 2)).astype(np.float32),
    )


def assert_close(actual: Any, expected: Any, rtol: float = RTOL_GRAD_F32) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=rtol)


# ------------------------------------------------------------------ the compile counter


def test_compile_counter_sees_compilations() -> None:
    # Other tests assert "no compilation"; that is only meaningful if the counter works.
    fresh = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x = jnp.ones(17)
    with CompileCounter() as counter:
        fresh(x)
        fresh(x)
    assert counter.names == ["jit(<lambda>)"]


# ------------------------------------------------------------------ Parameter


def test_parameter_holds_a_copy_of_its_value() -> None:
    source = jnp.arange(3.0)
    p = fx.Parameter(source)
    assert isinstance(p.value, jax.Array)
    assert p.grad is None
    assert p.shape == (3,) and p.dtype == jnp.float32
    assert p.value is not source  # the optimizer may donate p.value, never the caller's array
    # The caller's array survives an optimizer step on the Parameter.
    opt = fx.RMSprop([p], lr=0.1)
    p.grad = jnp.ones(3)
    opt.step()
    assert not source.is_deleted()
    np.testing.assert_array_equal(np.asarray(source), [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "value, shape, dtype",
    [
        (np.ones((2, 3), np.float32), (2, 3), jnp.float32),
        ([1.0, 2.0], (2,), jnp.float32),
        (2.5, (), jnp.float32),
        (np.ones(2, np.complex64), (2,), jnp.complex64),
        (jnp.ones(4, jnp.bfloat16), (4,), jnp.bfloat16),
    ],
    ids=["numpy", "list", "python-float", "complex64", "bfloat16"],
)
def test_parameter_accepts_array_likes(value: Any, shape: tuple[int, ...], dtype: Any) -> None:
    p = fx.Parameter(value)
    assert isinstance(p.value, jax.Array)
    assert p.shape == shape and p.dtype == dtype
    assert repr(p) == f"Parameter(shape={shape}, dtype={jnp.dtype(dtype)})"


def test_parameters_compare_by_identity() -> None:
    a, b = fx.Parameter(jnp.zeros(2)), fx.Parameter(jnp.zeros(2))
    same = a
    assert a != b and a == same
    assert len({a, b, same}) == 2


# ------------------------------------------------------------------ parameters(tree)


def test_parameters_in_pytree_order_each_once() -> None:
    a, b, c = (fx.Parameter(jnp.zeros(n)) for n in (1, 2, 3))
    tree = {"z": [c, 7, "static"], "a": (a, jnp.ones(2), None), "m": {"tied": a, "b": b}}
    # dict keys sorted: "a" < "m" < "z"; within "m": "b" < "tied"; a tied Parameter once.
    assert fx.parameters(tree) == [a, b, c]
    assert fx.parameters({"x": jnp.ones(2), "y": 3}) == []
    assert fx.parameters(b) == [b]


# ------------------------------------------------------------------ backward


def test_backward_returns_loss_and_sets_gradients() -> None:
    w, b, x, y = _data()
    model = {"w": fx.Parameter(w), "b": fx.Parameter(b)}
    loss = fx.backward(mse, model, x, y)
    expected_loss, expected = jax.value_and_grad(mse)({"w": w, "b": b}, x, y)
    assert_close(loss, expected_loss)
    assert model["w"].grad.shape == (4, 2) and model["w"].grad.dtype == jnp.float32
    assert_close(model["w"].grad, expected["w"])
    assert_close(model["b"].grad, expected["b"])
    # The values are not touched by backward.
    np.testing.assert_array_equal(np.asarray(model["w"].value), w)


def test_backward_accumulates_across_calls() -> None:
    w, b, x, y = _data()
    model = {"w": fx.Parameter(w), "b": fx.Parameter(b)}
    x2, y2 = x[::-1] * 2.0, y + 1.0
    fx.backward(mse, model, x, y)
    fx.backward(mse, model, x2, y2)
    g1 = jax.grad(mse)({"w": w, "b": b}, x, y)
    g2 = jax.grad(mse)({"w": w, "b": b}, x2, y2)
    assert_close(model["w"].grad, g1["w"] + g2["w"])
    assert_close(model["b"].grad, g1["b"] + g2["b"])
    # zero_grad-equivalent: setting None starts afresh.
    model["w"].grad = model["b"].grad = None
    fx.backward(mse, model, x, y)
    assert_close(model["w"].grad, g1["w"])


def test_backward_accumulates_onto_a_zero_gradient() -> None:
    p = fx.Parameter(jnp.array([1.0, -2.0]))
    p.grad = jnp.zeros(2)  # as zero_grad(set_to_none=False) leaves it
    fx.backward(lambda v: jnp.sum(v**3), p)
    assert_close(p.grad, [3.0, 12.0])


def test_backward_tied_parameter_gets_the_sum_of_its_uses() -> None:
    shared = fx.Parameter(jnp.array([1.0, 2.0, 3.0]))
    other = fx.Parameter(jnp.array([0.5, -1.0, 2.0]))
    tree = {"encoder": shared, "decoder": shared, "bias": other}

    def loss_fn(t: dict[str, jax.Array]) -> jax.Array:
        return jnp.sum(t["encoder"] ** 2) + jnp.sum(3.0 * t["decoder"] * t["bias"])

    fx.backward(loss_fn, tree)
    e, o = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
    assert_close(shared.grad, 2 * e + 3 * o)
    assert_close(other.grad, 3 * e)


def test_backward_array_and_static_leaves_and_kwargs() -> None:
    p = fx.Parameter(jnp.array([1.0, 2.0]))
    tree = {
        "p": p,
        "jax_const": jnp.array([10.0, 20.0]),
        "np_const": np.array([1.0, -1.0], np.float32),
        "power": 3,  # a static Python value: usable in Python control flow
        "name": "cube",
        "nothing": None,
    }

    def loss_fn(t: dict[str, Any], scale: jax.Array, *, shift: jax.Array) -> jax.Array:
        assert isinstance(t["power"], int) and t["name"] == "cube" and t["nothing"] is None
        out = t["p"] ** t["power"] * t["jax_const"] + t["np_const"]
        return scale * jnp.sum(out) + shift

    loss = fx.backward(loss_fn, tree, jnp.float32(0.5), shift=jnp.float32(4.0))
    v = np.array([1.0, 2.0])
    assert_close(loss, 0.5 * np.sum(v**3 * [10.0, 20.0] + [1.0, -1.0]) + 4.0)
    assert_close(p.grad, 0.5 * 3 * v**2 * [10.0, 20.0])


def test_backward_compiles_once_per_function_and_shapes() -> None:
    # Shapes no other test uses, so the first call must compile.
    w = fx.Parameter(jnp.zeros((5, 3)))
    model = {"w": w, "scale": jnp.float32(1.0)}

    def loss_fn(m: dict[str, jax.Array], x: jax.Array, k: float) -> jax.Array:
        return k * jnp.sum((x @ m["w"] * m["scale"]) ** 2)

    rng = np.random.default_rng(1)
    inputs = [jnp.asarray(rng.standard_normal((7, 5)), jnp.float32) for _ in range(4)]
    values = [jnp.full((5, 3), k, jnp.float32) for k in range(4)]
    scales = [jnp.float32(k + 2.0) for k in range(4)]
    with CompileCounter() as first:
        fx.backward(loss_fn, model, inputs[0], 1.0)
    assert first.count >= 1
    with CompileCounter() as later:
        for k in range(1, 4):
            # New values (parameter, constant leaf, inputs, a float argument), same shapes.
            w.value, model["scale"], w.grad = values[k], scales[k], None
            fx.backward(loss_fn, model, inputs[k], 0.5 * k)
    assert later.count == 0, later.names
    with CompileCounter() as new_shape:
        fx.backward(loss_fn, model, jnp.ones((9, 5)), 1.0)
    assert new_shape.count >= 1


@pytest.mark.parametrize(
    "tree, error, pattern",
    [
        ({"x": jnp.ones(2)}, ValueError, "no Parameter to differentiate"),
        ({"i": fx.Parameter(jnp.arange(3))}, TypeError, "not floating point"),
    ],
    ids=["no-parameter", "int-parameter"],
)
def test_backward_rejects_trees_without_float_parameters(
    tree: Any, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        fx.backward(lambda t: jnp.sum(jax.tree.leaves(t)[0] * 1.0), tree)


def test_backward_failure_leaves_gradients_alone() -> None:
    p = fx.Parameter(jnp.array([1.0, 2.0]))
    fx.backward(lambda v: jnp.sum(v**2), p)
    before = np.asarray(p.grad).copy()
    with pytest.raises(TypeError, match="scalar"):
        fx.backward(lambda v: v**2, p)  # not a scalar loss
    np.testing.assert_array_equal(np.asarray(p.grad), before)


def test_backward_complex_parameters_use_torchs_convention() -> None:
    # L(z) = Σ |z - c|² has torch gradient 2(z - c) (steepest ascent in C ≅ R²);
    # jax.grad returns its conjugate. backward must give torch's, so θ - η·g descends.
    z0 = np.array([1 + 2j, -0.5 + 0.25j, 3 - 1j], np.complex64)
    c = np.array([0.5 - 1j, 1 + 1j, 0j], np.complex64)
    z = fx.Parameter(z0)

    def loss_fn(v: jax.Array) -> jax.Array:
        return jnp.sum(jnp.abs(v - c) ** 2)

    loss = fx.backward(loss_fn, z)
    assert z.grad.dtype == jnp.complex64
    assert_close(z.grad, 2 * (z0 - c))
    assert_close(loss, np.sum(np.abs(z0 - c) ** 2))
    assert float(loss_fn(z.value - 0.1 * z.grad)) < float(loss)


def test_complex_gradients_follow_torchs_autograd() -> None:
    """A complex and a real Parameter in one loss: torch's autograd gives the same."""
    torch = pytest.importorskip("torch", reason="compared with torch's autograd (the test extra)")
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((5, 3)) + 1j * rng.standard_normal((5, 3))).astype(np.complex64)
    y = (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex64)
    z0 = (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64)

    def loss_fn(m: dict[str, Any], a: Any, y: Any) -> Any:
        residual = a @ m["z"] * m["s"] - y
        return (residual.real ** 2 + residual.imag ** 2).sum()

    model = {"z": fx.Parameter(z0), "s": fx.Parameter(np.float32(0.7))}
    loss = fx.backward(loss_fn, model, a, y)
    with one_torch_thread(torch):
        z = torch.tensor(z0, requires_grad=True)
        s = torch.tensor(np.float32(0.7), requires_grad=True)
        torch_loss = loss_fn({"z": z, "s": s}, torch.from_numpy(a), torch.from_numpy(y))
        torch_loss.backward()
    assert max_rel_error(loss, torch_loss.item()) <= RTOL_TORCH_F32
    assert max_rel_error(model["z"].grad, z.grad.numpy()) <= RTOL_TORCH_F32
    assert max_rel_error(model["s"].grad, s.grad.numpy()) <= RTOL_TORCH_F32


def test_backward_on_optimizer_held_parameters() -> None:
    """Parameters an optimizer holds (whatever its storage) differentiate the same way.

    Only the Parameters reached by ``loss_fn`` get a gradient: the others keep ``None``,
    so the next ``step()`` skips them.
    """
    w, b, x, y = _data(3)
    held = {"w": fx.Parameter(w), "b": fx.Parameter(b)}
    bystander = fx.Parameter(jnp.ones(2))  # held by the optimizer, not in the loss
    loose = fx.Parameter(jnp.array([0.5, 2.0]))  # in the loss, not in any optimizer
    opt = fx.RMSprop([held["w"], bystander, held["b"]], lr=0.1)

    def loss_fn(m: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
        return mse(m, x, y) + jnp.sum(m["loose"] ** 2)

    for _ in range(2):  # the second round runs on whatever storage the first step chose
        opt.zero_grad()
        loose.grad = None
        values = {"w": held["w"].value, "b": held["b"].value, "loose": loose.value}
        loss = fx.backward(loss_fn, {**held, "loose": loose}, x, y)
        fx.backward(loss_fn, {**held, "loose": loose}, x, y)  # accumulate: twice the grads
        expected_loss, expected = jax.value_and_grad(loss_fn)(values, x, y)
        assert_close(loss, expected_loss)
        for name, p in [*held.items(), ("loose", loose)]:
            assert_close(p.grad, 2 * expected[name])
        assert bystander.grad is None
        opt.step()
    np.testing.assert_array_equal(np.asarray(bystander.value), np.ones(2))
    assert bystander not in opt.state


def test_backward_python_flags_in_kwargs_are_static() -> None:
    p = fx.Parameter(jnp.array([1.0, 2.0]))

    def loss_fn(v: jax.Array, *, training: bool) -> jax.Array:
        return jnp.sum(v * (2.0 if training else 1.0))

    fx.backward(loss_fn, p, training=True)
    assert_close(p.grad, [2.0, 2.0])
