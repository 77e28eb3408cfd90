"""The base is honest about shape: math that needs each array's shape gets it, on both faces.

A test-only transform divides each row of a matrix by that row's running norm (a
vector's elements by their own running magnitudes): its update depends on the
array's shape, as Muon's and Adafactor's do. Its state declares a row factor that is
not shaped like the parameter. Through the stateful face, Parameters of every kind
in one optimizer — a small matrix, same-shape matrices (a stack), a large matrix, a
vector and a 0-d number — must give the functional face's numbers and an
independent NumPy reference's, keep their shapes, and save and load their state.
Declared element-wise, the same transform is flattened and the numbers go wrong:
the check can fail.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucid_fx as fx
from lucid_fx._src.core import schema
from lucid_fx._src.core.dtypes import cast_scalar, real_dtype
from lucid_fx._src.stateful.optimizer import Optimizer
from lucid_fx._src.transforms.kernel_transform import kernel_transform, scheduled
from lucid_fx.sharding import zero1

DECAY = 0.5
SHAPES = {"small": (16, 8), "twin_a": (4, 6), "twin_b": (4, 6), "large": (300, 300),
          "bias": (8,), "scale": ()}


def _row_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    return (*shape[:-1], 1) if len(shape) >= 2 else None


def _magnitude_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    return shape if len(shape) < 2 else None


def _kernel(g: jax.Array, rows: jax.Array | None, magnitude: jax.Array | None, *,
            lr: Any) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """A matrix: r ← ½·r + ‖g_row‖ per row, θ ← θ - η·g/(r + 1); fewer dimensions: the
    same with |g| per element."""
    h = lambda x: cast_scalar(x, real_dtype(g.dtype))
    if rows is not None:
        new_rows = h(DECAY) * rows + jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True))
        return -h(lr) * g / (new_rows + 1), new_rows, None
    new_magnitude = h(DECAY) * magnitude + jnp.abs(g)
    return -h(lr) * g / (new_magnitude + 1), None, new_magnitude


def _state(elementwise: bool) -> type:
    @schema.declare(
        elementwise=elementwise,
        step=schema.step_count(),
        rows=schema.buffer() if elementwise else schema.array(_row_shape),
        magnitude=schema.buffer() if elementwise else schema.array(_magnitude_shape),
        skipped=schema.skipped_count(),
    )
    class RowNormState(NamedTuple):
        step: jax.Array
        rows: Any
        magnitude: Any
        skipped: jax.Array | None

    return RowNormState


ShapeAware, Flattened = _state(False), _state(True)


def _factory(state_type: type) -> Any:
    @schema.makes(state_type)
    def row_norm(lr: float = 0.1, *, skip_nonfinite: bool = False) -> fx.GradientTransformation:
        if state_type is Flattened:  # the wrong declaration: every array one vector
            def kernel(g: Any, rows: Any, magnitude: Any, *, lr: Any) -> Any:
                term, new_rows, _ = _kernel(g.reshape(1, -1), rows.reshape(-1)[:1].reshape(1, 1),
                                            None, lr=lr)
                return (term.reshape(g.shape), jnp.broadcast_to(new_rows.reshape(()), g.shape),
                        magnitude)
        else:
            kernel = _kernel
        return kernel_transform(
            "row_norm", state_type, kernel, kernel_args=lambda state, t: {
                "lr": scheduled(lr, state.step)},
            maximize=False, skip_nonfinite=skip_nonfinite, state_dtype=None,
            complex_parts=False)

    return row_norm


row_norm, flattened_row_norm = _factory(ShapeAware), _factory(Flattened)


class RowNorm(Optimizer):
    transform = staticmethod(row_norm)


class FlattenedRowNorm(Optimizer):
    transform = staticmethod(flattened_row_norm)


def _reference(value: np.ndarray, grads: list[np.ndarray | None], lr: float) -> np.ndarray:
    """float64 NumPy, written from the docstring's formulas, one array at a time."""
    theta = value.astype(np.float64)
    state = np.zeros(_row_shape(theta.shape) or theta.shape)
    for g in grads:
        if g is None:
            continue
        g = g.astype(np.float64)
        if theta.ndim >= 2:
            state = DECAY * state + np.sqrt((g * g).sum(axis=-1, keepdims=True))
        else:
            state = DECAY * state + np.abs(g)
        theta = theta - lr * g / (state + 1)
    return theta


def _problem(steps: int = 4) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray | None]]]:
    rng = np.random.default_rng(3)
    values = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads: list[dict[str, np.ndarray | None]] = []
    for t in range(steps):
        # twin_b joins late and skips a step: its stack row is masked then.
        grads.append({n: None if n == "twin_b" and t in (0, 2) else
                      rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()})
    return values, grads


def _stateful(cls: type, values: dict[str, np.ndarray],
              grads: list[dict[str, np.ndarray | None]]) -> tuple[dict[str, fx.Parameter], Any]:
    model = {n: fx.Parameter(jnp.asarray(v)) for n, v in values.items()}
    opt = cls(fx.named_parameters(model), lr=0.1)
    for step in grads:
        opt.zero_grad()
        for n, g in step.items():
            if g is not None:
                model[n].grad = jnp.asarray(g)
        opt.step()
    return model, opt


def test_small_stacked_large_and_low_rank_parameters_match_both_references() -> None:
    values, grads = _problem()
    model, opt = _stateful(RowNorm, values, grads)
    kinds = {p.params[0].shape: p.layout.kind for packs in opt._packs for p in packs}
    assert kinds[(4, 6)] == "stacked" and kinds[(16, 8)] == "single"
    tx = row_norm(lr=0.1)
    for name, value in values.items():
        expected = _reference(value, [g[name] for g in grads], 0.1)
        params = jnp.asarray(value)
        state = tx.init(params)
        for g in grads:
            if g[name] is not None:
                updates, state = jax.jit(tx.update)(jnp.asarray(g[name]), state, params)
                params = fx.apply_updates(params, updates)
        got = np.asarray(model[name].value)
        assert got.shape == SHAPES[name], name  # a 16×8 matrix keeps its shape
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(got, np.asarray(params), rtol=1e-6, atol=1e-7, err_msg=name)
        saved = opt.state[model[name]]
        if len(SHAPES[name]) >= 2:
            assert saved["rows"].shape == (*SHAPES[name][:-1], 1) and "magnitude" not in saved
        else:
            assert saved["magnitude"].shape == SHAPES[name] and "rows" not in saved


def test_the_functional_face_on_a_tree_batches_nothing_and_matches_one_by_one() -> None:
    values, grads = _problem(2)
    tx = row_norm(lr=0.1)
    tree = {n: jnp.asarray(v) for n, v in values.items()}
    state = tx.init(tree)
    assert state.rows["small"].shape == (16, 1) and state.magnitude["small"] is None
    for step in grads:
        g = {n: jnp.zeros(SHAPES[n]) if x is None else jnp.asarray(x) for n, x in step.items()}
        updates, state = tx.update(g, state, tree)
        tree = fx.apply_updates(tree, updates)
    expected = _reference(values["small"], [g["small"] for g in grads], 0.1)
    np.testing.assert_allclose(np.asarray(tree["small"]), expected, rtol=2e-6, atol=2e-6)


def test_state_dicts_cut_and_restore_each_parameter_in_its_shape() -> None:
    values, grads = _problem()
    model, opt = _stateful(RowNorm, values, grads)
    saved = opt.state_dict()
    copy = {n: fx.Parameter(jnp.asarray(p.value)) for n, p in model.items()}
    other = RowNorm(fx.named_parameters(copy), lr=0.1)
    other.load_state_dict(saved)
    again = other.state_dict()
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(again["state"][index][key], value)
    for step in grads[:1]:
        for m, o in ((model, opt), (copy, other)):
            o.zero_grad()
            for n, g in step.items():
                if g is not None:
                    m[n].grad = jnp.asarray(g)
            o.step()
    for n in model:
        np.testing.assert_array_equal(np.asarray(model[n].value), np.asarray(copy[n].value))


def test_declared_elementwise_the_same_math_is_flattened_and_goes_wrong() -> None:
    """The check can fail: with the math declared element-wise the small parameters share
    one flat buffer, the transform sees a vector, and a row's norm is the buffer's."""
    values, grads = _problem()
    model, _ = _stateful(FlattenedRowNorm, values, grads)
    expected = _reference(values["small"], [g["small"] for g in grads], 0.1)
    assert np.max(np.abs(np.asarray(model["small"].value) - expected)) > 1e-3


def test_zero1_and_flatten_refuse_math_that_needs_shapes() -> None:
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    with pytest.raises(ValueError, match=r"zero1 splits each state array .* RowNormState's "
                                         r"math needs each array whole"):
        zero1(row_norm(), mesh).init({"w": jnp.zeros((8, 4))})
    with pytest.raises(ValueError, match=r"flatten packs every leaf into one vector .* "
                                         r"RowNormState's math needs each array's shape"):
        fx.flatten(row_norm()).init({"w": jnp.zeros((8, 4))})
