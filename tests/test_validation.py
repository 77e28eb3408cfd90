"""Tests of the boundary checks in ``lucid_fx._src.core.validation``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lucid_fx._src.core.validation import (
    check_hyperparameter,
    check_same_structure,
    concrete_value,
    is_static_zero,
)


@pytest.mark.parametrize("value, expected", [
    (0.5, 0.5), (3, 3), (np.float32(0.25), 0.25), (np.array(2.0), 2.0), (jnp.asarray(1.5), 1.5),
])
def test_concrete_value_of_numbers(value: Any, expected: float) -> None:
    assert concrete_value(value) == expected


def test_concrete_value_of_schedules_and_tracers_is_none() -> None:
    assert concrete_value(optax.constant_schedule(0.1)) is None
    seen = []
    jax.jit(lambda x: seen.append(concrete_value(x)) or x)(1.0)
    assert seen == [None]


def test_concrete_value_rejects_arrays() -> None:
    with pytest.raises(ValueError, match=r"expected a scalar hyper-parameter, got an array of "
                                         r"shape \(2,\)"):
        concrete_value(np.array([0.1, 0.2]))


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, np.float32(1.0), jnp.asarray(0.0)])
def test_check_hyperparameter_accepts_closed_interval(value: Any) -> None:
    check_hyperparameter("alpha", value, low=0.0, high=1.0)


@pytest.mark.parametrize("value, pattern", [
    (-1e-12, r"Invalid alpha value: -1e-12 \(expected a number in \[0\.0, 1\.0\]\)"),
    (1.0000001, r"Invalid alpha value: 1\.0000001 \(expected a number in \[0\.0, 1\.0\]\)"),
    (math.nan, r"Invalid alpha value: nan \(expected a number in \[0\.0, 1\.0\]\)"),
    (math.inf, r"Invalid alpha value: inf \(expected a number in \[0\.0, 1\.0\]\)"),
    (1j, r"Invalid alpha value: 1j \(expected a real number\)"),
    (True, r"Invalid alpha value: True \(expected a real number\)"),
])
def test_check_hyperparameter_rejects(value: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_hyperparameter("alpha", value, low=0.0, high=1.0)


def test_check_hyperparameter_without_upper_bound() -> None:
    check_hyperparameter("lr", 1e6)
    with pytest.raises(ValueError, match=r"Invalid lr value: -inf \(expected a number >= 0\.0\)"):
        check_hyperparameter("lr", -math.inf)


def test_traced_and_scheduled_values_are_not_checked() -> None:
    check_hyperparameter("lr", optax.constant_schedule(-1.0))
    out = jax.jit(lambda x: check_hyperparameter("lr", x) or x)(-1.0)
    assert float(out) == -1.0


@pytest.mark.parametrize("value, expected", [
    (0, True), (0.0, True), (-0.0, True), (np.float32(0), True), (np.array(0.0), True),
    (1e-30, False), (np.array(0.5), False), (False, False),
    # Any jax array may be replaced later (traced), so it never counts as a static zero.
    (jnp.asarray(0.0), False),
])
def test_is_static_zero(value: Any, expected: bool) -> None:
    assert is_static_zero(value) is expected


def test_is_static_zero_of_tracer_is_false() -> None:
    seen = []
    jax.jit(lambda x: seen.append(is_static_zero(x)) or x)(0.0)
    assert seen == [False]


_TREE = {"a": jnp.ones(2), "b": [jnp.ones(3), (jnp.ones(()), jnp.ones((2, 2)))]}


def test_same_structure_passes() -> None:
    check_same_structure(_TREE, jax.tree.map(np.zeros_like, _TREE), what="grads", against="state")


@pytest.mark.parametrize("given, pattern", [
    ({"a": jnp.ones(2), "c": [jnp.ones(3), (jnp.ones(()), jnp.ones((2, 2)))]},
     r"grads do not match state: first difference at \['c'\]\[0\] \(expected \['b'\]\[0\]\)"),
    ({"a": jnp.ones(2), "b": [jnp.ones(3), (jnp.ones(()),)]},
     r"grads do not match state: \['b'\]\[1\]\[1\] is missing from grads"),
    ({"a": jnp.ones(2), "b": [jnp.ones(3), (jnp.ones(()), jnp.ones((2, 2)), jnp.ones(1))]},
     r"grads do not match state: \['b'\]\[1\]\[2\] is unexpected in grads"),
    ({"a": jnp.ones(2), "b": [jnp.ones(3), (jnp.ones((1,)), jnp.ones((2, 2)))]},
     r"grads do not match state: \['b'\]\[1\]\[0\] has shape \(1,\), expected \(\)"),
    ({"a": jnp.ones(2), "b": [jnp.ones(3), [jnp.ones(()), jnp.ones((2, 2))]]},
     r"grads do not match state: tree structure differs \(expected PyTreeDef"),
])
def test_same_structure_names_the_first_mismatch(given: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_same_structure(_TREE, given, what="grads", against="state")


def test_same_structure_at_the_root() -> None:
    with pytest.raises(ValueError, match=r"grads do not match state: <root> has shape \(3,\), "
                                         r"expected \(2,\)"):
        check_same_structure(jnp.ones(2), jnp.ones(3), what="grads", against="state")
