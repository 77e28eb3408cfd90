"""ASGD (averaged SGD) as a pure gradient transform: torch's math.

The per-element update is :func:`asgd_kernel`; :func:`asgd` wraps it in the
``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform` (which also applies
``maximize`` and the weight decay). The
step size ``eta`` and the averaging weight ``mu`` are one number per parameter
(torch's state keys), advanced once per update outside the kernel.
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
from lucid_fx._src.core.validation import check_hyperparameter
from lucid_fx._src.transforms.kernel_transform import WeightDecay, kernel_transform, scheduled
from lucid_fx._src.transforms.numerics import wide_product


@schema.declare(
    step=schema.step_count(),
    eta=schema.scalar(),
    mu=schema.scalar(),
    ax=schema.buffer(),
    skipped=schema.skipped_count(),
)
class ASGDState(NamedTuple):
    """The state of :func:`asgd`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first).
      eta: η_t, the step size the next update uses (lr before the first), a
        real 0-d array shared by the whole tree (one per parameter in the
        stateful face, where parameters may have taken different numbers of
        steps).
      mu: μ_t, the averaging weight the next update uses (1 before the first),
        shared as ``eta`` is.
      ax: the running average of θ, one array per parameter (complex for a
        complex parameter).
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    eta: jax.Array
    mu: jax.Array
    ax: Updates
    skipped: jax.Array | None


def asgd_kernel(
    g: jax.Array,
    param: jax.Array,
    ax: jax.Array,
    *,
    eta: Any,
    mu: Any,
    lambd: Any,
) -> tuple[jax.Array, jax.Array]:
    """One ASGD step for one real array: returns ``(term, ax)``, the term added to θ.

    ``eta`` and ``mu`` are this update's η and μ (the state's), each a scalar
    or an array broadcastable against the array (one value per element, for
    parameters that joined later or skipped steps). ``g`` is the gradient in the
    arithmetic's dtype (the widest of the gradient's, parameter's and average's,
    at least float32), already decayed; the average follows θ as stored (rounded
    to its dtype), as torch's does.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.asgd import asgd_kernel
      >>> term, ax = asgd_kernel(jnp.array([2.0]), jnp.array([1.0]), jnp.zeros(1),
      ...                        eta=0.1, mu=1.0, lambd=0.5)
      >>> round(term[0].item(), 6), round(ax[0].item(), 6)  # θ = 1·(1 - 0.05) - 0.1·2; ax = θ
      (-0.25, 0.75)
    """
    compute = compute_dtype(g, param, ax)
    real = real_dtype(compute)
    h = lambda x: cast_scalar(x, real)
    theta = param.astype(compute)
    eta = jnp.asarray(eta).astype(real)
    mu = jnp.asarray(mu).astype(real)
    new_theta = theta * (1 - h(lambd) * eta) - eta * g
    stored = new_theta.astype(param.dtype).astype(compute)
    old_ax = ax.astype(compute)
    # torch copies θ while μ = 1 (before t0): exact, where ax + (θ - ax)·1 may round.
    new_ax = jnp.where(mu == 1, stored, old_ax + (stored - old_ax) * mu).astype(ax.dtype)
    return new_theta - theta, new_ax


@schema.makes(ASGDState)
def asgd(
    lr: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0,
    *,
    maximize: bool = False,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Averaged SGD, exactly as ``torch.optim.ASGD``.

    Per element, with gradient g, parameter θ and step t (1 at the first
    update), η_0 = lr and μ_0 = 1::

        g    ← -g                                   (maximize only)
        g    ← g + λ_wd·θ                           (weight_decay λ_wd ≠ 0: coupled L2)
        θ_t   = θ_{t-1}·(1 - λ·η_{t-1}) - η_{t-1}·g
        ax_t  = θ_t                                  (while μ_{t-1} = 1)
        ax_t  = ax_{t-1} + μ_{t-1}·(θ_t - ax_{t-1})  (otherwise)
        η_t   = lr / (1 + λ·lr·t)^α
        μ_t   = 1 / max(1, t - t0)

    ``ax`` is the average of the iterates since step t0, the optimizer's
    result to read (``state.ax``); the parameters themselves follow SGD with a
    decaying step size.

    Args:
      lr: learning rate (default 1e-2): a number, a 0-d array, or a schedule
        ``count -> lr`` called with the int32 step count (0 at the first
        update); optax schedules work unchanged. η_0 is lr at count 0.
      lambd: λ, the decay term (default 1e-4), >= 0.
      alpha: α, the power of the step-size decay (default 0.75), >= 0.
      t0: the step after which averaging starts (default 1e6), >= 0.
      weight_decay: weight decay λ_wd (default 0).
      maximize: ascend instead of descend: negates g first (default False).
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing
        (zero updates, ``ax``, ``step``, ``eta`` and ``mu`` kept) and counts
        into ``state.skipped`` (default False: non-finite values propagate,
        as in torch).
      state_dtype: dtype of ``ax`` (default: each parameter's own).

    Returns:
      A :class:`GradientTransformation` whose state is :class:`ASGDState`.
      ``update`` always needs ``params`` (θ is decayed and averaged).

    torch does not check lambd, alpha and t0; here each must be a number >= 0.
    Complex parameters are updated as pairs of reals, as torch does
    (``view_as_real``). With any lr this equals ``torch.optim.ASGD(foreach=False)``
    step for step, to an ulp per operation in float32 (torch forms η and μ in
    float64 and keeps them in its default dtype; here they are kept in the
    parameters' real dtype). As in torch, η_t uses the lr of update t, so a
    changed lr reaches θ one update later.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.base import apply_updates
      >>> from lucid_fx import asgd
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> tx = asgd(lr=0.1, t0=50)
      >>> params = {"w": jnp.zeros(3)}
      >>> state, update, grad = tx.init(params), jax.jit(tx.update), jax.jit(jax.grad(loss))
      >>> for _ in range(200):
      ...     updates, state = update(grad(params), state, params)
      ...     params = apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3), bool(loss(state.ax) < 1e-3), int(state.step)
      (True, True, 200)
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("lambd", lambd)
    check_hyperparameter("alpha", alpha)
    check_hyperparameter("t0", t0)

    def advance(state: ASGDState, step: jax.Array) -> dict[str, jax.Array]:
        # step, eta and mu may be 0-d (this tree) or one value per element (a packed
        # buffer of the stateful face): everything below broadcasts.
        stored = state.eta.dtype
        real = jnp.result_type(stored, jnp.float32)
        h = lambda x: cast_scalar(x, real)
        lr_now = scheduled(lr, state.step)
        t = step.astype(real)
        # lr / (1 + λ·lr·t)^α, with λ·lr formed before the cast.
        eta = h(lr_now) * jnp.exp(-h(alpha) * jnp.log1p(h(wide_product(lambd, lr_now, real)) * t))
        mu = 1 / jnp.maximum(1, t - h(t0))
        return {"eta": eta.astype(stored), "mu": mu.astype(stored)}

    return kernel_transform(
        "asgd", ASGDState, asgd_kernel,
        kernel_args=lambda state, t: dict(eta=state.eta, mu=state.mu, lambd=lambd),
        initial={"eta": lr, "mu": 1},  # η_0 = lr (a schedule's value at count 0), μ_0 = 1
        advance=advance, reads_param="it decays and averages the parameters",
        weight_decay=WeightDecay(weight_decay),
        maximize=maximize, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
    )
