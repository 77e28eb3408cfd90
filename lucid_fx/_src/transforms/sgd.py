"""SGD (with momentum, dampening and Nesterov) as a pure gradient transform: torch's math.

The per-element update is :func:`sgd_kernel`; :func:`sgd` wraps it in the
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
from lucid_fx._src.core.validation import check_flag, check_hyperparameter, concrete_value
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)


@schema.declare(
    step=schema.step_count(torch_key=False),
    momentum_buffer=schema.buffer(switch="momentum"),
    skipped=schema.skipped_count(),
)
class SGDState(NamedTuple):
    """The state of :func:`sgd`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first). torch keeps
        none for SGD; here it feeds ``lr`` schedules and the first-step rule.
      momentum_buffer: b, one array per parameter, when momentum is in use,
        else ``None``.
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    momentum_buffer: Updates | None
    skipped: jax.Array | None


def sgd_kernel(
    g: jax.Array,
    momentum_buffer: jax.Array | None,
    *,
    step: Any,
    lr: Any,
    momentum: Any,
    dampening: Any,
    nesterov: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """One SGD step for one real array: returns ``(-η·g', b)``, the term added to θ.

    ``g`` is the gradient in the arithmetic's dtype, already decayed. ``step`` is
    t, the number of this update (1 at the first), a scalar or an int array
    broadcastable against the array (one count per element): where t = 1 the
    buffer starts as ``b = g``, as torch starts it. A ``momentum_buffer`` of
    ``None`` switches momentum off. Hyper-parameters may be numbers, traced
    scalars or broadcastable arrays. The step goes on from the buffer as rounded
    to its dtype (as torch does).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.sgd import sgd_kernel
      >>> term, b = sgd_kernel(jnp.array([2.0]), jnp.array([1.0]), step=2, lr=0.1,
      ...                      momentum=0.5, dampening=0.0, nesterov=False)
      >>> b.tolist(), term.tolist()   # b = 0.5·1 + 2 = 2.5, term = -0.1·2.5
      ([2.5], [-0.25])
    """
    compute = compute_dtype(g, momentum_buffer)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    new_buffer = None
    if momentum_buffer is not None:
        mu = h(momentum)
        # 1 - τ from τ's own precision (a Python float: exact, then rounded once).
        running = h(1 - dampening) * g + mu * momentum_buffer.astype(compute)
        first = jnp.asarray(step) == 1
        new_buffer = jnp.where(first, g, running).astype(momentum_buffer.dtype)
        b = new_buffer.astype(compute)
        g = g + mu * b if nesterov else b
    return -h(lr) * g, new_buffer


@schema.makes(SGDState)
def sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: float = 0,
    dampening: float = 0,
    weight_decay: float = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent with torch's momentum, exactly as ``torch.optim.SGD``.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        g   ← g + λ·θ                             (weight_decay λ ≠ 0: coupled L2)
        μ ≠ 0:  b_1 = g                           (the first step: no dampening)
                b_t = μ·b_{t-1} + (1-τ)·g          (t > 1)
                nesterov:  g ← g + μ·b_t
                otherwise: g ← b_t
        θ_t  = θ_{t-1} - η·g

    Args:
      lr: learning rate η (default 1e-3, torch 2.13's): a number, a 0-d array,
        or a schedule ``count -> η`` called with the int32 step count (0 at the
        first update); optax schedules work unchanged. η multiplies at the end,
        outside the buffer, as in torch, so a changing η matches torch too.
      momentum: momentum factor μ (default 0). A plain 0 allocates no buffer;
        any jax array, even 0, allocates one (structure is fixed at construction),
        and then follows the formula above (b_t = (1-τ)·g for μ = 0).
      dampening: dampening τ of the momentum (default 0); any real number, as
        in torch. Not applied on the first step.
      weight_decay: L2 coefficient λ added to the gradient (default 0); needs
        ``params`` in ``update``.
      nesterov: Nesterov momentum (default False); needs momentum > 0 and
        dampening = 0, as torch requires.
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, the buffer and ``step`` kept) and counts into
        ``state.skipped`` (default False: non-finite values propagate, as in torch).
      state_dtype: dtype of b (default: each parameter's own). The step goes
        on from b as stored (rounded to this dtype), as torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`SGDState`.
      ``update`` returns deltas ``-η·g`` to add to the parameters (``apply_updates``).

    Complex parameters are updated as pairs of reals (the same numbers as
    complex arithmetic with real η, μ, τ, λ). Under ``jax.jit`` XLA fuses
    multiply-adds into single-rounding FMAs where torch's CPU kernels sometimes
    round twice, so float32 results agree with torch to an ulp per operation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import sgd
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = sgd(lr=0.1, momentum=0.9, nesterov=True)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), state.momentum_buffer["w"].shape
      (True, (3,))
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("momentum", momentum)
    check_hyperparameter("dampening", dampening, low=None)
    check_flag("nesterov", nesterov)
    if nesterov:
        mu, tau = concrete_value(momentum), concrete_value(dampening)
        if (mu is not None and mu <= 0) or (tau is not None and tau != 0):  # type: ignore[operator]
            raise ValueError(
                f"Invalid nesterov value: True (Nesterov momentum needs momentum > 0 and "
                f"dampening = 0; got momentum={momentum!r}, dampening={dampening!r})"
            )
    return kernel_transform(
        "sgd", SGDState, sgd_kernel,
        kernel_args=lambda state, t: dict(
            step=t, lr=scheduled(lr, state.step), momentum=momentum, dampening=dampening,
            nesterov=nesterov),
        switches={"momentum": momentum}, weight_decay=WeightDecay(weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
