"""Adadelta as a pure gradient transform: torch's math, one kernel.

The per-element update is :func:`adadelta_kernel`; :func:`adadelta` wraps it in
the ``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform`, which also
applies ``maximize`` and the weight decay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Updates,
)
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype, real_dtype
from lucid_fx._src.core.validation import (
    check_hyperparameter,
)
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)


@schema.declare(
    step=schema.step_count(),
    square_avg=schema.buffer(never_negative="an average of squares"),
    acc_delta=schema.buffer(never_negative="an average of squares"),
    skipped=schema.skipped_count(),
)
class AdadeltaState(NamedTuple):
    """The state of :func:`adadelta`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first).
      square_avg: v, the running average of g², one array per parameter.
      acc_delta: u, the running average of Δx², one array per parameter.
        For a complex parameter both are complex, holding the averages of the
        real and of the imaginary parts separately (torch's ``view_as_real``).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    square_avg: Updates
    acc_delta: Updates
    skipped: jax.Array | None


def adadelta_kernel(
    g: jax.Array,
    square_avg: jax.Array,
    acc_delta: jax.Array,
    *,
    lr: Any,
    rho: Any,
    eps: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Adadelta step for one real array: returns ``(term, v, u)``, the term added to θ.

    ``g`` is the gradient in the arithmetic's dtype, already decayed;
    hyper-parameters may be numbers, traced scalars or broadcastable arrays. The
    step goes on from the buffers as rounded to their dtypes (as torch does), in
    the order of operations of torch's single-tensor CPU path.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.adadelta import adadelta_kernel
      >>> term, v, u = adadelta_kernel(jnp.array([2.0]), jnp.zeros(1), jnp.array([4.0]),
      ...                              lr=0.5, rho=0.0, eps=0.0)
      >>> v.tolist(), u.tolist(), term.tolist()   # Δx = sqrt(4)/sqrt(4)·2; θ moves by -η·Δx
      ([4.0], [4.0], [-1.0])
    """
    compute = compute_dtype(g, square_avg, acc_delta)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    # 1 - ρ from ρ's own precision (a Python float: exact, then rounded once).
    rho_c, one_minus_rho = h(rho), h(1 - rho)
    # (1-ρ)·g·g + ρ·v: written in this order XLA fuses the add into the product,
    # as torch's addcmul does.
    new_v = ((one_minus_rho * g) * g + rho_c * square_avg.astype(compute)).astype(
        square_avg.dtype
    )
    std = jnp.sqrt(new_v.astype(compute) + h(eps))
    u = acc_delta.astype(compute)
    dx = jnp.sqrt(u + h(eps)) / std * g
    new_u = ((one_minus_rho * dx) * dx + rho_c * u).astype(acc_delta.dtype)
    return -h(lr) * dx, new_v, new_u


@schema.makes(AdadeltaState)
def adadelta(
    lr: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Adadelta, exactly as ``torch.optim.Adadelta``.

    Per element, with gradient g and parameter θ::

        g   ← -g                                  (maximize only)
        g   ← g + λ·θ                             (weight_decay λ ≠ 0: coupled L2)
        v_t  = ρ·v_{t-1} + (1-ρ)·g²                (v_0 = 0)
        Δx   = sqrt(u_{t-1} + ε) / sqrt(v_t + ε) · g   (ε inside both square roots)
        u_t  = ρ·u_{t-1} + (1-ρ)·Δx²               (u_0 = 0)
        θ_t  = θ_{t-1} - η·Δx                      (η scales the step, outside u)

    Args:
      lr: η, the factor applied to Δx before it reaches θ (default 1.0): a
        number, a 0-d array, or a schedule ``count -> η`` called with the int32
        step count (0 at the first update); optax schedules work unchanged. η
        never enters v or u, so a changing η matches torch too.
      rho: ρ, the decay rate of both running averages (default 0.9), in [0, 1].
      eps: ε added inside both square roots (default 1e-6).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, v, u and ``step`` kept) and counts into
        ``state.skipped`` (default False: non-finite values propagate, as in torch).
      state_dtype: dtype of v and u (default: each parameter's own). Each step
        goes on from the buffers as stored (rounded to this dtype), as torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`AdadeltaState`.
      ``update`` returns deltas ``-η·Δx`` to add to the parameters (``apply_updates``).

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``): v and u hold the averages of the real and of the
    imaginary parts separately. With any lr this equals
    ``torch.optim.Adadelta(foreach=False)`` step for step, to an ulp per
    operation in float32 (XLA fuses some multiply-adds into FMAs). optax's
    ``adadelta`` is the same method, with η as a multiplier of its update too.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import adadelta
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = adadelta(lr=1.0, eps=1e-2)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grad, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
      >>> for _ in range(300):
      ...     updates, state = update(grad(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-2), int(state.step)
      (True, 300)
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("rho", rho, high=1.0)
    check_hyperparameter("eps", eps)
    return kernel_transform(
        "adadelta", AdadeltaState, adadelta_kernel,
        kernel_args=lambda state, t: dict(lr=scheduled(lr, state.step), rho=rho, eps=eps),
        weight_decay=WeightDecay(weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
