"""Adafactor as a pure gradient transform: torch 2.13's ``torch.optim.Adafactor``.

Adafactor keeps, for a parameter of two or more dimensions, one running mean of
g² per row and one per column instead of one per element, and rebuilds the
second moment from their outer product: the state of an m×n matrix is m + n
numbers, not m·n. That needs each array's shape, so it is not element-wise.
:func:`adafactor_kernel` is one array's step; :func:`adafactor` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform`, which also
applies ``maximize`` and the decoupled weight decay.

This is torch's algorithm, not optax's ``optax.adafactor`` (the paper's, with
its own ε placement, momentum and update clipping): the two give different
numbers, and share only the idea of the factored second moment.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, ScalarOrSchedule, Updates
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype
from lucid_fx._src.core.validation import check_hyperparameter
from lucid_fx._src.transforms.kernel_transform import WeightDecay, kernel_transform, scheduled
from lucid_fx._src.transforms.numerics import lerp


def row_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """A parameter of 2+ dimensions keeps one row mean per row: its shape, last dimension 1."""
    return (*shape[:-1], 1) if len(shape) >= 2 else None


def column_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """And one column mean per column: its shape, second-to-last dimension 1."""
    return (*shape[:-2], 1, shape[-1]) if len(shape) >= 2 else None


def unfactored_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """A vector or a number keeps its g² mean element by element, in its own shape."""
    return shape if len(shape) < 2 else None


@schema.declare(
    elementwise=False,
    real_only=True,
    step=schema.step_count(),
    row_var=schema.array(row_shape, never_negative="a mean of squares"),
    col_var=schema.array(column_shape, never_negative="a mean of squares"),
    variance=schema.array(unfactored_shape, never_negative="a mean of squares"),
    skipped=schema.skipped_count(),
)
class AdafactorState(NamedTuple):
    """The state of :func:`adafactor`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first).
      row_var: R, the row means of g² of each parameter of two or more
        dimensions (its shape with the last dimension 1), ``None`` for the others.
      col_var: C, the column means (its shape with the second-to-last dimension 1).
      variance: V, the element-wise mean of g² of each parameter of fewer than two
        dimensions, ``None`` for the others.
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    row_var: Updates
    col_var: Updates
    variance: Updates
    skipped: jax.Array | None


def _rms(x: jax.Array) -> jax.Array:
    """‖x‖₂ / sqrt(numel), the norm formed first, as torch's ``x.norm(2) / numel**0.5``."""
    return jnp.sqrt(jnp.sum(jnp.square(x))) / math.sqrt(max(x.size, 1))


def _mean_of_squares(g: jax.Array, axis: int) -> jax.Array:
    """torch's ``norm(g, dim=axis, keepdim=True).square() / g.size(axis)``: the mean of g²
    along ``axis``, through the norm, as torch rounds it."""
    return jnp.square(jnp.sqrt(jnp.sum(jnp.square(g), axis=axis, keepdims=True))) / g.shape[axis]


def adafactor_kernel(
    g: jax.Array,
    param: jax.Array,
    row_var: jax.Array | None,
    col_var: jax.Array | None,
    variance: jax.Array | None,
    *,
    step: Any,
    lr: Any,
    beta2_decay: Any,
    eps1: Any | None,
    eps2: Any,
    d: Any,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
    """One Adafactor step for one array: returns ``(term, R, C, V)``, the term added to θ
    after the decay.

    ``g`` is the gradient in the arithmetic's dtype (negated with ``maximize``);
    ``param`` is θ before the decay (its RMS scales the step); ``step`` is t, 1 at
    the first update. A matrix (two or more dimensions) has R and C and no V; a
    vector or a number has V alone. ``eps1`` of ``None`` is θ's dtype's machine ε.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.adafactor import adafactor_kernel
      >>> term, r, c, _ = adafactor_kernel(
      ...     jnp.array([[3.0, 4.0]]), jnp.ones((1, 2)), jnp.zeros((1, 1)), jnp.zeros((1, 2)),
      ...     None, step=1, lr=0.01, beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0)
      >>> r.tolist(), c.tolist()   # t = 1: R and C are this step's means of g²
      ([[12.5]], [[9.0, 16.0]])
    """
    compute = compute_dtype(g, param, row_var, col_var, variance)
    h = lambda x: cast_scalar(x, compute)
    t = jnp.asarray(step).astype(compute)
    one_minus_beta2 = jnp.power(t, h(beta2_decay))  # 1 - β̂₂_t = t^τ
    rho = jnp.minimum(h(lr), 1 / jnp.sqrt(t))  # relative step size, capped by lr
    alpha = jnp.maximum(h(eps2), _rms(param.astype(compute))) * rho
    eps1 = jnp.finfo(param.dtype).eps if eps1 is None else eps1
    new_row: jax.Array | None = None
    new_col: jax.Array | None = None
    new_variance: jax.Array | None = None
    if row_var is not None and col_var is not None:  # two or more dimensions
        new_row = lerp(row_var.astype(compute), _mean_of_squares(g, -1), one_minus_beta2).astype(
            row_var.dtype)
        new_col = lerp(col_var.astype(compute), _mean_of_squares(g, -2), one_minus_beta2).astype(
            col_var.dtype)
        rows, cols = new_row.astype(compute), new_col.astype(compute)
        # R·C / max(mean(R), ε₁): torch's row_var @ col_var, an outer product
        estimate = (rows * cols) / jnp.maximum(jnp.mean(rows, axis=-2, keepdims=True), h(eps1))
    else:
        assert variance is not None  # the schema gives a vector or a number its V
        new_variance = lerp(variance.astype(compute), g * g, one_minus_beta2).astype(
            variance.dtype)
        estimate = new_variance.astype(compute)
    update = jax.lax.rsqrt(jnp.maximum(estimate, h(eps1) * h(eps1))) * g
    denom = jnp.maximum(1, _rms(update) / h(d))  # update clipping at RMS d
    return (-alpha / denom) * update, new_row, new_col, new_variance


def _check_eps(eps: Any) -> tuple[Any | None, Any]:
    """(ε₁ or None, ε₂), each >= 0; ``ValueError`` naming it otherwise."""
    if isinstance(eps, (str, bytes)) or not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Invalid eps value: {eps!r} (expected a pair (eps1 or None, eps2))")
    if eps[0] is not None:
        check_hyperparameter("eps[0]", eps[0])
    check_hyperparameter("eps[1]", eps[1])
    return eps[0], eps[1]


@schema.makes(AdafactorState)
def adafactor(
    lr: ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Adafactor, exactly as ``torch.optim.Adafactor``.

    Per parameter θ (of n elements), with gradient g and step t (1 at the first)::

        g   ← -g                                     (maximize)
        β̂   = t^τ                                    (τ = beta2_decay; 1 - β₂ of step t)
        ρ_t = min(η, 1/sqrt(t))                       (relative step size)
        α_t = max(ε₂, RMS(θ))·ρ_t                     (RMS(x) = ‖x‖₂ / sqrt(n))
        θ   ← θ·(1 - η·λ)                             (decoupled weight decay)
        2+ dimensions:  R ← lerp(R, mean_row(g²), β̂);  C ← lerp(C, mean_col(g²), β̂)
                        V̂ = R·C / max(mean(R), ε₁)    (per matrix of the last two dimensions)
        otherwise:      V ← lerp(V, g², β̂);  V̂ = V
        U   = g / sqrt(max(V̂, ε₁²))
        θ_t = θ - α_t · U / max(1, RMS(U)/d)          (update clipping at RMS d)

    with ε₁ the dtype's machine epsilon where ``eps[0]`` is ``None``. ``lr`` is
    not a step size here, as in torch: it caps ρ_t and scales the weight decay.

    Args:
      lr: η (default 1e-2): a number, a 0-d array, or a schedule ``count -> η``.
      beta2_decay: τ <= 0 (default -0.8): the mean of g² forgets as t^τ.
      eps: (ε₁, ε₂) (default (None, 1e-3)): ε₁ bounds the second moment from
        below (``None``: the parameters' dtype's machine epsilon), ε₂ the RMS
        that scales the step. A pair holding ``None`` shapes the compiled code,
        so in the stateful face a new one compiles once more.
      d: the clipping threshold, >= 1 (default 1.0).
      weight_decay: λ, decoupled (default 0.0); needs ``params`` in ``update``.
      maximize: ascend instead of descend (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing and
        counts into ``state.skipped`` (default False).
      state_dtype: dtype of R, C and V (default: each parameter's own).

    Returns:
      A :class:`GradientTransformation` whose state is :class:`AdafactorState`.
      The update reads θ (its RMS), so ``update`` needs ``params``.

    A matrix of m×n keeps m + n numbers of state, not m·n (Adam keeps 2·m·n).
    ``optax.adafactor`` is another algorithm (the paper's ε inside the factors,
    momentum, its own clipping and decay): the two agree only on the idea.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = fx.adafactor(lr=0.1)
      >>> params = {"w": jnp.ones((4, 3))}
      >>> state = tx.init(params)
      >>> [x.shape for x in (state.row_var["w"], state.col_var["w"])]
      [(4, 1), (1, 3)]
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return fx.apply_updates(params, updates), state
      >>> for _ in range(100):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 1e-2)
      True
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("beta2_decay", beta2_decay, low=None, high=0.0)
    eps1, eps2 = _check_eps(eps)
    check_hyperparameter("d", d, low=1.0)
    tx = kernel_transform(
        "adafactor", AdafactorState, adafactor_kernel,
        kernel_args=lambda state, t: dict(
            step=t, lr=scheduled(lr, state.step), beta2_decay=beta2_decay, eps1=eps1,
            eps2=eps2, d=d),
        weight_decay=WeightDecay(weight_decay, decoupled=True), complex_parts=False,
        reads_param="its step is scaled by each parameter's RMS",
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )

    return tx
