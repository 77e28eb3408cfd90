"""RMSprop as a pure gradient transform: Lucid's documented RMSprop (docs/optimizers.md), written once.

The per-element update lives in :func:`rmsprop_kernel`, one function that
returns every new buffer, so XLA fuses each leaf's update into a single pass
over memory. :func:`rmsprop` wraps it in the ``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize`` and the weight decay); the stateful
:class:`lucid_fx.RMSprop` calls the same factory.
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
from lucid_fx._src.core.validation import check_flag, check_hyperparameter
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)


@schema.declare(
    step=schema.step_count(),
    square_avg=schema.buffer(real=True, never_negative="an average of squares"),
    grad_avg=schema.buffer(switch="centered"),
    # The page's b holds η (b = η·b_torch): torch's buffer converts by each group's lr.
    momentum_buffer=schema.buffer(switch="momentum", torch_factor="lr"),
    skipped=schema.skipped_count(),
)
class RMSpropState(NamedTuple):
    """The state of :func:`rmsprop`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first).
      square_avg: v, the running average of |g|², one array per parameter (real).
      grad_avg: ḡ, the running average of g when ``centered``, else ``None``.
      momentum_buffer: b when momentum is in use, else ``None``.
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    square_avg: Updates
    grad_avg: Updates | None
    momentum_buffer: Updates | None
    skipped: jax.Array | None


def rmsprop_kernel(
    g: jax.Array,
    square_avg: jax.Array,
    grad_avg: jax.Array | None,
    momentum_buffer: jax.Array | None,
    *,
    lr: Any,
    alpha: Any,
    eps: Any,
    momentum: Any,
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """One RMSprop step for one array: returns ``(term, v, ḡ, b)``, the term added to θ.

    ``g`` is the gradient in the arithmetic's dtype, already decayed. A
    ``grad_avg`` or ``momentum_buffer`` of ``None`` switches centering or
    momentum off. The step uses the new buffers as rounded to their dtypes.
    """
    compute = compute_dtype(g, square_avg, grad_avg)
    real = real_dtype(compute)  # complex64 -> float32, and so on
    h = lambda x: cast_scalar(x, real)
    # 1 - α from α's own precision: from a rounded α it loses digits (α = 0.999 in float32).
    a, one_minus_a = h(alpha), h(1 - alpha)
    # Each new buffer is rounded to its stored dtype first and the step goes on
    # from the stored value (as torch does): then every output loop reads only
    # the old state, which donation may overwrite, and needs no defensive copy.
    new_v = (a * square_avg.astype(real) + one_minus_a * jnp.real(g * jnp.conj(g))).astype(
        square_avg.dtype
    )
    v = new_v.astype(real)
    if grad_avg is not None:
        new_grad_avg = (a * grad_avg.astype(compute) + one_minus_a * g).astype(grad_avg.dtype)
        gbar = new_grad_avg.astype(compute)
        # Rounding can push v - |ḡ|² below 0; torch and optax then return NaN.
        variance = jnp.maximum(v - jnp.real(gbar * jnp.conj(gbar)), 0)
        denom = jnp.sqrt(variance) + h(eps)
    else:
        denom = jnp.sqrt(v) + h(eps)
        new_grad_avg = None
    scaled = h(lr) * g / denom
    if momentum_buffer is not None:
        new_buffer = (h(momentum) * momentum_buffer.astype(compute) + scaled).astype(
            momentum_buffer.dtype
        )
        term = -new_buffer.astype(compute)
    else:
        term = -scaled
        new_buffer = None
    return term, new_v, new_grad_avg, new_buffer


@schema.makes(RMSpropState)
def rmsprop(
    lr: ScalarOrSchedule = 0.01,
    alpha: float = 0.99,
    eps: float = 1e-08,
    weight_decay: float = 0,
    momentum: float = 0,
    centered: bool = False,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Root Mean Square Propagation, exactly as the ``lucid.optim.RMSprop`` page defines it.

    Per element, with gradient g, parameter θ and step t::

        g   ← -g                                  (maximize only)
        g   ← g + λ·θ                             (weight_decay λ ≠ 0: coupled L2)
        v_t  = α·v_{t-1} + (1-α)·|g|²              (v_0 = 0)
        centered:  ḡ_t = α·ḡ_{t-1} + (1-α)·g       (ḡ_0 = 0)
                   d = sqrt(max(v_t - |ḡ_t|², 0)) + ε
        otherwise: d = sqrt(v_t) + ε               (ε outside the square root)
        μ = 0:     θ_t = θ_{t-1} - η·g/d
        μ > 0:     b_t = μ·b_{t-1} + η·g/d         (b_0 = 0; η inside the buffer)
                   θ_t = θ_{t-1} - b_t

    Args:
      lr: learning rate η (default 0.01): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first update);
        optax schedules work unchanged.
      alpha: smoothing constant α of the running averages (default 0.99), in [0, 1].
      eps: ε added to the denominator, outside the square root (default 1e-8).
      weight_decay: L2 coefficient λ added to the gradient (default 0); needs
        ``params`` in ``update``.
      momentum: momentum factor μ (default 0). A plain 0 allocates no buffer;
        any jax array, even 0, allocates one (structure is fixed at construction).
      centered: divide by the estimated standard deviation of g instead of the
        root mean square (default False). ``max(·, 0)`` guards against rounding.
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, every buffer and ``step`` kept) and counts into
        ``state.skipped`` (default False: non-finite values propagate, as in torch).
      state_dtype: dtype of v, ḡ and b (default: each parameter's own). Each step
        continues from the buffers as stored (rounded to this dtype), as torch
        does. For bfloat16 parameters, ``jnp.float32`` keeps v accurate: a
        bfloat16 v cannot resolve the (1-α) = 1% change of a step.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`RMSpropState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``).

    .. warning::
       With a constant lr this equals ``torch.optim.RMSprop`` step for step.
       When lr changes over time (a schedule, or a new ``param_groups`` lr), the
       momentum buffer carries η from earlier steps, as Lucid's definition writes it;
       torch keeps η out of its buffer and multiplies it at the end. optax's
       ``rmsprop`` matches only with ``eps_in_sqrt=False`` (its default puts ε
       inside the square root) and its own ``add_decayed_weights`` first.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = fx.rmsprop(lr=0.1)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = fx.apply_updates(params, updates)
      >>> bool(loss(params) < 0.1)
      True
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("alpha", alpha, high=1.0)
    check_hyperparameter("eps", eps)
    check_hyperparameter("momentum", momentum)
    check_flag("centered", centered)
    return kernel_transform(
        "rmsprop", RMSpropState, rmsprop_kernel,
        kernel_args=lambda state, t: dict(
            lr=scheduled(lr, state.step), alpha=alpha, eps=eps, momentum=momentum),
        switches={"centered": centered, "momentum": momentum},
        weight_decay=WeightDecay(weight_decay), complex_parts=False,  # |g|², as the page
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
