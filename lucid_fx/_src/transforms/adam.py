"""Adam and AdamW as pure gradient transforms: torch's math, one kernel for both.

The per-element update is :func:`adam_kernel`; :func:`adam` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize`` and the weight decay), and :func:`adamw` is :func:`adam` with
``decoupled_weight_decay=True``.
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
from lucid_fx._src.core.validation import check_betas, check_flag, check_hyperparameter
from lucid_fx._src.transforms.kernel_transform import WeightDecay, kernel_transform, scheduled
from lucid_fx._src.transforms.numerics import lerp, one_minus_power


@schema.declare(
    step=schema.step_count(),
    exp_avg=schema.buffer(),
    exp_avg_sq=schema.buffer(),
    max_exp_avg_sq=schema.buffer(switch="amsgrad"),
    skipped=schema.skipped_count(),
)
class AdamState(NamedTuple):
    """The state of :func:`adam` and :func:`adamw`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); t in the
        bias corrections.
      exp_avg: m, the running average of g, one array per parameter.
      exp_avg_sq: v, the running average of g², one array per parameter. For
        a complex parameter it is complex, holding the averages of re(g)² and
        im(g)² as its real and imaginary parts (torch's ``view_as_real`` layout).
      max_exp_avg_sq: the running maximum of v when ``amsgrad``, else ``None``.
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    exp_avg: Updates
    exp_avg_sq: Updates
    max_exp_avg_sq: Updates | None
    skipped: jax.Array | None


def adam_kernel(
    g: jax.Array,
    exp_avg: jax.Array,
    exp_avg_sq: jax.Array,
    max_exp_avg_sq: jax.Array | None,
    *,
    step: Any,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """One Adam step for one real array: returns ``(term, m, v, v_max)``, the term added to θ.

    ``g`` is the gradient in the arithmetic's dtype, already decayed (coupled).
    ``step`` is t, the number of this update (1 at the first), a scalar or an
    int array broadcastable against the array (one count per element, for
    parameters that joined later or skipped steps); it is used only in the bias
    corrections. ``max_exp_avg_sq`` of ``None`` switches amsgrad off.
    Hyper-parameters may be numbers, traced scalars or broadcastable arrays. The
    step goes on from the buffers as rounded to their dtypes (as torch does), in
    the order of operations of torch's single-tensor CPU path.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.adam import adam_kernel
      >>> term, m, v, _ = adam_kernel(
      ...     jnp.array([2.0]), jnp.zeros(1), jnp.zeros(1), None, step=1, lr=0.1,
      ...     beta1=0.9, beta2=0.999, eps=0.0)
      >>> [round(x, 6) for x in (m[0].item(), v[0].item(), term[0].item())]  # -η·sign(g)
      [0.2, 0.004, -0.1]
    """
    compute = compute_dtype(g, exp_avg, exp_avg_sq)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    # 1 - β from β's own precision: from a rounded β it loses digits (β₂ = 0.999 in float32).
    one_minus_b1, one_minus_b2 = h(1 - beta1), h(1 - beta2)
    new_m = lerp(exp_avg.astype(compute), g, one_minus_b1).astype(exp_avg.dtype)
    # (1-β₂)·g·g + β₂·v: written in this order XLA fuses the add into the g·g product,
    # as torch's addcmul does.
    new_v = ((one_minus_b2 * g) * g + h(beta2) * exp_avg_sq.astype(compute)).astype(
        exp_avg_sq.dtype
    )
    v = new_v.astype(compute)
    new_max = None
    if max_exp_avg_sq is not None:
        new_max = jnp.maximum(max_exp_avg_sq.astype(compute), v).astype(max_exp_avg_sq.dtype)
        v = new_max.astype(compute)
    t = jnp.asarray(step).astype(real)
    bias_correction1 = one_minus_power(one_minus_b1, t)
    bias_correction2_sqrt = jnp.sqrt(one_minus_power(one_minus_b2, t))
    step_size = h(lr) / bias_correction1
    denom = jnp.sqrt(v) / bias_correction2_sqrt + h(eps)
    return (-step_size * new_m.astype(compute)) / denom, new_m, new_v, new_max


@schema.makes(AdamState)
def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Adam, exactly as ``torch.optim.Adam`` (and, decoupled, ``torch.optim.AdamW``).

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        decoupled: θ ← θ·(1 - η·λ)                (weight_decay λ ≠ 0: AdamW)
        otherwise: g ← g + λ·θ                    (weight_decay λ ≠ 0: coupled L2)
        m_t  = β₁·m_{t-1} + (1-β₁)·g               (torch.lerp; m_0 = 0)
        v_t  = β₂·v_{t-1} + (1-β₂)·g²              (v_0 = 0)
        amsgrad: v̂_t = max(v̂_{t-1}, v_t)           (v̂_0 = 0), else v̂_t = v_t
        θ_t  = θ - (η / (1-β₁^t)) · m_t / (sqrt(v̂_t) / sqrt(1-β₂^t) + ε)

    Args:
      lr: learning rate η (default 1e-3): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged.
      betas: (β₁, β₂), the decay rates of m and v (default (0.9, 0.999)), each
        in [0, 1).
      eps: ε added to the denominator, outside the square root (default 1e-8).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      amsgrad: divide by the running maximum of v (default False); adds the
        ``max_exp_avg_sq`` buffer.
      maximize: ascend instead of descend: negates g first (default False).
      decoupled_weight_decay: decay θ by η·λ directly instead of adding λ·θ
        to g (default False; True is AdamW, see :func:`adamw`).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, every buffer and ``step`` kept, so the bias corrections
        stay right) and counts into ``state.skipped`` (default False:
        non-finite values propagate, as in torch).
      state_dtype: dtype of m, v and v̂ (default: each parameter's own). Each
        step goes on from the buffers as stored (rounded to this dtype), as
        torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`AdamState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``);
      with decoupled weight decay the delta is θ_t - θ, so it needs ``params``.

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``): v holds re(g)² and im(g)² separately, not |g|². With
    any lr — constant, scheduled, or changed between steps — this equals
    ``torch.optim.Adam(foreach=False)`` step for step; under ``jax.jit`` XLA
    fuses some multiply-adds into single-rounding FMAs, and torch's CPU square
    root is not always correctly rounded, so float32 agrees to an ulp per
    operation rather than bit for bit. optax's ``adam(eps_root=0)`` is the same
    math for real parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import adam
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = adam(lr=0.1)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), int(state.step)
      (True, 200)
    """
    return _adam("adam", lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                 decoupled_weight_decay=decoupled_weight_decay, skip_nonfinite=skip_nonfinite,
                 state_dtype=state_dtype)


def _adam(
    name: str,
    lr: ScalarOrSchedule,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    *,
    maximize: bool,
    decoupled_weight_decay: bool,
    skip_nonfinite: bool,
    state_dtype: Any | None,
) -> GradientTransformation:
    """:func:`adam` under the ``name`` its messages use ("adam" or "adamw")."""
    check_hyperparameter("lr", lr)
    beta1, beta2 = check_betas(betas)
    check_hyperparameter("eps", eps)
    check_flag("amsgrad", amsgrad)
    return kernel_transform(
        name, AdamState, adam_kernel,
        kernel_args=lambda state, t: dict(
            step=t, lr=scheduled(lr, state.step), beta1=beta1, beta2=beta2, eps=eps),
        switches={"amsgrad": amsgrad},
        weight_decay=WeightDecay(weight_decay, decoupled_weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )


@schema.makes(AdamState)
def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = True,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""AdamW, exactly as ``torch.optim.AdamW``: :func:`adam` with decoupled weight decay.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        θ   ← θ·(1 - η·λ)                         (decoupled: λ never enters m or v)
        m_t  = β₁·m_{t-1} + (1-β₁)·g
        v_t  = β₂·v_{t-1} + (1-β₂)·g²
        amsgrad: v̂_t = max(v̂_{t-1}, v_t), else v̂_t = v_t
        θ_t  = θ - (η / (1-β₁^t)) · m_t / (sqrt(v̂_t) / sqrt(1-β₂^t) + ε)

    Arguments are :func:`adam`'s, with torch's AdamW defaults ``weight_decay=1e-2``
    and ``decoupled_weight_decay=True`` (torch's AdamW keeps that key in its param
    groups, and treats a group set to False as Adam's); the state is :class:`AdamState`. optax's ``adamw(eps_root=0)`` is the same math.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx import adamw
      >>> tx = adamw(lr=0.1, weight_decay=0.5)
      >>> params = jnp.array([2.0])
      >>> updates, state = tx.update(jnp.zeros(1), tx.init(params), params)
      >>> round(float(params[0] + updates[0]), 6)   # 2·(1 - 0.1·0.5): decay only, g = 0
      1.9
    """
    return _adam("adamw", lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                 decoupled_weight_decay=decoupled_weight_decay, skip_nonfinite=skip_nonfinite,
                 state_dtype=state_dtype)
