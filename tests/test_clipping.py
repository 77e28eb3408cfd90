"""Tests of ``lucid_fx._src.transforms.clipping`` against NumPy float64 arithmetic."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import lucid_fx as fx

RTOL_F32 = 1e-6  # a norm and one scaling in float32: a few roundings


def _tree(rng: np.random.Generator, scale: float = 1.0) -> dict[str, Any]:
    return {
        "a": (scale * rng.standard_normal((3, 2))).astype(np.float32),
        "b": [(scale * rng.standard_normal(4)).astype(np.float32), np.zeros((0,), np.float32)],
        "c": np.float32(scale * rng.standard_normal()),
    }


def _norm64(tree: Any) -> float:
    leaves = [np.asarray(x).astype(np.complex128).ravel() for x in jax.tree.leaves(tree)]
    return float(np.sqrt(sum(np.sum(np.abs(x) ** 2) for x in leaves)))


def test_global_norm_matches_numpy() -> None:
    tree = _tree(np.random.default_rng(0))
    assert math.isclose(float(fx.global_norm(tree)), _norm64(tree), rel_tol=RTOL_F32)


def test_global_norm_complex_uses_modulus() -> None:
    tree = {"z": jnp.array([3 + 4j, 1j], jnp.complex64), "x": jnp.array([2.0])}
    norm = fx.global_norm(tree)
    assert norm.dtype == jnp.float32
    assert math.isclose(float(norm), math.sqrt(25 + 1 + 4), rel_tol=RTOL_F32)


def test_global_norm_of_empty_and_none_trees_is_zero() -> None:
    assert float(fx.global_norm({})) == 0.0
    assert float(fx.global_norm({"frozen": None})) == 0.0
    assert float(fx.global_norm({"w": jnp.array([3.0, 4.0]), "frozen": None})) == 5.0


@pytest.mark.parametrize("scale", [0.1, 10.0], ids=["below", "above"])
def test_clip_by_global_norm_matches_numpy(scale: float) -> None:
    max_norm = 2.0
    tree = _tree(np.random.default_rng(1), scale)
    tx = fx.clip_by_global_norm(max_norm)
    out, state = jax.jit(tx.update)(tree, tx.init(None))
    norm = _norm64(tree)
    factor = min(1.0, max_norm / norm)
    assert (norm > max_norm) == (scale == 10.0)
    for actual, leaf in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        expected = np.asarray(leaf, np.float64) * factor
        np.testing.assert_allclose(actual, expected, rtol=RTOL_F32, atol=0)
        assert actual.dtype == leaf.dtype
    assert state == fx.EmptyState()


def test_clip_zero_tree_stays_zero_without_nan() -> None:
    tx = fx.clip_by_global_norm(1.0)
    out, _ = tx.update({"a": jnp.zeros(3), "b": jnp.zeros(())}, tx.init(None))
    assert all(np.array_equal(x, np.zeros_like(x)) for x in jax.tree.leaves(out))


def test_clip_with_max_norm_zero_gives_zeros() -> None:
    tx = fx.clip_by_global_norm(0.0)
    out, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(None))
    assert out.tolist() == [0.0, 0.0]


def test_clip_complex_scales_by_modulus_and_keeps_dtype() -> None:
    tx = fx.clip_by_global_norm(1.0)
    z = jnp.array([3 + 4j, 0j], jnp.complex64)  # norm 5
    out, _ = tx.update(z, tx.init(None))
    assert out.dtype == jnp.complex64
    np.testing.assert_allclose(out, [0.6 + 0.8j, 0j], rtol=RTOL_F32)


def test_clip_keeps_bfloat16_and_none_leaves() -> None:
    tx = fx.clip_by_global_norm(1.0)
    out, _ = tx.update({"w": jnp.array([3.0, 4.0], jnp.bfloat16), "frozen": None}, tx.init(None))
    assert out["frozen"] is None and out["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["w"].astype(jnp.float32), [0.6, 0.8], rtol=2**-7)


# Magnitudes where float32 squares neither underflow nor overflow.
_values = st.floats(-1e3, 1e3, width=32).filter(lambda x: x == 0 or abs(x) >= 1e-3)


@given(
    values=st.lists(_values, min_size=1, max_size=8),
    max_norm=st.just(0.0) | st.floats(1e-3, 100.0),
)
def test_property_clipped_norm_is_min_of_norm_and_max(values: list[float], max_norm: float) -> None:
    g = np.asarray(values, np.float32)
    tx = fx.clip_by_global_norm(max_norm)
    out, _ = tx.update(jnp.asarray(g), tx.init(None))
    norm = float(np.linalg.norm(g.astype(np.float64)))
    assert math.isclose(_norm64(out), min(norm, max_norm), rel_tol=RTOL_F32)
    # Direction kept: out is a non-negative multiple of g.
    assert np.all(np.asarray(out) * g >= 0)


@pytest.mark.parametrize("max_norm, shown", [(-1.0, "-1.0"), (math.nan, "nan")])
def test_invalid_max_norm_raises(max_norm: float, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"Invalid max_norm value: {shown} "
                                         r"\(expected a number >= 0\.0\)"):
        fx.clip_by_global_norm(max_norm)
