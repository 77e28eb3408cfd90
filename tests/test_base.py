"""Tests of the protocol and combinators in ``lucid_fx._src.core.base``, alone and mixed with optax."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import RTOL_F32, max_rel_error, reference_run

import lucid_fx as fx


def _clip_np(g: np.ndarray, max_norm: float) -> np.ndarray:
    """Clipping by global norm, in float64 NumPy (one leaf)."""
    norm = np.linalg.norm(g)
    return g * min(1.0, max_norm / norm) if norm > 0 else g


def test_identity_passes_updates_and_keeps_no_state() -> None:
    tx = fx.identity()
    updates = {"a": jnp.arange(3.0), "b": [jnp.ones((2, 2), jnp.bfloat16)]}
    state = tx.init(updates)
    assert state == fx.EmptyState() and jax.tree.leaves(state) == []
    out, new_state = tx.update(updates, state)
    assert out is updates and new_state == state


def test_gradient_transformation_is_optax_compatible_namedtuple() -> None:
    tx = fx.rmsprop()
    assert isinstance(tx, fx.GradientTransformation) and isinstance(tx, tuple)
    assert fx.GradientTransformation._fields == ("init", "update")
    init, update = tx
    assert init is tx.init and update is tx.update


def test_chain_applies_in_order() -> None:
    """Scale-then-clip and clip-then-scale differ; chain must keep the written order."""
    g = jnp.array([3.0, 4.0])  # norm 5
    scale_first = fx.chain(optax.scale(10.0), fx.clip_by_global_norm(1.0))
    clip_first = fx.chain(fx.clip_by_global_norm(1.0), optax.scale(10.0))
    out1, _ = scale_first.update(g, scale_first.init(g))
    out2, _ = clip_first.update(g, clip_first.init(g))
    np.testing.assert_allclose(out1, [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(out2, [6.0, 8.0], rtol=1e-6)


def test_chain_state_is_tuple_of_inner_states() -> None:
    params = {"w": jnp.ones(3)}
    tx = fx.chain(fx.identity(), fx.rmsprop(momentum=0.9), optax.scale(-1.0))
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 3
    assert state[0] == fx.EmptyState()
    assert isinstance(state[1], fx.RMSpropState)
    _, new_state = tx.update(params, state, params)
    assert int(new_state[1].step) == 1


def test_empty_chain_is_identity() -> None:
    tx = fx.chain()
    assert tx.init(jnp.ones(2)) == ()
    out, state = tx.update(jnp.array([1.0, 2.0]), ())
    assert out.tolist() == [1.0, 2.0] and state == ()


def test_chain_rejects_a_foreign_state() -> None:
    tx = fx.chain(fx.identity(), fx.identity())
    with pytest.raises(ValueError, match=r"chain: state holds 1 entries but the chain has 2 "
                                         r"transforms; was the state made by this chain's init\?"):
        tx.update(jnp.ones(2), (fx.EmptyState(),))


def _run(tx: Any, apply: Any, params: Any, grads: list[Any]) -> Any:
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = apply(params, updates)
    return params


@pytest.mark.parametrize("outer", ["fx.chain", "optax.chain"])
@pytest.mark.parametrize("clip", ["fx", "optax"])
def test_mixed_chains_match_the_reference(outer: str, clip: str) -> None:
    """clip → rmsprop(weight_decay): params must reach the inner transform through the chain."""
    hyper = dict(lr=0.05, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True)
    max_norm = 1.0
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(6).astype(np.float32)
    grads = [3 * rng.standard_normal(6).astype(np.float32) for _ in range(5)]
    chain = fx.chain if outer == "fx.chain" else optax.chain
    clipper = fx.clip_by_global_norm(max_norm) if clip == "fx" else optax.clip_by_global_norm(
        max_norm)
    tx = chain(clipper, fx.rmsprop(**hyper))
    result = _run(tx, fx.apply_updates, jnp.asarray(w0), grads)
    history, _ = reference_run([w0], [[_clip_np(g.astype(np.float64), max_norm)] for g in grads],
                               **hyper)
    assert max_rel_error(result, history[-1][0]) <= RTOL_F32


def test_rmsprop_inside_optax_masked() -> None:
    """optax.masked hands rmsprop a tree with masked-out nodes; only 'w' is optimized."""
    params = {"w": jnp.array([1.0, -1.0]), "frozen": jnp.array([5.0])}
    grads = {"w": np.array([0.5, 2.0], np.float32), "frozen": np.array([9.0], np.float32)}
    tx = optax.masked(fx.rmsprop(lr=0.1, momentum=0.9), {"w": True, "frozen": False})
    result = _run(tx, optax.apply_updates, params, [grads, grads])
    history, _ = reference_run([np.array([1.0, -1.0])], [[grads["w"]]] * 2, lr=0.1, momentum=0.9)
    assert max_rel_error(result["w"], history[-1][0]) <= RTOL_F32
    # masked passes the frozen gradient through untouched: params + g.
    assert result["frozen"].tolist() == [5.0 + 9.0 + 9.0]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32],
                         ids=lambda d: jnp.dtype(d).name)
def test_apply_updates_adds_and_keeps_dtype(dtype: Any) -> None:
    params = {"a": jnp.array([1.0, 2.0], dtype), "b": (jnp.array(0.5, dtype),)}
    updates = {"a": jnp.array([0.25, -4.0], jnp.float32), "b": (jnp.array(0.125, jnp.float32),)}
    out = fx.apply_updates(params, updates)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    assert {x.dtype for x in jax.tree.leaves(out)} == {jnp.dtype(dtype)}
    assert out["a"].tolist() == [1.25, -2.0] and float(out["b"][0]) == 0.625


def test_apply_updates_complex_and_under_jit() -> None:
    params = jnp.array([1 + 1j, 2 - 1j], jnp.complex64)
    updates = jnp.array([0.5j, -1.0], jnp.complex64)
    out = jax.jit(fx.apply_updates)(params, updates)
    assert out.dtype == jnp.complex64
    assert out.tolist() == [1 + 1.5j, 1 - 1j]


def test_apply_updates_none_passes_through() -> None:
    params = {"w": jnp.ones(2), "frozen": None, "nested": [None, jnp.zeros(1)]}
    updates = {"w": jnp.ones(2), "frozen": None, "nested": [None, jnp.ones(1)]}
    out = fx.apply_updates(params, updates)
    assert out["frozen"] is None and out["nested"][0] is None
    assert out["w"].tolist() == [2.0, 2.0] and out["nested"][1].tolist() == [1.0]
