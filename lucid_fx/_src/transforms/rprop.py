"""Rprop (resilient backpropagation) as a pure gradient transform: torch's math, one kernel.

The per-element update is :func:`rprop_kernel`; :func:`rprop` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, Updates
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype, real_dtype
from lucid_fx._src.core.validation import check_hyperparameter, concrete_value
from lucid_fx._src.transforms.kernel_transform import kernel_transform


@schema.declare(
    step=schema.step_count(),
    prev=schema.buffer(),
    step_size=schema.buffer(never_negative="a step size"),
    skipped=schema.skipped_count(),
)
class RpropState(NamedTuple):
    """The state of :func:`rprop`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first).
      prev: the previous step's gradient (0 where its sign flipped), one array
        per parameter.
      step_size: each element's own step size, starting at ``lr``, one array
        per parameter. For a complex parameter both are complex, the real and
        imaginary parts going their own ways (torch's ``view_as_real``).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    prev: Updates
    step_size: Updates
    skipped: jax.Array | None


def rprop_kernel(
    g: jax.Array,
    prev: jax.Array,
    step_size: jax.Array,
    *,
    etaminus: Any,
    etaplus: Any,
    step_size_min: Any,
    step_size_max: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Rprop step for one real array: returns ``(term, prev, step_size)``, the term
    added to θ.

    ``g`` is the gradient in the arithmetic's dtype. Hyper-parameters may be
    numbers, traced scalars or broadcastable arrays. The step goes on from the
    buffers as rounded to their dtypes (as torch does). The sign is that of the
    product g·prev as computed (an underflow to 0 counts as 0, as in torch), and
    a NaN there propagates into the step size and θ.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.rprop import rprop_kernel
      >>> term, prev, size = rprop_kernel(
      ...     jnp.array([1.0, -1.0, 2.0]), jnp.array([1.0, 1.0, 0.0]), jnp.full(3, 0.125),
      ...     etaminus=0.5, etaplus=2.0, step_size_min=0.0, step_size_max=1.0)
      >>> size.tolist(), prev.tolist(), term.tolist()   # same sign, flipped, no history
      ([0.25, 0.0625, 0.125], [1.0, 0.0, 2.0], [-0.25, -0.0, -0.125])
    """
    compute = compute_dtype(g, prev, step_size)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    sign = jnp.sign(g * prev.astype(compute))
    # +1 → η₊, -1 → η₋, 0 → 1; NaN stays NaN (matches none of the three).
    factor = jnp.where(sign > 0, h(etaplus), jnp.where(sign < 0, h(etaminus),
                                                       jnp.where(sign == 0, 1, sign)))
    new_size = jnp.minimum(jnp.maximum(step_size.astype(compute) * factor, h(step_size_min)),
                           h(step_size_max)).astype(step_size.dtype)
    g = jnp.where(sign < 0, 0, g)  # after a sign flip: no move now, no history next
    return -(jnp.sign(g) * new_size.astype(compute)), g.astype(prev.dtype), new_size


def _check_pair(name: str, value: Any, expected: str) -> tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"Invalid {name} value: {value!r} (expected a pair {expected})")
    return value[0], value[1]


def _check_etas(etas: Any) -> tuple[Any, Any]:
    """(η₋, η₊) with 0 < η₋ < 1 < η₊, torch's rule; traced values are not checked."""
    etaminus, etaplus = _check_pair("etas", etas, "(etaminus, etaplus), 0 < etaminus < 1 < etaplus")
    check_hyperparameter("etas[0]", etaminus, low=None)  # a real number, not NaN
    check_hyperparameter("etas[1]", etaplus, low=None)
    low, high = concrete_value(etaminus), concrete_value(etaplus)
    if low is not None and not 0.0 < low < 1.0:  # type: ignore[operator]
        raise ValueError(f"Invalid etas[0] value: {etaminus!r} (expected a number in (0.0, 1.0))")
    if high is not None and not high > 1.0:  # type: ignore[operator]
        raise ValueError(f"Invalid etas[1] value: {etaplus!r} (expected a number > 1.0)")
    return etaminus, etaplus


def _check_step_sizes(step_sizes: Any) -> tuple[Any, Any]:
    """(Γ_min, Γ_max) with 0 <= Γ_min <= Γ_max; traced values are not checked."""
    smallest, largest = _check_pair("step_sizes", step_sizes, "(min, max), 0 <= min <= max")
    check_hyperparameter("step_sizes[0]", smallest)
    check_hyperparameter("step_sizes[1]", largest)
    low, high = concrete_value(smallest), concrete_value(largest)
    if low is not None and high is not None and not low <= high:  # type: ignore[operator]
        raise ValueError(
            f"Invalid step_sizes value: {tuple(step_sizes)!r} (expected min <= max)"
        )
    return smallest, largest


@schema.makes(RpropState)
def rprop(
    lr: Any = 1e-2,
    etas: tuple[Any, Any] = (0.5, 1.2),
    step_sizes: tuple[Any, Any] = (1e-6, 50),
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Rprop, exactly as ``torch.optim.Rprop``: a step size per element, moved by signs.

    Per element, with gradient g, previous gradient g_prev and step size s::

        g   ← -g                                  (maximize only)
        g·g_prev > 0:  s ← min(s·η₊, Γ_max)        (same sign: grow)
        g·g_prev < 0:  s ← max(s·η₋, Γ_min);  g ← 0   (flipped: shrink, wait a step)
        otherwise:     s unchanged
        θ_t    = θ_{t-1} - s·sign(g)
        g_prev ← g                                (s_0 = lr, g_prev,0 = 0)

    Args:
      lr: the initial step size s_0 (default 1e-2), a number; it is used by
        ``init`` only, so a schedule has no meaning and is refused.
      etas: (η₋, η₊), the factors that shrink and grow s (default (0.5, 1.2)),
        with 0 < η₋ < 1 < η₊.
      step_sizes: (Γ_min, Γ_max), the bounds of s (default (1e-6, 50)), with
        0 <= Γ_min <= Γ_max (torch does not check these; a reversed pair would
        clamp every s to Γ_max).
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, g_prev, s and ``step`` kept) and counts into
        ``state.skipped`` (default False: non-finite values propagate, as in torch).
      state_dtype: dtype of g_prev and s (default: each parameter's own). Each
        step goes on from the buffers as stored (rounded to this dtype), as
        torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`RpropState`.
      ``update`` returns deltas ``-s·sign(g)`` to add to the parameters
      (``apply_updates``); it needs no ``params``.

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``): the real and imaginary parts have their own signs and
    step sizes, both starting at lr. This equals
    ``torch.optim.Rprop(foreach=False)`` step for step. optax's ``rprop``
    keeps the signed steps instead of the gradients: another variant.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import rprop
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = rprop(lr=0.1)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grad, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
      >>> for _ in range(100):
      ...     updates, state = update(grad(params), state)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), int(state.step)
      (True, 100)
    """
    if callable(lr):
        # ValueError, not TypeError: the contract is one error type for every bad value.
        raise ValueError(  # noqa: TRY004
            f"Invalid lr value: {lr!r} (rprop uses lr only as the initial step size, "
            f"in init: pass a number, not a schedule)"
        )
    check_hyperparameter("lr", lr)
    etaminus, etaplus = _check_etas(etas)
    step_size_min, step_size_max = _check_step_sizes(step_sizes)
    return kernel_transform(
        "rprop", RpropState, rprop_kernel,
        kernel_args=lambda state, t: dict(
            etaminus=etaminus, etaplus=etaplus,
            step_size_min=step_size_min, step_size_max=step_size_max),
        initial={"step_size": lr},  # s_0 = lr, per element
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
