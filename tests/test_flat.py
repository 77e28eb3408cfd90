"""Tests of lucid_fx._src.scale.flat: the flat (one buffer per dtype) path gives the tree path's numbers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import max_rel_error, reference_run

import lucid_fx as fx
from lucid_fx._src.scale.flat import FlatLayout, flatten

RTOL_F32 = 2e-5  # float32 through a few steps of divisions and square roots, vs float64
# The flat and the tree path run the same kernel on the same values; only how XLA
# vectorises the loop may differ (e.g. a fused multiply-add), a few float32 ulps.
RTOL_SAME_KERNEL = 1e-6
STEPS = 5

CONFIGS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "centered": {"centered": True},
    "centered+momentum": {"centered": True, "momentum": 0.9},
    "weight_decay": {"weight_decay": 0.1, "momentum": 0.5},
}


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape), dtype)
    return jnp.asarray(rng.normal(size=shape), dtype)


def _tree(rng: np.random.Generator, dtypes: dict[str, Any]) -> dict[str, Any]:
    """A tree mixing shapes: a matrix, a vector, a scalar and a zero-size leaf per dtype."""
    shapes = {"matrix": (3, 4), "vector": (5,), "scalar": (), "empty": (0, 2)}
    return {
        f"{name}_{kind}": _random(rng, shape, dtype)
        for name, dtype in dtypes.items()
        for kind, shape in shapes.items()
    }


def _grad_seq(rng: np.random.Generator, params: Any, steps: int = STEPS) -> list[Any]:
    return [
        jax.tree.map(lambda p: _random(rng, p.shape, p.dtype), params) for _ in range(steps)
    ]


def _run_tree(tx: fx.GradientTransformation, params: Any, grads_seq: list[Any]) -> tuple[Any, Any]:
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g))
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state


def _apply(tx: fx.GradientTransformation, params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return fx.apply_updates(params, updates), state


def _run_flat(tx: fx.GradientTransformation, params: Any, grads_seq: list[Any]) -> tuple[Any, Any]:
    """Parameters kept flat across steps, as FlatLayout's docstring shows."""
    layout = FlatLayout.of(params)
    flat = layout.pack(params)
    state = tx.init(flat)
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g))
    for grads in grads_seq:
        flat, state = step(flat, state, layout.pack(grads))
    return layout.unpack(flat), state


def _leaves64(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x).astype(np.complex128) for x in jax.tree.leaves(tree)]


def _tree_error(actual: Any, expected: Any) -> float:
    errors = [max_rel_error(a, e) for a, e in zip(_leaves64(actual), _leaves64(expected))]
    return max(errors, default=0.0)


# ---------------------------------------------------------------------------- layout


def test_pack_unpack_round_trip_keeps_every_dtype_and_shape() -> None:
    rng = np.random.default_rng(0)
    dtypes = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "c64": jnp.complex64}
    params = _tree(rng, dtypes)
    layout = FlatLayout.of(params)
    flat = layout.pack(params)
    # One buffer per dtype, never upcast; sizes 12 + 5 + 1 + 0 per dtype.
    assert {k: (v.shape, v.dtype) for k, v in flat.items()} == {
        name: ((18,), jnp.dtype(dtype)) for name, dtype in
        {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
         "complex64": jnp.complex64}.items()
    }
    assert layout.sizes == {"bfloat16": 18, "complex64": 18, "float16": 18, "float32": 18}
    back = layout.unpack(flat)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for key, leaf in params.items():
        assert back[key].dtype == leaf.dtype and back[key].shape == leaf.shape, key
        np.testing.assert_array_equal(np.asarray(back[key]), np.asarray(leaf))


def test_pack_follows_tree_order_within_a_dtype() -> None:
    params = [jnp.array([1.0, 2.0]), jnp.array([7], jnp.bfloat16), jnp.array([[3.0], [4.0]])]
    flat = FlatLayout.of(params).pack(params)
    assert flat["float32"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert flat["bfloat16"].tolist() == [7.0]


def test_none_leaves_hold_no_slot_and_come_back_as_none() -> None:
    params = {"frozen": None, "w": jnp.ones(3), "nested": [None, jnp.zeros(2)]}
    layout = FlatLayout.of(params)
    flat = layout.pack(params)
    assert flat["float32"].shape == (5,)
    back = layout.unpack(flat)
    assert back["frozen"] is None and back["nested"][0] is None
    assert back["nested"][1].shape == (2,) and back["w"].tolist() == [1.0, 1.0, 1.0]


def test_empty_tree_packs_to_no_buffers() -> None:
    layout = FlatLayout.of({})
    assert layout.pack({}) == {} and layout.unpack({}) == {}


def test_layout_is_hashable_and_compared_by_value() -> None:
    a = FlatLayout.of({"w": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.bfloat16)})
    b = FlatLayout.of({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)})
    c = FlatLayout.of({"w": jnp.zeros((3, 2)), "b": jnp.zeros(3, jnp.bfloat16)})
    assert a == b and hash(a) == hash(b) and a != c
    # Usable as a static jit argument: equal layouts share one trace.
    traces = []

    def first_leaf(flat: Any, layout: FlatLayout) -> jax.Array:
        traces.append(layout)
        return layout.unpack(flat)["w"]

    unpack = jax.jit(first_leaf, static_argnums=1)
    flat = a.pack({"w": jnp.ones((2, 3)), "b": jnp.ones(3, jnp.bfloat16)})
    assert unpack(flat, a).shape == unpack(flat, b).shape == (2, 3)
    assert len(traces) == 1
    assert repr(a) == "FlatLayout(2 leaves -> {bfloat16: 3, float32: 6})"


# ------------------------------------------------------------------- same numbers


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_flat_params_match_reference_and_tree_path(config: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    params = _tree(rng, {"f32": jnp.float32, "c64": jnp.complex64})
    grads_seq = _grad_seq(rng, params)
    tx = fx.rmsprop(lr=0.01, **config)

    flat_params, flat_state = _run_flat(tx, params, grads_seq)
    tree_params, tree_state = _run_tree(tx, params, grads_seq)

    keys = sorted(params)  # the reference works on lists, in this order
    history, ref_state = reference_run(
        [params[k] for k in keys], [[g[k] for k in keys] for g in grads_seq], lr=0.01, **config
    )
    assert _tree_error([flat_params[k] for k in keys], history[-1]) <= RTOL_F32
    assert _tree_error(flat_params, tree_params) <= RTOL_SAME_KERNEL
    # The flat state unpacks to the tree path's state, leaf for leaf.
    layout = FlatLayout.of(params)
    assert int(flat_state.step) == int(tree_state.step) == STEPS
    # The parameters' layout unpacks the state too (v of complex parameters is real).
    flat_v = layout.unpack(flat_state.square_avg)
    assert flat_v["c64_vector"].dtype == jnp.float32
    assert _tree_error(flat_v, tree_state.square_avg) <= RTOL_SAME_KERNEL
    assert _tree_error(flat_v, dict(zip(keys, ref_state["square_avg"]))) <= RTOL_F32
    for field in ("grad_avg", "momentum_buffer"):
        flat_buffer, tree_buffer = getattr(flat_state, field), getattr(tree_state, field)
        assert (flat_buffer is None) == (tree_buffer is None) == (ref_state[field] is None)
        if flat_buffer is not None:
            assert _tree_error(layout.unpack(flat_buffer), tree_buffer) <= RTOL_SAME_KERNEL
            assert _tree_error(layout.unpack(flat_buffer), dict(zip(keys, ref_state[field]))) <= (
                RTOL_F32
            )


@pytest.mark.parametrize("state_dtype", [None, jnp.float32], ids=["own-dtype", "float32"])
def test_mixed_dtypes_flat_equals_tree(state_dtype: Any) -> None:
    rng = np.random.default_rng(2)
    params = _tree(rng, {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16})
    grads_seq = _grad_seq(rng, params)
    tx = fx.rmsprop(lr=0.01, momentum=0.9, centered=True, state_dtype=state_dtype)

    flat_params, flat_state = _run_flat(tx, params, grads_seq)
    tree_params, _ = _run_tree(tx, params, grads_seq)

    for key, leaf in params.items():
        assert flat_params[key].dtype == leaf.dtype, key
    # Low-precision results are rounded to their dtype from the same float32 value.
    assert _tree_error(flat_params, tree_params) <= RTOL_SAME_KERNEL
    expected_v = {"float32": jnp.float32, "bfloat16": state_dtype or jnp.bfloat16,
                  "float16": state_dtype or jnp.float16}
    assert {k: v.dtype for k, v in flat_state.square_avg.items()} == {
        k: jnp.dtype(d) for k, d in expected_v.items()
    }


def test_zero_size_leaves_update_to_empty_arrays() -> None:
    params = {"none_yet": jnp.zeros((0,)), "empty_matrix": jnp.zeros((3, 0)), "w": jnp.ones(2)}
    grads = {"none_yet": jnp.zeros((0,)), "empty_matrix": jnp.zeros((3, 0)), "w": jnp.ones(2)}
    tx = flatten(fx.rmsprop(lr=0.1))
    updates, state = tx.update(grads, tx.init(params), params)
    assert updates["none_yet"].shape == (0,) and updates["empty_matrix"].shape == (3, 0)
    assert state.square_avg["float32"].shape == (2,)
    # v = (1 - α)·1, θ-update = -η·1/(sqrt(v) + ε) = -0.1/sqrt(0.01) = -1.
    np.testing.assert_allclose(np.asarray(updates["w"]), [-1.0, -1.0], rtol=RTOL_F32)


# --------------------------------------------------------------------- flatten(tx)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_flatten_wrapper_matches_tree_path(config: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    params = _tree(rng, {"f32": jnp.float32, "bf16": jnp.bfloat16})
    grads_seq = _grad_seq(rng, params)

    wrapped_params, wrapped_state = _run_tree(flatten(fx.rmsprop(lr=0.01, **config)), params,
                                              grads_seq)
    tree_params, _ = _run_tree(fx.rmsprop(lr=0.01, **config), params, grads_seq)

    assert jax.tree.structure(wrapped_params) == jax.tree.structure(params)
    assert _tree_error(wrapped_params, tree_params) <= RTOL_SAME_KERNEL
    assert sorted(wrapped_state.square_avg) == ["bfloat16", "float32"]


def test_flatten_inside_chain_with_global_clipping_matches_reference() -> None:
    rng = np.random.default_rng(4)
    params = {"a": _random(rng, (4,), jnp.float32), "b": _random(rng, (2, 3), jnp.float32)}
    grads = {"a": 10 * _random(rng, (4,), jnp.float32), "b": _random(rng, (2, 3), jnp.float32)}
    tx = fx.chain(fx.clip_by_global_norm(1.0), flatten(fx.rmsprop(lr=0.01, momentum=0.9)))
    new_params, _ = _run_tree(tx, params, [grads])

    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values()))
    clipped = [np.asarray(grads[k], np.float64) / norm for k in ("a", "b")]
    history, _ = reference_run([params["a"], params["b"]], [clipped], lr=0.01, momentum=0.9)
    assert _tree_error([new_params["a"], new_params["b"]], history[-1]) <= RTOL_F32


def test_flatten_with_none_leaves_and_donation() -> None:
    params = {"frozen": None, "w": jnp.full(3, 2.0)}
    grads = {"frozen": None, "w": jnp.ones(3)}
    tx = flatten(fx.rmsprop(lr=0.1, weight_decay=0.5))
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g), donate_argnums=(0, 1))
    new_params, state = step(params, tx.init(params), grads)
    assert new_params["frozen"] is None
    # g = 1 + 0.5·2 = 2, v = 0.01·4, update = -0.1·2/0.2 = -1.
    np.testing.assert_allclose(np.asarray(new_params["w"]), [1.0, 1.0, 1.0], rtol=RTOL_F32)
    assert int(state.step) == 1


# -------------------------------------------------------------------------- errors


def test_pack_rejects_a_different_structure() -> None:
    layout = FlatLayout.of({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"FlatLayout.pack: the tree's structure differs"):
        layout.pack({"v": jnp.ones(2)})


def test_pack_rejects_a_different_shape_naming_the_path() -> None:
    layout = FlatLayout.of({"w": jnp.ones(2), "b": [jnp.ones(3)]})
    with pytest.raises(ValueError, match=r"\['b'\]\[0\] is \(4,\) float32, the layout holds "
                                         r"\(3,\) float32 there"):
        layout.pack({"w": jnp.ones(2), "b": [jnp.ones(4)]})


def test_pack_never_casts_silently() -> None:
    layout = FlatLayout.of({"w": jnp.ones(2, jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"\['w'\] is \(2,\) float32, the layout holds "
                                         r"\(2,\) bfloat16"):
        layout.pack({"w": jnp.ones(2, jnp.float32)})


def test_unpack_rejects_missing_or_extra_buffers() -> None:
    layout = FlatLayout.of({"w": jnp.ones(2), "h": jnp.ones(2, jnp.float16)})
    with pytest.raises(ValueError, match=r"one buffer per dtype, \['float16', 'float32'\]; "
                                         r"got \['float32'\]"):
        layout.unpack({"float32": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"got list"):
        layout.unpack([jnp.ones(2)])


def test_unpack_rejects_a_buffer_of_the_wrong_shape() -> None:
    layout = FlatLayout.of({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"buffer 'float32' has shape \(5,\), expected \(4,\)"):
        layout.unpack({"float32": jnp.ones(5)})
    with pytest.raises(ValueError, match=r"buffer 'float32' has shape \(2, 2\), expected \(4,\)"):
        layout.unpack({"float32": jnp.ones((2, 2))})


def test_unpack_keeps_the_buffer_dtype_so_state_unpacks_like_params() -> None:
    params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
    layout = FlatLayout.of(params)
    state = fx.rmsprop(state_dtype=jnp.float32).init(layout.pack(params))
    v = layout.unpack(state.square_avg)["w"]
    assert (v.shape, v.dtype) == ((2, 2), jnp.float32)


def test_flatten_rejects_params_that_do_not_match_the_gradients() -> None:
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    tx = flatten(fx.rmsprop(weight_decay=0.1))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"flatten: params must have their gradients' "
                                         r"structure, shapes and dtypes; .*\['w'\] is \(2,\) "
                                         r"bfloat16, the layout holds \(2,\) float32"):
        tx.update({"w": jnp.ones(2, jnp.float32)}, state, params)


def test_flatten_rejects_gradients_for_another_tree() -> None:
    tx = flatten(fx.rmsprop())
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"gradients do not match the state: \['float32'\] has "
                                         r"shape \(3,\), expected \(2,\)"):
        tx.update({"w": jnp.ones(3)}, state)


def test_flat_rmsprop_rejects_integer_leaves_by_their_buffer() -> None:
    layout = FlatLayout.of({"w": jnp.ones(2), "count": jnp.zeros(1, jnp.int32)})
    with pytest.raises(TypeError, match=r"\['int32'\] has dtype int32"):
        fx.rmsprop().init(layout.pack({"w": jnp.ones(2), "count": jnp.zeros(1, jnp.int32)}))
