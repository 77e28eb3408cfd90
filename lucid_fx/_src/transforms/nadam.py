"""NAdam as a pure gradient transform: torch's math (Adam with Nesterov momentum).

The per-element update is :func:`nadam_kernel`; :func:`nadam` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize`` and the weight decay). The
per-parameter scalars (the momentum schedule's running product ``mu_product``,
torch's state key, and the two step coefficients) are formed once per update by
:func:`nadam_factors`, outside the kernel: once per tree in the functional face,
once per element of a packed buffer in the stateful one.
"""

from __future__ import annotations

import math
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
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)
from lucid_fx._src.transforms.numerics import lerp, one_minus_power

_LOG_096 = math.log(0.96)  # μ_t's base, 0.96^(tψ) = exp(tψ·ln 0.96)


@schema.declare(
    step=schema.step_count(),
    mu_product=schema.scalar(),
    exp_avg=schema.buffer(),
    exp_avg_sq=schema.buffer(),
    skipped=schema.skipped_count(),
)
class NAdamState(NamedTuple):
    """The state of :func:`nadam`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); t in the
        bias correction and the momentum schedule.
      mu_product: Π μ_i for i = 1..t (1 before the first update), a real 0-d
        array shared by the whole tree (one per parameter in the stateful
        face, where parameters may have taken different numbers of steps).
      exp_avg: m, the running average of g, one array per parameter.
      exp_avg_sq: v, the running average of g², one array per parameter. For
        a complex parameter it is complex, holding the averages of re(g)² and
        im(g)² (torch's ``view_as_real`` layout).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    mu_product: jax.Array
    exp_avg: Updates
    exp_avg_sq: Updates
    skipped: jax.Array | None


def momentum_cache(t: Any, beta1: Any, momentum_decay: Any, dtype: Any) -> jax.Array:
    """μ_t = β₁·(1 - ½·0.96^(t·ψ)), NAdam's momentum at step ``t`` (real, in ``dtype``).

    ``t`` may be a number or an array (one step per element). Written as
    β₁·(½ - ½·expm1(t·ψ·ln 0.96)), which loses no digits to 0.96^(tψ) ≈ 1.

    Example:
      >>> from lucid_fx._src.transforms.nadam import momentum_cache
      >>> round(float(momentum_cache(1, 0.9, 4e-3, "float32")), 6)  # 0.9·(1 - 0.5·0.96^0.004)
      0.450073
    """
    t = jnp.asarray(t).astype(dtype)
    decay = cast_scalar(momentum_decay * _LOG_096, dtype)  # ψ·ln 0.96 formed before the cast
    return cast_scalar(beta1, dtype) * (0.5 - 0.5 * jnp.expm1(t * decay))


def nadam_kernel(
    g: jax.Array,
    exp_avg: jax.Array,
    exp_avg_sq: jax.Array,
    *,
    grad_coef: Any,
    avg_coef: Any,
    bias_correction2: Any,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: Any,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array, jax.Array]:
    """One NAdam step for one real array: returns ``((gradient term, average term), m, v)``,
    the two terms torch adds to θ one after the other.

    The per-parameter scalars of update t come formed (:func:`nadam_factors`):
    ``grad_coef`` = -η·(1-μ_t)/(1-Π_t), ``avg_coef`` = -η·μ_{t+1}/(1-Π_t·μ_{t+1})
    and ``bias_correction2`` = 1-β₂^t, each a scalar or an array broadcastable
    against the array (one value per element, for parameters that joined later
    or skipped steps). ``g`` is the gradient in the arithmetic's dtype, already
    decayed (coupled); hyper-parameters may be numbers, traced scalars or
    broadcastable arrays. The step goes on from the buffers as rounded to their
    dtypes (as torch does).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.nadam import nadam_kernel
      >>> (grad_term, avg_term), m, v = nadam_kernel(  # β₁ = 0: μ = 0, Π = 0: θ - η·g/(|g| + ε)
      ...     jnp.array([2.0]), jnp.zeros(1), jnp.zeros(1), grad_coef=-0.1,
      ...     avg_coef=0.0, bias_correction2=0.5, lr=0.1, beta1=0.0, beta2=0.5, eps=0.0)
      >>> [round(x, 6) for x in (m[0].item(), v[0].item(), (grad_term + avg_term)[0].item())]
      [2.0, 2.0, -0.1]
    """
    compute = compute_dtype(g, exp_avg, exp_avg_sq)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    new_m = lerp(exp_avg.astype(compute), g, h(1 - beta1)).astype(exp_avg.dtype)
    new_v = ((h(1 - beta2) * g) * g + h(beta2) * exp_avg_sq.astype(compute)).astype(
        exp_avg_sq.dtype
    )
    denom = jnp.sqrt(new_v.astype(compute) / h(bias_correction2)) + h(eps)
    # torch's two addcdiv calls, each (value·x)/denom.
    grad_part = (h(grad_coef) * g) / denom
    avg_part = (h(avg_coef) * new_m.astype(compute)) / denom
    return (grad_part, avg_part), new_m, new_v


def nadam_factors(
    step: Any, mu_product: Any, *, lr: Any, beta1: Any, beta2: Any, momentum_decay: Any,
    dtype: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Update t's per-parameter scalars: ``(Π_t, the kernel's keywords)``, in ``dtype``.

    ``step`` is t and ``mu_product`` Π_{t-1} (as stored); both may be 0-d (one
    tree) or one value per element (a packed buffer). Π_t = Π_{t-1}·μ_t comes
    back rounded to ``mu_product``'s dtype, as torch stores it, and the
    coefficients are formed from that stored value, as torch's are.

    Example:
      >>> from lucid_fx._src.transforms.nadam import nadam_factors
      >>> product, kw = nadam_factors(1, 1.0, lr=0.1, beta1=0.9, beta2=0.999,
      ...                             momentum_decay=4e-3, dtype="float32")
      >>> round(float(product), 6), round(float(kw["grad_coef"]), 6)  # μ₁, -η: (1-μ₁)/(1-μ₁) = 1
      (0.450073, -0.1)
    """
    t = jnp.asarray(step).astype(dtype)
    stored = jnp.asarray(mu_product)
    mu = momentum_cache(t, beta1, momentum_decay, dtype)
    mu_next = momentum_cache(t + 1, beta1, momentum_decay, dtype)
    new_product = (stored.astype(dtype) * mu).astype(stored.dtype)
    product = new_product.astype(dtype)
    eta = cast_scalar(lr, dtype)
    return new_product, {
        "grad_coef": -eta * (1 - mu) / (1 - product),
        "avg_coef": -eta * mu_next / (1 - product * mu_next),
        "bias_correction2": one_minus_power(cast_scalar(1 - beta2, dtype), t),
    }


def _factor_dtype(state: NAdamState) -> Any:
    """The real dtype the per-parameter scalars are formed in: the widest of the stored
    product's and the buffers', at least float32 (the kernels' working precision)."""
    return real_dtype(jnp.result_type(jnp.float32, state.mu_product, *jax.tree.leaves(state.exp_avg)))


@schema.makes(NAdamState)
def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[Any, Any] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""NAdam, exactly as ``torch.optim.NAdam``: Adam with Nesterov momentum.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        decoupled: θ ← θ·(1 - η·λ)                (weight_decay λ ≠ 0: NAdamW)
        otherwise: g ← g + λ·θ                    (weight_decay λ ≠ 0: coupled L2)
        μ_t  = β₁·(1 - ½·0.96^(t·ψ)),  μ_{t+1} = β₁·(1 - ½·0.96^((t+1)·ψ))
        Π_t  = Π_{t-1}·μ_t                         (mu_product; Π_0 = 1)
        m_t  = β₁·m_{t-1} + (1-β₁)·g               (m_0 = 0)
        v_t  = β₂·v_{t-1} + (1-β₂)·g²              (v_0 = 0)
        m̂_t  = μ_{t+1}·m_t/(1 - Π_t·μ_{t+1}) + (1-μ_t)·g/(1 - Π_t)
        θ_t  = θ - η·m̂_t / (sqrt(v_t/(1-β₂^t)) + ε)

    Args:
      lr: learning rate η (default 2e-3): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged.
      betas: (β₁, β₂), the decay rates of m and v (default (0.9, 0.999)), each
        in [0, 1).
      eps: ε added to the denominator, outside the square root (default 1e-8).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      momentum_decay: ψ, the momentum schedule's decay (default 4e-3), >= 0.
      decoupled_weight_decay: decay θ by η·λ directly instead of adding λ·θ
        to g (default False; True is NAdamW).
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, every buffer, ``step`` and ``mu_product`` kept) and
        counts into ``state.skipped`` (default False: non-finite values
        propagate, as in torch).
      state_dtype: dtype of m and v (default: each parameter's own).

    Returns:
      A :class:`GradientTransformation` whose state is :class:`NAdamState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``).

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``). With any lr — constant, scheduled, or changed between
    steps — this equals ``torch.optim.NAdam(foreach=False)`` step for step, to
    an ulp per operation in float32 (torch forms the scalar factors in float64).
    ``mu_product`` is kept in the parameters' real dtype, as torch keeps it in
    its default dtype (float32, or float64 when that is the default).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import nadam
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = nadam(lr=0.1)
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
    check_hyperparameter("momentum_decay", momentum_decay)

    def factors(state: NAdamState, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        # step and mu_product may be 0-d (this tree) or one value per element (a
        # packed buffer of the stateful face): the scalars broadcast.
        return nadam_factors(
            step, state.mu_product, lr=scheduled(lr, state.step), beta1=beta1, beta2=beta2,
            momentum_decay=momentum_decay, dtype=_factor_dtype(state))

    return kernel_transform(
        "nadam", NAdamState, nadam_kernel,
        kernel_args=lambda state, t: dict(
            **factors(state, t)[1], lr=scheduled(lr, state.step), beta1=beta1, beta2=beta2,
            eps=eps),
        initial={"mu_product": 1},  # Π_0
        # Π_t; the same pure function of the state as the kernel's, computed once under jit
        advance=lambda state, t: {"mu_product": factors(state, t)[0]},
        weight_decay=WeightDecay(weight_decay, decoupled_weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
