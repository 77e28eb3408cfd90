"""Adagrad as a pure gradient transform: torch's math, one kernel.

The per-element update is :func:`adagrad_kernel`; :func:`adagrad` wraps it in
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
    is_static_zero,
)
from lucid_fx._src.transforms.kernel_transform import (
    WeightDecay,
    kernel_transform,
    scheduled,
)


@schema.declare(
    step=schema.step_count(),
    sum=schema.buffer(never_negative="a sum of squares"),
    skipped=schema.skipped_count(),
)
class AdagradState(NamedTuple):
    """The state of :func:`adagrad`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); t in the lr decay.
      sum: the running sum of g², one array per parameter, starting at
        ``initial_accumulator_value``. For a complex parameter it is complex,
        holding the sums of re(g)² and im(g)² as its real and imaginary parts
        (torch's ``view_as_real`` layout).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    sum: Updates
    skipped: jax.Array | None


def adagrad_kernel(
    g: jax.Array,
    state_sum: jax.Array,
    *,
    step: Any,
    lr: Any,
    lr_decay: Any | None,
    eps: Any,
) -> tuple[jax.Array, jax.Array]:
    """One Adagrad step for one real array: returns ``(term, sum)``, the term added to θ.

    ``step`` is t, the number of this update (1 at the first), a scalar or an
    int array broadcastable against the array (one count per element); it is
    used only in the lr decay. ``lr_decay`` of ``None`` switches the decay off
    (η is used as it is). ``g`` is the gradient in the arithmetic's dtype, already
    decayed; hyper-parameters may be numbers, traced scalars or broadcastable
    arrays. The step goes on from the sum as rounded to its dtype (as torch does),
    in the order of operations of torch's single-tensor CPU path.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.adagrad import adagrad_kernel
      >>> term, s = adagrad_kernel(jnp.array([3.0]), jnp.array([16.0]), step=2,
      ...                          lr=0.5, lr_decay=1.0, eps=0.0)
      >>> s.tolist(), round(term[0].item(), 6)   # s = 16 + 9; η̃ = 0.5 / (1 + 1·1); -η̃·3/5
      ([25.0], -0.15)
    """
    compute = compute_dtype(g, state_sum)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    new_sum = (g * g + state_sum.astype(compute)).astype(state_sum.dtype)
    std = jnp.sqrt(new_sum.astype(compute)) + h(eps)
    clr = h(lr)
    if lr_decay is not None:
        t = jnp.asarray(step).astype(real)
        clr = clr / (1 + (t - 1) * h(lr_decay))
    delta = (-clr * g) / std
    return delta, new_sum


@schema.makes(AdagradState)
def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0,
    weight_decay: float = 0,
    initial_accumulator_value: float = 0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Adagrad, exactly as ``torch.optim.Adagrad``.

    Per element, with gradient g, parameter θ and step t (1 at the first update)::

        g   ← -g                                  (maximize only)
        η̃   = η / (1 + (t-1)·δ)                   (lr_decay δ)
        g   ← g + λ·θ                             (weight_decay λ ≠ 0: coupled L2)
        s_t  = s_{t-1} + g²                        (s_0 = initial_accumulator_value)
        θ_t  = θ_{t-1} - η̃ · g / (sqrt(s_t) + ε)   (ε outside the square root)

    Args:
      lr: learning rate η (default 1e-2): a number, a 0-d array, or a schedule
        ``count -> η`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged. The decay divides the current η.
      lr_decay: δ, the rate at which η̃ falls with t (default 0).
      weight_decay: weight decay λ (default 0); needs ``params`` in ``update``.
      initial_accumulator_value: s_0, the sum's starting value (default 0); for
        a complex parameter both components start there, as in torch.
      eps: ε added to the denominator, outside the square root (default 1e-10).
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, the sum and ``step`` kept, so the decay stays right) and
        counts into ``state.skipped`` (default False: non-finite values
        propagate, as in torch).
      state_dtype: dtype of the sum (default: each parameter's own). Each step
        goes on from the sum as stored (rounded to this dtype), as torch does.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`AdagradState`.
      ``update`` returns deltas to add to the parameters (``apply_updates``).

    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``): the sum holds re(g)² and im(g)² separately, not |g|².
    With any lr — constant, scheduled, or changed between steps — this equals
    ``torch.optim.Adagrad(foreach=False)`` step for step; torch forms η̃ in
    float64 and rounds it once, here it is formed in the parameters' precision
    (an ulp or two in float32). torch creates the state of every parameter when
    the optimizer is built (with the constructor's initial_accumulator_value
    for every group); here ``init`` does so, with this transform's value.
    optax's ``adagrad`` puts ε inside the square root and has no lr decay.
    Sparse gradients (torch's other code path) do not exist in JAX.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import adagrad
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = adagrad(lr=1.0)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grad, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
      >>> for _ in range(100):
      ...     updates, state = update(grad(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), int(state.step)
      (True, 100)
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("lr_decay", lr_decay)
    check_hyperparameter("initial_accumulator_value", initial_accumulator_value)
    check_hyperparameter("eps", eps)
    # Whether η̃ is divided is decided here, once: a static 0 compiles it out.
    use_lr_decay = not is_static_zero(lr_decay)
    return kernel_transform(
        "adagrad", AdagradState, adagrad_kernel,
        kernel_args=lambda state, t: dict(
            step=t, lr=scheduled(lr, state.step), lr_decay=lr_decay if use_lr_decay else None,
            eps=eps),
        initial={"sum": initial_accumulator_value}, weight_decay=WeightDecay(weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
