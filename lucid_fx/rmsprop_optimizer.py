"""``fx.RMSprop``: the API page's stateful optimizer, a thin adapter over ``fx.rmsprop``."""

from __future__ import annotations

import inspect

from lucid_fx.optimizer import Optimizer
from lucid_fx.rmsprop import rmsprop


class RMSprop(Optimizer):
    r"""Root Mean Square Propagation optimizer, with torch's stateful interface.

    ``RMSprop(params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0,
    centered=False, *, maximize=False, skip_nonfinite=False, state_dtype=None)``

    RMSprop keeps a running average of the squared gradient for each parameter
    and divides the gradient by its square root::

        v_t = α·v_{t-1} + (1-α)·g_t²
        θ_t = θ_{t-1} - η·g_t / (sqrt(v_t) + ε)

    With momentum, a velocity buffer b (η inside it, as the page writes it)::

        b_t = μ·b_{t-1} + η·g_t / (sqrt(v_t) + ε)
        θ_t = θ_{t-1} - b_t

    The math is :func:`lucid_fx.rmsprop`'s (its docstring has the full box:
    weight decay, centered, maximize); this class only drives it. Defaults are
    the factory's, so the two faces cannot disagree.

    Parameters:
      params: an iterable of :class:`Parameter`, or of group dicts
        ``{"params": [...], "lr": ...}``.
      lr, alpha, eps, weight_decay, momentum, centered, maximize, skip_nonfinite,
      state_dtype: as in :func:`lucid_fx.rmsprop`.

    Attributes:
      param_groups: list of dicts with ``params`` and every hyper-parameter; a
        number written here takes effect at the next ``step()`` without recompiling.
      defaults: the hyper-parameters given at construction (or their defaults).
      state: Parameter -> dict with ``step``, ``square_avg`` and, when used,
        ``grad_avg`` and ``momentum_buffer``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)
      >>> optimizer = fx.RMSprop(fx.parameters(model), lr=1e-1, alpha=0.99)
      >>> for _ in range(50):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss_fn({"w": model["w"].value}) < 1e-2)
      True
    """

    transform = staticmethod(rmsprop)
    structural_zeros = {"momentum": "momentum_buffer"}
    skip_flag = "skip_nonfinite"


# The page's signature for help() and IDEs, taken from the factory: defaults live there.
RMSprop.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     *inspect.signature(rmsprop).parameters.values()]
)
