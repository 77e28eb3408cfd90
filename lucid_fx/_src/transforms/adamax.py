"""Adamax (Adam with the infinity norm) as a pure gradient transform: torch's math, one kernel.

The per-element update is :func:`adamax_kernel`; :func:`adamax` wraps it in the
``init``/``update`` protocol with
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
    check_betas,
    check_hyperparameter,
)
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)
from lucid_fx._src.transforms.numerics import lerp, one_minus_power


@schema.declare(
    step=schema.step_count(),
    exp_avg=schema.buffer(),
    exp_inf=schema.buffer(never_negative="a maximum of |g| + eps"),
    skipped=schema.skipped_count(),
)
class AdamaxState(NamedTuple):
    """The state of :func:`adamax`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); t in the
        bias correction.
      exp_avg: m, the running average of g, one array per parameter.
      exp_inf: u, the decaying maximum of |g| + ε, one array per parameter.
        For a complex parameter it is complex, holding the maxima of |re(g)|
        and |im(g)| as its real and imaginary parts (torch's ``view_as_real``).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    exp_avg: Updates
    exp_inf: Updates
    skipped: jax.Array | None


def adamax_kernel(
    g: jax.Array,
    exp_avg: jax.Array,
    exp_inf: jax.Array,
    *,
    step: Any,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Adamax step for one real array: returns ``(term, m, u)``, the term added to θ.

    ``step`` is t, the number of this update (1 at the first), a scalar or an
    int array broadcastable against the array (one count per element, for
    parameters that joined later or skipped steps); it is used only in the bias
    correction. ``g`` is the gradient in the arithmetic's dtype, already decayed;
    hyper-parameters may be numbers, traced scalars or broadcastable arrays. The
    step goes on from the buffers as rounded to their dtypes (as torch does), in
    the order of operations of torch's single-tensor CPU path.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.adamax import adamax_kernel
      >>> term, m, u = adamax_kernel(
      ...     jnp.array([-2.0]), jnp.zeros(1), jnp.zeros(1), step=1, lr=0.1,
      ...     beta1=0.9, beta2=0.999, eps=0.0)
      >>> [round(x, 6) for x in (m[0].item(), u[0].item(), term[0].item())]  # η·sign(g)
      [-0.2, 2.0, 0.1]
    """
    compute = compute_dtype(g, exp_avg, exp_inf)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    # 1 - β₁ from β₁'s own precision: from a rounded β₁ it loses digits.
    one_minus_b1 = h(1 - beta1)
    new_m = lerp(exp_avg.astype(compute), g, one_minus_b1).astype(exp_avg.dtype)
    new_u = jnp.maximum(exp_inf.astype(compute) * h(beta2), jnp.abs(g) + h(eps)).astype(
        exp_inf.dtype
    )
    t = jnp.asarray(step).astype(real)
    step_size = h(lr) / one_minus_power(one_minus_b1, t)
    return (-step_size * new_m.astype(compute)) / new_u.astype(compute), new_m, new_u


@schema.makes(AdamaxState)
def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Adamax, exactly as ``torch.optim.Adamax``: Adam with the infinity norm.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        g   ← g + λ·θ                             (weight_decay λ ≠ 0: coupled L2)
        m_t  = β₁·m_{t-1} + (1-β₁)·g               (torch.lerp; m_0 = 0)
        u_t  = max(β₂·u_{t-1}, |g| + ε)            (u_0 = 0; ε inside the max)
        θ_t  = θ_{t-1} - (η / (1-β₁^t)) · m_t / u_t

    Args:
      lr: learning rate η (default 2e-3): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged.
      betas: (β₁, β₂), the decay rates of m and u (default (0.9, 0.999)), each
        in [0, 1).
      eps: ε added to |g| inside the maximum (default 1e-8).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, m, u and ``step`` kept, so the bias correction stays
        right) and counts into ``state.skipped`` (default False: non-finite
        values propagate, as in torch).
      state_dtype: dtype of m and u (default: each parameter's own). Each step
        goes on from the buffers as stored (rounded to this dtype), as torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`AdamaxState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``).

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``): u holds the maxima of |re(g)| and |im(g)| separately,
    not of |g|. With any lr — constant, scheduled, or changed between steps —
    this equals ``torch.optim.Adamax(foreach=False)`` step for step, to an ulp
    per operation in float32. optax's ``adamax`` is the same math for real
    parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import adamax
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = adamax(lr=0.1)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grad, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
      >>> for _ in range(200):
      ...     updates, state = update(grad(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), int(state.step)
      (True, 200)
    """
    check_hyperparameter("lr", lr)
    beta1, beta2 = check_betas(betas)
    check_hyperparameter("eps", eps)
    return kernel_transform(
        "adamax", AdamaxState, adamax_kernel,
        kernel_args=lambda state, t: dict(
            step=t, lr=scheduled(lr, state.step), beta1=beta1, beta2=beta2, eps=eps),
        weight_decay=WeightDecay(weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
