"""Checks at the boundary: hyper-parameter values and tree agreement.

Shared by the functional transforms and the stateful optimizers so that both
faces reject the same input with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import PyTree, Updates
from lucid_fx._src.core.scalars import PreciseScalar


def concrete_value(value: Any) -> float | complex | None:
    """The Python number behind ``value``, or ``None`` when it is traced or a schedule."""
    if isinstance(value, PreciseScalar):
        value = value.pair
        if isinstance(value, jax.core.Tracer):
            return None
        return float(value[0]) + float(value[1])
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"expected a scalar hyper-parameter, got an array of shape {array.shape}")
    return array.item()


def check_hyperparameter(
    name: str,
    value: Any,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    high_open: bool = False,
) -> None:
    """Raises ``ValueError`` naming ``name`` and ``value`` unless low <= value (<= high).

    NaN fails (as ``not low <= nan`` is True), and so does anything that is not
    a real number (None, a string, a bool, a complex). Traced values and
    schedules are not checked: their values are unknown until the step runs.
    ``low=None`` accepts any real number but NaN; ``high_open=True`` excludes
    ``high`` itself (torch's ``0 <= beta < 1``).

    Example:
      >>> check_hyperparameter("betas[0]", 1.0, high=1.0, high_open=True)
      Traceback (most recent call last):
      ...
      ValueError: Invalid betas[0] value: 1.0 (expected a number in [0.0, 1.0))
      >>> check_hyperparameter("dampening", -0.5, low=None)  # any real number
    """
    if callable(value) or isinstance(value, jax.core.Tracer) or (
            isinstance(value, PreciseScalar) and isinstance(value.pair, jax.core.Tracer)):
        return
    try:
        number = concrete_value(value)
    except ValueError as error:  # an array, or a ragged list
        raise ValueError(f"Invalid {name} value: {error}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        # ValueError, not TypeError: the contract is one error type for every bad value.
        message = f"Invalid {name} value: {value!r} (expected a real number)"
        raise ValueError(message)  # noqa: TRY004
    if low is None:
        if math.isnan(number):
            raise ValueError(f"Invalid {name} value: {value!r} (expected a real number)")
        low = -math.inf
    below_high = high is None or (number < high if high_open else number <= high)
    if not low <= number or not below_high:
        if high is not None and low == -math.inf:
            valid = f"{'<' if high_open else '<='} {high}"
        elif high is not None:
            valid = f"in [{low}, {high}{')' if high_open else ']'}"
        else:
            valid = f">= {low}"
        raise ValueError(f"Invalid {name} value: {value!r} (expected a number {valid})")


def check_flag(name: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is True or False.

    A flag decides structure, so a truthy stand-in (``"no"``, ``1``, an array)
    would silently switch a feature on, or fail deep inside a trace.
    """
    if not isinstance(value, (bool, np.bool_)):
        message = f"Invalid {name} value: {value!r} (expected True or False)"
        raise ValueError(message)  # noqa: TRY004


def check_float_dtype(name: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is None or a float/complex dtype."""
    if value is None:
        return
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
        raise ValueError(
            f"Invalid {name} value: {value!r} (expected None or a floating-point dtype)"
        )


def is_static_zero(value: Any) -> bool:
    """True when ``value`` is a plain Python/NumPy number equal to zero.

    Used to decide structure (is a buffer needed?) the same way in ``init`` and
    ``update``: any jax array, traced or not, counts as "may be non-zero".
    """
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return bool(value == 0)
    if isinstance(value, np.ndarray) and value.shape == ():
        return bool(value == 0)
    return False


def _path_name(path: tuple[Any, ...]) -> str:
    return "".join(str(k) for k in path) or "<root>"


def check_same_structure(expected: PyTree, given: PyTree, *, what: str, against: str,
                         shapes: bool = True) -> None:
    """Raises ``ValueError`` naming the first path where ``given`` differs from ``expected``.

    Both structure (keys, lengths, node types) and leaf shapes are compared, so a
    mismatch is reported in the user's terms instead of as an XLA shape error.
    ``shapes=False`` compares the structure alone, ``None`` counting as a leaf: for a
    state tree that is not shaped like the parameters (a row factor per matrix,
    ``None`` where a parameter has none).
    """
    none_leaf = None if shapes else (lambda x: x is None)
    expected_leaves, expected_def = jax.tree_util.tree_flatten_with_path(expected, none_leaf)
    given_leaves, given_def = jax.tree_util.tree_flatten_with_path(given, none_leaf)
    expected_def, given_def = cast(Any, expected_def), cast(Any, given_def)
    if expected_def != given_def:
        for (p_exp, _), (p_given, _) in zip(expected_leaves, given_leaves):
            if p_exp != p_given:
                raise ValueError(
                    f"{what} do not match {against}: first difference at "
                    f"{_path_name(p_given)} (expected {_path_name(p_exp)})"
                )
        longer, side = (
            (expected_leaves, "missing from " + what)
            if len(expected_leaves) > len(given_leaves)
            else (given_leaves, "unexpected in " + what)
        )
        common = min(len(expected_leaves), len(given_leaves))
        if len(expected_leaves) != len(given_leaves):
            raise ValueError(
                f"{what} do not match {against}: {_path_name(longer[common][0])} is {side}"
            )
        raise ValueError(
            f"{what} do not match {against}: tree structure differs "
            f"(expected {expected_def}, got {given_def})"
        )
    for (path, exp), (_, giv) in zip(expected_leaves, given_leaves):
        if shapes and np.shape(exp) != np.shape(giv):
            raise ValueError(
                f"{what} do not match {against}: {_path_name(path)} has shape "
                f"{np.shape(giv)}, expected {np.shape(exp)}"
            )


def check_betas(betas: Any) -> tuple[Any, Any]:
    """``(β₁, β₂)`` from ``betas``: a pair, each in [0, 1); ``ValueError`` naming it otherwise."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(
            f"Invalid betas value: {betas!r} (expected a pair (beta1, beta2), each in [0.0, 1.0))"
        )
    for i, beta in enumerate(betas):
        check_hyperparameter(f"betas[{i}]", beta, high=1.0, high_open=True)
    return betas[0], betas[1]


# ------------------------------------------------------------------ trees at init/update


def check_real_leaves(name: str, tree: PyTree) -> None:
    """Raises ``RuntimeError`` (torch's type) at the first complex leaf of ``tree``:
    ``name``'s math has no complex form.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.validation import check_real_leaves
      >>> check_real_leaves("Muon", {"w": jnp.zeros((2, 2), jnp.complex64)})
      Traceback (most recent call last):
      ...
      RuntimeError: Muon does not support complex parameters (['w'] is complex64): ...
    """
    def check(path: Any, leaf: Any) -> None:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            where = jax.tree_util.keystr(path) or "the parameter"
            raise RuntimeError(
                f"{name} does not support complex parameters ({where} is {dtype}): optimize "
                f"its real and imaginary parts as two real parameters, or use an optimizer "
                f"with a complex form (Adam, SGD, RMSprop, ...)"
            )

    jax.tree_util.tree_map_with_path(check, tree)


def check_float_leaves(name: str, tree: PyTree, *, what: str = "parameters") -> None:
    """Raises ``TypeError`` at the first leaf of ``tree`` that is not a float/complex array.

    ``name`` is the optimizer's (it starts the message); ``what`` names the
    tree ("parameters", "gradients").

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.validation import check_float_leaves
      >>> check_float_leaves("sgd", {"n": jnp.arange(2)})
      Traceback (most recent call last):
      ...
      TypeError: sgd optimizes floating-point parameters only; ['n'] has dtype int32. ...
    """

    def check(path: Any, leaf: Any) -> None:
        where = jax.tree_util.keystr(path) or f"the {what[:-1]}"
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            raise TypeError(
                f"{name}: {what} must be arrays; {where} is a {type(leaf).__name__}"
            ) from None
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name} optimizes floating-point {what} only; {where} has dtype {dtype}. "
                f"Cast it (e.g. x.astype(jnp.float32)) or leave it out of the optimized tree."
            )

    jax.tree_util.tree_map_with_path(check, tree)


def check_state(
    name: str,
    state: Any,
    state_type: type,
    *,
    always: Sequence[tuple[str, bool, str]] = (),
    per_parameter: Sequence[tuple[str, bool, str]] = (),
    has_parameters: Callable[[Any], bool] | bool = True,
) -> None:
    """Refuses a state made by another transform, or by this one with other flags.

    Each ``(field, used, flag)`` says that ``state.field`` must be present
    exactly when ``used``; otherwise a ``ValueError`` names the field and
    ``flag``, the argument that decides it. ``per_parameter`` fields are per
    parameter trees, which are ``None`` for an empty tree of parameters, so
    they are checked only when ``has_parameters`` (a bool, or a function of the
    state, called once the state is known to be a ``state_type``).

    Example:
      >>> from typing import NamedTuple
      >>> from lucid_fx._src.core.validation import check_state
      >>> class State(NamedTuple):
      ...     buffer: object
      >>> check_state("sgd", State(None), State, per_parameter=[("buffer", True, "momentum")])
      Traceback (most recent call last):
      ...
      ValueError: sgd: the state lacks buffer, so it was made by an sgd with a different ...
    """
    if not isinstance(state, state_type):
        raise TypeError(
            f"{name}: state must be the {state_type.__name__} made by this transform's init, "
            f"got {type(state).__name__}"
        )
    if callable(has_parameters):
        has_parameters = has_parameters(state)
    checks = list(always) + (list(per_parameter) if has_parameters else [])
    for field, used, flag in checks:
        if (getattr(state, field) is not None) != used:
            raise ValueError(
                f"{name}: the state {'lacks' if used else 'has'} {field}, so it was made by "
                f"an {name} with a different {flag}; make it with this transform's init"
            )


def check_update_trees(
    name: str,
    structure: PyTree | None,
    updates: Updates,
    params: PyTree | None,
    *,
    needs_params: str | None = None,
    stateless: bool = False,
    shapes: bool = True,
) -> None:
    """Checks the gradients (and the parameters, when needed) before an update.

    ``structure`` is a per-parameter tree of the state; the gradients and
    parameters must match it (paths and shapes). A transform that keeps no
    per-parameter state (plain SGD) passes ``stateless=True``: the gradients
    then set the structure the parameters must match; ``shapes=False`` for a state
    tree not shaped like the parameters (see :func:`check_same_structure`).
    ``needs_params`` is the reason ``params`` must be given (for instance
    ``"weight_decay is non-zero"``), or ``None`` when they are optional.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.validation import check_update_trees
      >>> g = {"w": jnp.ones(2)}
      >>> check_update_trees("sgd", g, g, None, needs_params="weight_decay is non-zero")
      Traceback (most recent call last):
      ...
      ValueError: sgd: weight_decay is non-zero, so update() needs params: ...
    """
    if not stateless:
        check_same_structure(structure, updates, what="gradients", against="the state",
                             shapes=shapes)
    check_float_leaves(name, updates, what="gradients")
    if needs_params is not None:
        if params is None:
            raise ValueError(
                f"{name}: {needs_params}, so update() needs params: "
                "call tx.update(grads, state, params)"
            )
        against, what = (updates, "the gradients") if stateless else (structure, "the state")
        check_same_structure(against, params, what="params", against=what,
                             shapes=shapes or stateless)
