"""RAdam as a pure gradient transform: torch's math (Adam with a rectified step).

The per-element update is :func:`radam_kernel`; :func:`radam` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize`` and the weight decay).
The bias corrections and the rectification depend on the step count only: they
are formed once per update by :func:`radam_factors`, from a 0-d count (one
tree) or from one count per element (a packed buffer whose parameters have
taken different numbers of steps).
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
from lucid_fx._src.core.validation import check_betas, check_hyperparameter
from lucid_fx._src.transforms.kernel_transform import WeightDecay, kernel_transform, scheduled
from lucid_fx._src.transforms.numerics import lerp, one_minus_power


@schema.declare(
    step=schema.step_count(),
    exp_avg=schema.buffer(),
    exp_avg_sq=schema.buffer(),
    skipped=schema.skipped_count(),
)
class RAdamState(NamedTuple):
    """The state of :func:`radam`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); t in the
        bias corrections and the rectification.
      exp_avg: m, the running average of g, one array per parameter.
      exp_avg_sq: v, the running average of g², one array per parameter. For
        a complex parameter it is complex, holding the averages of re(g)² and
        im(g)² (torch's ``view_as_real`` layout).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    exp_avg: Updates
    exp_avg_sq: Updates
    skipped: jax.Array | None


def _g(x: jax.Array) -> jax.Array:
    """1/expm1(x) - 1/x + 1/2 for 0 <= x <= 1, by its series Σ B₂ₙ·x²ⁿ⁻¹/(2n)!.

    Five terms: the sixth is below 1e-8 of the sum there.
    """
    x2 = x * x
    return x * (1 / 12 + x2 * (-1 / 720 + x2 * (1 / 30240 + x2 * (
        -1 / 1209600 + x2 / 47900160))))


def sma_length(t: Any, one_minus_beta2: Any) -> jax.Array:
    """ρ_t = ρ_∞ - 2t·β₂^t/(1-β₂^t), ρ_∞ = 2/(1-β₂) - 1: the length of the approximated SMA.

    ``t`` (an array, one step per element, or a scalar) and 1 - β₂ are real
    arrays of one dtype. ρ_t ≈ t - 1 is the difference of two numbers near
    ρ_∞ ≈ 2000 (β₂ = 0.999), which loses three digits in float32 and would
    put the rectification 1e-4 off. With L = -ln β₂ and x = t·L, ρ_t is
    exactly t + 2·g(L) - 2t·g(x), g(x) = 1/expm1(x) - 1/x + 1/2, and g has a
    fast series for x < 1; beyond, the direct form has no cancellation.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.radam import sma_length
      >>> [round(float(r), 4) for r in sma_length(jnp.array([1.0, 6.0]), jnp.float32(0.001))]
      [1.0, 5.9942]
    """
    t = jnp.asarray(t)
    log_inv_beta2 = -jnp.log1p(-one_minus_beta2)  # L = -ln β₂
    x = t * log_inv_beta2
    direct = (2 / one_minus_beta2 - 1) - 2 * t / jnp.expm1(x)
    series = t + 2 * (_g(log_inv_beta2) - t * _g(x))
    return jnp.where(x < 1, series, direct)


def radam_kernel(
    g: jax.Array,
    exp_avg: jax.Array,
    exp_avg_sq: jax.Array,
    *,
    bias_correction1: Any,
    bias_correction2: Any,
    rectified: Any,
    rect: Any,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One RAdam step for one real array: returns ``(term, m, v)``, the term added to θ.

    The per-parameter scalars of update t come formed (:func:`radam_factors`):
    1-β₁^t, 1-β₂^t, whether ρ_t > 5 (``rectified``) and r_t (``rect``, read only
    where rectified), each a scalar or an array broadcastable against the array
    (one value per element, for parameters that joined later or skipped
    steps): the switch is a ``jnp.where``, per element. ``g`` is the gradient in
    the arithmetic's dtype, already decayed (coupled); hyper-parameters may be
    numbers, traced scalars or broadcastable arrays. The order of operations is
    torch's single-tensor CPU path's.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.radam import radam_kernel
      >>> term, m, v = radam_kernel(    # t = 1: ρ₁ = 1 <= 5, so θ - η·m/(1-β₁) = θ - η·g
      ...     jnp.array([2.0]), jnp.zeros(1), jnp.zeros(1), bias_correction1=0.1,
      ...     bias_correction2=0.001, rectified=False, rect=0.0, lr=0.1, beta1=0.9,
      ...     beta2=0.999, eps=0.0)
      >>> [round(x, 6) for x in (m[0].item(), v[0].item(), term[0].item())]
      [0.2, 0.004, -0.2]
    """
    compute = compute_dtype(g, exp_avg, exp_avg_sq)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    new_m = lerp(exp_avg.astype(compute), g, h(1 - beta1)).astype(exp_avg.dtype)
    new_v = ((h(1 - beta2) * g) * g + h(beta2) * exp_avg_sq.astype(compute)).astype(
        exp_avg_sq.dtype
    )
    bias_corrected = new_m.astype(compute) / h(bias_correction1)
    adaptive = jnp.sqrt(h(bias_correction2)) / (jnp.sqrt(new_v.astype(compute)) + h(eps))
    step_ = jnp.where(rectified, ((bias_corrected * h(lr)) * adaptive) * h(rect),
                      bias_corrected * h(lr))
    return -step_, new_m, new_v


def radam_factors(step: Any, *, beta1: Any, beta2: Any, dtype: Any) -> dict[str, jax.Array]:
    """Update t's per-parameter scalars, the kernel's keywords, in ``dtype``.

    ``step`` is t, 0-d (one tree) or one count per element (a packed buffer).
    ``rect`` means something only where ``rectified`` (ρ_t > 5), the only place
    the kernel reads it; elsewhere it may be NaN (ρ_t < 4, or ρ_∞ <= 5 for
    β₂ <= 2/3, where the rectification never applies).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.radam import radam_factors
      >>> f = radam_factors(jnp.array([5, 6]), beta1=0.9, beta2=0.999, dtype="float32")
      >>> f["rectified"].tolist(), round(float(f["rect"][1]), 6)  # ρ₅ = 4.996, ρ₆ = 5.994
      ([False, True], 0.025821)
    """
    t = jnp.asarray(step).astype(dtype)
    one_minus_b2 = cast_scalar(1 - beta2, dtype)
    rho = sma_length(t, one_minus_b2)
    rho_inf = 2 / one_minus_b2 - 1
    return {
        "bias_correction1": one_minus_power(cast_scalar(1 - beta1, dtype), t),
        "bias_correction2": one_minus_power(one_minus_b2, t),
        "rectified": rho > 5,
        "rect": jnp.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)),
    }


@schema.makes(RAdamState)
def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""RAdam, exactly as ``torch.optim.RAdam``: Adam whose adaptive step is rectified.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        decoupled: θ ← θ·(1 - η·λ)                (weight_decay λ ≠ 0: RAdamW)
        otherwise: g ← g + λ·θ                    (weight_decay λ ≠ 0: coupled L2)
        m_t  = β₁·m_{t-1} + (1-β₁)·g               (m_0 = 0)
        v_t  = β₂·v_{t-1} + (1-β₂)·g²              (v_0 = 0)
        m̂_t  = m_t/(1-β₁^t)
        ρ_∞  = 2/(1-β₂) - 1,   ρ_t = ρ_∞ - 2t·β₂^t/(1-β₂^t)
        ρ_t > 5:  l_t = sqrt(1-β₂^t)/(sqrt(v_t) + ε)
                  r_t = sqrt((ρ_t-4)(ρ_t-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ_t))
                  θ_t = θ - η·m̂_t·l_t·r_t
        otherwise: θ_t = θ - η·m̂_t             (SGD with momentum while v is unreliable)

    Args:
      lr: learning rate η (default 1e-3): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged.
      betas: (β₁, β₂), the decay rates of m and v (default (0.9, 0.999)), each
        in [0, 1).
      eps: ε added to the denominator, outside the square root (default 1e-8).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      decoupled_weight_decay: decay θ by η·λ directly instead of adding λ·θ
        to g (default False; True is RAdamW).
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, every buffer and ``step`` kept) and counts into
        ``state.skipped`` (default False: non-finite values propagate, as in
        torch).
      state_dtype: dtype of m and v (default: each parameter's own).

    Returns:
      A :class:`GradientTransformation` whose state is :class:`RAdamState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``).

    With β₂ = 0.999 the rectified step starts at t = 6 (ρ₅ = 4.996, ρ₆ = 5.994).
    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``). With any lr — constant, scheduled, or changed between
    steps — this equals ``torch.optim.RAdam(foreach=False)`` step for step, to
    an ulp per operation in float32 (torch forms ρ_t in float64; here it is
    formed without cancellation, see :func:`sma_length`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import radam
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = radam(lr=0.1)
      >>> params = {"w": jnp.zeros(3)}
      >>> state, update, grad = tx.init(params), jax.jit(tx.update), jax.jit(jax.grad(loss))
      >>> for _ in range(200):
      ...     updates, state = update(grad(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), int(state.step)
      (True, 200)
    """
    check_hyperparameter("lr", lr)
    beta1, beta2 = check_betas(betas)
    check_hyperparameter("eps", eps)

    def kernel_args(state: RAdamState, t: jax.Array) -> dict[str, Any]:
        # t may be 0-d (this tree) or one count per element (a packed buffer of the
        # stateful face): the scalars below broadcast.
        dtype = real_dtype(jnp.result_type(jnp.float32, *jax.tree.leaves(state.exp_avg)))
        return dict(**radam_factors(t, beta1=beta1, beta2=beta2, dtype=dtype),
                    lr=scheduled(lr, state.step), beta1=beta1, beta2=beta2, eps=eps)

    return kernel_transform(
        "radam", RAdamState, radam_kernel, kernel_args=kernel_args,
        weight_decay=WeightDecay(weight_decay, decoupled_weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
